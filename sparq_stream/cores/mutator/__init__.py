"""The mutator service: sample parents from W, mutate each into a child problem, emit candidates.

One concept per module: :mod:`.core` (the core: sampling steps, chunks, credits),
:mod:`.parsing` (mutation outputs to problem, solution, answer), :mod:`.state` (the
changelog record of the mutator's state), :mod:`.barrier` (the synchronous barrier fed by
the archivist's watermarks) and :mod:`.reload` (following the models table).
"""

from sparq_stream.cores.mutator.core import MutatorConfig, MutatorCore, build_mutator
from sparq_stream.cores.mutator.parsing import ParseWork, parse_child

__all__ = ["MutatorConfig", "MutatorCore", "ParseWork", "build_mutator", "parse_child"]
