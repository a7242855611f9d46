"""How long the archive stalls when its active archivist is ``kill -9``-ed: a hot standby vs a restart.

    python bench/archivist_takeover.py --json takeover.json            # starts a 3-node Kafka cluster
    python bench/archivist_takeover.py --bootstrap HOST:PORT --kills 3

Two ``sparq up`` runs of the same scripted loop (hash embedder, b=64 in chunks of 16, K=4,
40 seeds) against the cluster: ``standby`` with ``--replicas archivist=2``, and the reference
``restart`` with one archivist that its supervisor restarts. Each run ``kill -9``s the active
archivist ``--kills`` times, ``--interval-s`` apart, while the mutator works. Takeover time =
from the kill to the log line of the replica that became active next ("is now the active
replica", written once its tables are read to their end, before its first input). Each run's
archive is compared with the in-memory reference run of the same seed: lost, extra, changed
and duplicate rows must all be 0. Prints one JSON object; ``ratio`` = restart median / standby median.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sparq_stream.drill.common import compare_with_reference, read_elites  # noqa: E402
from sparq_stream.orchestrator.local import run_local  # noqa: E402
from sparq_stream.orchestrator.up import UpConfig, run_up  # noqa: E402

_MARK = "is now the active replica"


def _config(seeds: Path, out: Path, bootstrap: str, steps: int, replicas: int) -> UpConfig:
    return UpConfig(
        seeds=seeds, out=out, steps=steps, batch_size=64, k=4, backend="scripted", embedder="hash", seed_limit=40,
        seed=7, label_seeds=False, timeout_s=900.0, bootstrap=bootstrap, prefix=f"take{uuid.uuid4().hex[:8]}",
        extra={"mutator": ["--chunk-size", "16"]}, replicas={"archivist": replicas}, max_restarts=20,
    )


def _activations(logs: Path) -> list[float]:
    """Wall-clock times of every "became the active archivist" line in the run's archivist logs."""
    times = []
    for log in logs.glob("archivist*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if _MARK in line:
                stamp = " ".join(line.split()[:2])
                times.append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return sorted(times)


def _run(mode: str, seeds: Path, root: Path, bootstrap: str, args: argparse.Namespace, reference: Any) -> dict[str, Any]:
    config = _config(seeds, root / mode, bootstrap, args.steps, 2 if mode == "standby" else 1)
    kills: list[float] = []
    state = {"next": 0.0}

    def chaos(supervisor: Any, monitor: Any) -> None:
        now = time.monotonic()
        if len(kills) >= args.kills or now < state["next"] or monitor.value("archivist", "scored") < 1:
            return
        if monitor.value("mutator", "done") >= 1.0:
            return
        active = monitor.snapshot().get("archivist", {}).get("active_instance")
        svc = next((s for s in supervisor.services if s.name == active and s.alive), None)
        if svc is None:
            return
        os.kill(svc.proc.pid, signal.SIGKILL)
        kills.append(time.time())
        state["next"] = now + args.interval_s

    started = time.monotonic()
    up = run_up(config, on_tick=chaos)
    wall = time.monotonic() - started
    activations = _activations(config.out / "logs")
    takeovers = []
    for killed_at in kills:
        after = [t for t in activations if t > killed_at]
        takeovers.append(round(after[0] - killed_at, 2) if after else None)
    diff = compare_with_reference(reference, config.out / "archive", read_elites(config, up.bootstrap, up.prefix))
    measured = [t for t in takeovers if t is not None]
    return {
        "replicas": 2 if mode == "standby" else 1,
        "kills": len(kills),
        "takeover_s": takeovers,
        "median_s": statistics.median(measured) if measured else None,
        "max_s": max(measured) if measured else None,
        "reason": up.reason,
        "wall_s": round(wall, 1),
        "archive": diff,
    }


def main() -> int:
    """Run both modes and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="a Kafka cluster to use (default: start a 3-node cluster here)")
    parser.add_argument("--seeds", type=Path, default=REPO.parent / "shared" / "data" / "gsm8k_train.jsonl")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--interval-s", type=float, default=12.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="takeover-") as tmp:
        root = Path(tmp)
        cluster = None
        bootstrap = args.bootstrap
        if bootstrap is None:
            from sparq_stream.brokers.apache import KafkaCluster

            cluster = KafkaCluster(nodes=3, workdir=root / "cluster")
            bootstrap = cluster.start()
        try:
            probe = _config(args.seeds, root / "reference", bootstrap, args.steps, 1)
            reference = run_local(probe.model_copy(update={"bootstrap": None, "prefix": None, "replicas": {}}))
            figures: dict[str, Any] = {"steps": args.steps, "nodes": 3 if cluster else None}
            for mode in ("standby", "restart"):
                figures[mode] = _run(mode, args.seeds, root, bootstrap, args, reference)
        finally:
            if cluster is not None:
                cluster.close()
    standby, restart = figures["standby"]["median_s"], figures["restart"]["median_s"]
    figures["ratio"] = round(restart / standby, 2) if standby and restart else None
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
