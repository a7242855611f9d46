"""Seconds from SIGTERM to exit of a service busy with a real model, against the 10 s target.

Two cases, each a real ``sparq run`` process on an embedded Tansu broker with the packaged models:

- ``load``: ``sparq run novelty`` (sentence-transformers embedder + SmolLM2 classifier) is signalled
  when it logs that it is reading the classifier's weights (the last and longest stage of its load);
  it exits at once with 143 (nothing consumed, nothing to commit);
- ``generate``: ``sparq run solver`` (transformers backend, K rollouts of up to ``--max-tokens``)
  is signalled a few seconds into a batch (``sparq_in_flight`` > 0 on its /metrics); it cannot
  finish the batch, so its watchdog exits ``shutdown_timeout_s`` (8 s) after the signal, without
  committing (the batch is redelivered).

Reference, measured first in the same run: an idle ``sparq run relay`` (running, no input),
which stops cleanly (exit 0). Each line prints the seconds from the signal to the exit, the exit
code, the ratio to the 10 s target (below 1 meets it) and to the idle reference.
``--load-report`` also prints the load's progress lines.

    python bench/sigterm_stop.py [--cases load,generate] [--runs 1] [--max-tokens 512]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from sparq_stream.brokers.tansu import EmbeddedBroker
from sparq_stream.bus import create_topics
from sparq_stream.bus.client import publish_all
from sparq_stream.ids import problem_id
from sparq_stream.messages import NovelCandidate
from sparq_stream.settings import ServiceSettings

TARGET_S = 10.0


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "sparq_stream.cli", "run", *args, "--http-port", "0", "--http-host", "127.0.0.1"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen[bytes], limit_s: float = 900.0) -> re.Match[str]:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found
        if proc.poll() is not None:
            raise SystemExit(f"exited with {proc.returncode} before {pattern!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    raise SystemExit(f"never logged {pattern!r}")


def _in_flight(address: str) -> float:
    import urllib.request

    with urllib.request.urlopen(address + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == "sparq_in_flight")


def _stop(proc: subprocess.Popen[bytes]) -> tuple[float, int]:
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    return time.monotonic() - signalled, code


def _case_idle(bootstrap: str, prefix: str, work: Path) -> tuple[float, int, str]:
    log = work / f"relay-{uuid.uuid4().hex[:6]}.log"
    proc = _start(["relay", "--bootstrap", bootstrap, "--prefix", prefix], log)
    _wait_for(log, r"relay running", proc)
    time.sleep(2.0)  # joined its group, polling
    seconds, code = _stop(proc)
    return seconds, code, "an idle relay (the reference)"


def _case_load(bootstrap: str, prefix: str, work: Path, show: bool) -> tuple[float, int, str]:
    log = work / f"novelty-{uuid.uuid4().hex[:6]}.log"
    proc = _start(["novelty", "--bootstrap", bootstrap, "--prefix", prefix, "--state-dir", str(work / "novelty"),
                   "--embedder", "sentence-transformers", "--backend", "transformers"], log)  # fmt: skip
    started = time.monotonic()
    _wait_for(log, r"loading the causal LM: reading", proc)
    into = time.monotonic() - started
    seconds, code = _stop(proc)
    if show:
        print("".join(line + "\n" for line in log.read_text().splitlines() if "load" in line), end="")
    return seconds, code, f"signalled {into:.1f}s after start, while reading the classifier's weights"


def _case_generate(bootstrap: str, prefix: str, work: Path, max_tokens: int) -> tuple[float, int, str]:
    settings = ServiceSettings(bootstrap=bootstrap, prefix=prefix)
    texts = [f"A farmer has {i + 3} cows and buys {i + 5} more. How many cows does he have now?" for i in range(4)]
    publish_all(settings, f"{prefix}.novel", [
        NovelCandidate(id=problem_id(t), problem=t, solution="\\boxed{0}", answer=str(2 * i + 8), niche="(none)")
        for i, t in enumerate(texts)
    ])  # fmt: skip
    log = work / f"solver-{uuid.uuid4().hex[:6]}.log"
    proc = _start(["solver", "--bootstrap", bootstrap, "--prefix", prefix, "--backend", "transformers", "--k", "16",
                   "--max-tokens", str(max_tokens), "--early-stop", "none"], log)  # fmt: skip
    address = _wait_for(log, r"serving /metrics, /healthz and /readyz on (http://\S+)", proc).group(1)
    _wait_for(log, r"solver running", proc)
    deadline = time.monotonic() + 600
    while _in_flight(address) == 0:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"the solver never took a batch:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    time.sleep(3.0)  # well into the generation
    seconds, code = _stop(proc)
    return seconds, code, f"signalled 3 s into a batch of 4 candidates x K=16 (max_tokens {max_tokens})"


def main() -> None:
    """Run the cases and print one line per run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="load,generate")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--load-report", action="store_true", help="print the load's log lines")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        work = Path(tmp)
        reference = None
        for case in ["idle", *args.cases.split(",")]:
            for _ in range(args.runs):
                prefix = "bench-" + uuid.uuid4().hex[:8]
                create_topics(ServiceSettings(bootstrap=broker.bootstrap, prefix=prefix), partitions=1)
                if case == "idle":
                    seconds, code, what = _case_idle(broker.bootstrap, prefix, work)
                elif case == "load":
                    seconds, code, what = _case_load(broker.bootstrap, prefix, work, args.load_report)
                elif case == "generate":
                    seconds, code, what = _case_generate(broker.bootstrap, prefix, work, args.max_tokens)
                else:
                    raise SystemExit(f"unknown case {case!r}; allowed: load, generate")
                reference = reference or seconds
                print(
                    f"{case}: exit {code} {seconds:.2f}s after SIGTERM; ratio to the {TARGET_S:.0f} s target {seconds / TARGET_S:.2f}, "
                    f"to the idle reference {seconds / reference:.1f}x ({what})"
                )


if __name__ == "__main__":
    main()
