"""``sparq up`` in a used folder: local caches are bound to their run (topic prefix) and never restored into another."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparq_stream.cores.mutator.state import write_cache
from sparq_stream.messages import MutatorState
from sparq_stream.orchestrator.up import UpConfig, run_settings, run_state_dir
from sparq_stream.services import service_spec


def _mutator(config: UpConfig, prefix: str) -> Any:
    """The mutator core a run of ``prefix`` starts (scripted backend), built from its settings object."""
    return service_spec("mutator").factory(run_settings(config, prefix, "in-memory:0")["mutator"])


def test_a_mutator_cache_of_another_prefix_is_ignored_and_its_own_is_restored(tmp_path: Path) -> None:
    config = UpConfig(seeds=tmp_path / "s.jsonl", out=tmp_path / "run", steps=6, batch_size=4, k=2, backend="scripted",
                      embedder="hash", label_seeds=False)  # fmt: skip
    old = run_settings(config, "sparq-old", "in-memory:0")
    new = run_settings(config, "sparq-new", "in-memory:0")
    for service in ("mutator", "novelty"):  # each cache lives under its run's prefix
        assert Path(old[service].state_dir).is_relative_to(run_state_dir(config.out, "sparq-old"))
        assert Path(new[service].state_dir).is_relative_to(run_state_dir(config.out, "sparq-new"))
    # the finished run "sparq-old" left its mutator's cache at step 5, as the user's runs/demo did
    write_cache(old["mutator"].state_dir, MutatorState(key="mutator", variant="qd", seed=0, batch_size=4, step=5, emitted=20))
    fresh = _mutator(config, "sparq-new")
    resumed = _mutator(config, "sparq-old")
    try:
        assert (fresh.step, fresh.emitted) == (0, 0)  # a new prefix starts at step 0, whatever the folder holds
        assert (resumed.step, resumed.emitted) == (5, 20)  # the same run (a rerun after a crash) restores its own
    finally:
        fresh.close()
        resumed.close()
