"""The mutator service: sample parents from W, mutate each into a child problem, emit candidates.

One concept per module: :mod:`.core` (the core: sampling steps, chunks, credits),
:mod:`.parsing` (mutation outputs to problem, solution, answer), :mod:`.state` (the
changelog record of the mutator's state), :mod:`.barrier` (the synchronous barrier fed by
the archivist's watermarks), :mod:`.reload` (following the models table), :mod:`.replicas`
(what one replica knows of the others) and :mod:`.planners` (how a lone mutator, the
replicas' leader and a follower open and settle steps).
"""

from sparq_stream.cores.mutator.core import MutatorConfig, MutatorCore, build_mutator
from sparq_stream.cores.mutator.parsing import ParseWork, parse_child

__all__ = ["MutatorConfig", "MutatorCore", "ParseWork", "build_mutator", "parse_child"]
