"""``sparq drill``: the fault drills, and the table of their figures in docs/reliability.md."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

__all__ = ["drill_app"]

drill_app = typer.Typer(help="Fault drills: kill -9, broker restart, poison, stall, resume, hostile outputs.",
                        no_args_is_help=True)

_BROKERS = {"tansu": ["tansu"], "kafka": ["kafka"], "both": ["tansu", "kafka"]}


def _run(names: list[str], out: Path, broker: str, budget: str, seeds: Optional[Path], doc: Optional[Path], verbose: bool) -> None:
    from sparq_stream.drill.runner import run_drills
    from sparq_stream.drill.table import row_counts, write_reliability_doc
    from sparq_stream.errors import ConfigError

    if broker not in _BROKERS:
        raise ConfigError(f"--broker must be tansu, kafka or both, not {broker!r}")
    if budget not in ("small", "full"):
        raise ConfigError(f"--budget must be small or full, not {budget!r}")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("sparq_stream.drill").setLevel(logging.INFO)
    command = "sparq " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results = run_drills(names, out, _BROKERS[broker], budget, seeds=seeds, command=command)
    for r in results:
        state = "skipped" if r.skipped else ("pass" if r.passed else "FAIL")
        failed = [n for n, ok in r.checks.items() if not ok]
        typer.echo(f"{r.drill:8} {r.broker:6} {state:7} {r.wall_s:7.1f}s  {r.error or r.skipped or ', '.join(failed)}")
        rows = row_counts(r.figures)
        if rows:
            typer.echo(f"{'':8} {'':6} rows: {rows}")
    typer.echo(f"figures in {out / 'drills.json'}")
    if doc is not None:
        typer.echo(f"table in {write_reliability_doc(out / 'drills.json', doc)}")
    if any(not r.passed and not r.skipped for r in results):
        raise typer.Exit(1)


def _command(name: str) -> None:
    """Register ``sparq drill <name>``."""
    names = ["kill", "broker", "poison", "stall", "resume", "hostile"] if name == "all" else [name]

    def command(
        out: Path = typer.Option(..., "--out", help="Folder for the drills' runs and drills.json."),
        broker: str = typer.Option("both", "--broker", help="tansu | kafka | both."),
        budget: str = typer.Option("full", "--budget", help="small (CI) | full."),
        seeds: Optional[Path] = typer.Option(None, "--seeds", help="Seed JSONL (default: examples/seeds/gsm8k_train_512.jsonl of the checkout)."),
        doc: Optional[Path] = typer.Option(None, "--doc", help="Also refresh the table in this Markdown file (docs/reliability.md)."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every service start and stop."),
    ) -> None:
        _run(names, out, broker, budget, seeds, doc, verbose)

    command.__doc__ = "Run every drill." if name == "all" else f"Run the {name} drill."
    drill_app.command(name)(command)


for _name in ("all", "kill", "broker", "poison", "stall", "resume", "hostile"):
    _command(_name)


@drill_app.command("table")
def table(
    out: Path = typer.Option(..., "--out", help="The folder holding drills.json."),
    doc: Path = typer.Option(Path("docs/reliability.md"), "--doc", help="The Markdown file to refresh."),
) -> None:
    """Write the table of DIR/drills.json into docs/reliability.md."""
    from sparq_stream.drill.table import write_reliability_doc

    typer.echo(f"table in {write_reliability_doc(out / 'drills.json', doc)}")
