"""``DIR/report.html``: one self-contained page for a run (summary, plots, niches, audit, contamination, versions).

Everything is inline: the plots are PNGs embedded as base64 ``data:`` URIs and the style is
one ``<style>`` block, so the file can be mailed or opened offline. Text from the run (niche
names, flags, paths) is HTML-escaped. Built from ``summary.json`` and the run's ``plots/``.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import Any

__all__ = ["HTML_NAME", "render_html", "write_html_report"]

log = logging.getLogger(__name__)

#: The page's file name in the run folder.
HTML_NAME = "report.html"
_MAX_NICHE_ROWS = 200

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; background: #fafafa; }
h1 { border-bottom: 3px solid #3b6ea5; padding-bottom: .2em; }
h2 { color: #3b6ea5; margin-top: 1.6em; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6em 1em; min-width: 8em; }
.card b { display: block; font-size: 1.5em; color: #3b6ea5; }
.warn { background: #fdecea; border: 2px solid #c0392b; color: #8e1b10; padding: .5em 1em; border-radius: 6px; }
table { border-collapse: collapse; background: #fff; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .3em .7em; text-align: left; font-size: .92em; }
th { background: #eef3f9; }
img { max-width: 100%; border: 1px solid #ddd; background: #fff; margin: .4em 0; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(26em, 1fr)); gap: 1em; }
.note { color: #666; font-size: .9em; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return _esc(value)


def _table(headers: list[str], rows: list[list[Any]], empty: str = "none") -> str:
    if not rows:
        return f'<p class="note">{_esc(empty)}</p>'
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(data: bytes, alt: str) -> str:
    return f'<figure><img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}"></figure>'


def _versions_plot(versions: list[dict[str, Any]]) -> bytes | None:
    """pass@1 per held-out set over model versions, as PNG bytes (None without evaluations)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in versions:
        for name, scored in (entry.get("eval") or {}).items():
            if isinstance(scored, dict) and "accuracy" in scored:
                series.setdefault(name, []).append((int(entry["version"]), float(scored["accuracy"])))
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in sorted(series.items()):
        points.sort()
        ax.plot([v for v, _ in points], [a for _, a in points], marker="o", label=name)
    ax.set(xlabel="model version", ylabel="pass@1", title="Held-out accuracy per model version", ylim=(0, 1))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def _counts_plot(audit: dict[str, Any], contamination: dict[str, int]) -> bytes | None:
    """Bars of audit flags and contamination drops by reason (None when there are none)."""
    bars = [(f"audit: {k}", int(v)) for k, v in (audit.get("flags") or {}).items()]
    bars += [(f"dropped: {k}", int(v)) for k, v in contamination.items()]
    if not bars:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.4 * len(bars)))
    ax.barh([b for b, _ in bars], [n for _, n in bars], color="#3b6ea5")
    ax.invert_yaxis()
    ax.set(xlabel="problems", title="Audit flags and contamination drops")
    return _png(fig)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def render_html(
    summary: dict[str, Any],
    plots: list[Path] | None = None,
    extra_plots: list[tuple[str, bytes]] | None = None,
    sweep_png: Path | None = None,
) -> str:
    """Return the page for ``summary`` with the given PNG files and (title, PNG bytes) plots inlined."""
    cards = [
        ("scored", summary.get("scored", 0)),
        ("kept", summary.get("kept", 0)),
        ("yield", f"{float(summary.get('yield', 0.0)):.0%}"),
        ("skill-sets", summary.get("coverage", 0)),
        ("QD-score", round(float(summary.get("qd_score", 0.0)), 2)),
        ("examples exported", (summary.get("export") or {}).get("examples", 0)),
        ("model versions", len(summary.get("model_versions") or [])),
        ("audit flagged", (summary.get("audit") or {}).get("flagged", 0)),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>sparq run {_esc(summary.get('prefix', ''))}</title><style>{_STYLE}</style></head><body>",
        f"<h1>sparq run report <span class=\"note\">{_esc(summary.get('prefix', ''))}</span></h1>",
        f"<p>Stopped: {_esc(summary.get('stopped', ''))}.</p>",
        _contamination_banner(summary.get("contamination_check")),
        '<div class="cards">' + "".join(f"<div class=\"card\"><b>{_fmt(v)}</b>{_esc(k)}</div>" for k, v in cards) + "</div>",
    ]
    images = [_img(p.read_bytes(), p.stem) for p in plots or [] if p.is_file()]
    images += [_img(data, title) for title, data in extra_plots or []]
    parts += ["<h2>Plots</h2>", '<div class="plots">' + "".join(images) + "</div>" if images else '<p class="note">no plots</p>']

    versions = summary.get("model_versions") or []
    eval_names = sorted({n for v in versions for n in (v.get("eval") or {})})
    rows = [
        [v.get("name"), f"{v.get('version')} (base)" if v.get("base") else v.get("version"), v.get("examples"), v.get("steps"),
         v.get("loss_first"), v.get("loss_last"), v.get("method")]
        + [((v.get("eval") or {}).get(n) or {}).get("accuracy", "") for n in eval_names]
        + [_signed((v.get("delta_vs_base") or {}).get(n)) for n in eval_names]
        + [v.get("children_generated", ""), v.get("children_solved", ""), ", ".join(v.get("in_use_by") or []) or "-"]
        for v in versions
    ]  # fmt: skip
    parts += [
        "<h2>Model versions</h2>",
        _table(["name", "version", "examples", "steps", "first loss", "last loss", "method"] + [f"pass@1 {n}" for n in eval_names]
               + [f"{n} vs base (v0)" for n in eval_names] + ["children generated", "children solved", "in use at the end by"], rows,
               "no model version was trained in this run"),  # fmt: skip
        '<p class="note">On CPU with the 135M model these figures show the plumbing, not a gain.</p>',
    ]
    audit = summary.get("audit") or {}
    parts += [
        "<h2>Validity audit</h2>",
        _table(["kept", "audited", "flagged", "kept, not audited"],
               [[audit.get("kept", 0), audit.get("audited", 0), audit.get("flagged", 0), audit.get("not_audited_kept", 0)]]),  # fmt: skip
        _table(["flag", "problems"], [[k, v] for k, v in (audit.get("flags") or {}).items()], "no flag raised"),
        "<h2>Contamination</h2>",
        _contamination_banner(summary.get("contamination_check"), always=True),
        _table(["reason", "candidates dropped"], [[k, v] for k, v in (summary.get("contamination") or {}).items()], "no contamination check ran"),
    ]
    sweep = summary.get("sweep")
    if sweep:
        names = sorted(sweep.get("heldout") or {})
        runs = [[r["set"], r["examples"], r.get("steps", "")] + [(r.get(n) or {}).get("accuracy", "") for n in names] for r in sweep.get("runs", [])]
        fits = [[key, fit["a"], fit["b"]] for key, fit in sorted((sweep.get("power_law") or {}).items()) if fit]
        parts += [
            "<h2>Data-quantity sweep</h2>",
            _table(["set", "examples", "steps"] + [f"pass@1 {n}" for n in names], runs),
            _table(["power law acc = a·n^b", "a", "b"], fits, "too few non-zero points to fit a power law"),
        ]
        if sweep_png is not None and sweep_png.is_file():
            parts.append(_img(sweep_png.read_bytes(), "sweep"))
    best = summary.get("best_per_niche") or {}
    niche_rows = [[niche or "(empty niche)", q] for niche, q in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:_MAX_NICHE_ROWS]]
    parts += [
        "<h2>Niches</h2>",
        f'<p class="note">{len(best)} niches; the best {min(len(best), _MAX_NICHE_ROWS)} by quality.</p>',
        _table(["niche (skill-set)", "best quality"], niche_rows, "no niche reached"),
        "</body></html>",
    ]
    return "\n".join(parts)


def _signed(delta: Any) -> str:
    """A change against the base as ``+0.125`` / ``-0.250`` ("" when there is none)."""
    return f"{float(delta):+.3f}" if isinstance(delta, (int, float)) else ""


def _contamination_banner(check: Any, always: bool = False) -> str:
    """A line saying in words whether the contamination check ran (OFF stands out); "" when the run did not record it."""
    if not isinstance(check, dict):
        return ""
    if not check.get("on", True):
        return ('<p class="warn"><b>contamination check OFF</b> (--no-contamination-check): candidates and seeds were not '
                "checked against any held-out set.</p>")  # fmt: skip
    if not always:
        return ""
    files = ", ".join(check.get("heldout") or []) or "none"
    return (f'<p class="note">contamination check on: held-out sets {_esc(files)}; '
            f"{int(check.get('seeds_refused', 0))} seed(s) refused as held-out problems.</p>")


def write_html_report(out: Path, summary: dict[str, Any]) -> Path:
    """Write ``out/report.html`` from a run's summary and its ``plots/`` folder; return its path."""
    plots = sorted((out / "plots").glob("*.png")) if (out / "plots").is_dir() else []
    extra: list[tuple[str, bytes]] = []
    for title, data in (
        ("model versions", _versions_plot(summary.get("model_versions") or [])),
        ("audit and contamination", _counts_plot(summary.get("audit") or {}, summary.get("contamination") or {})),
    ):
        if data is not None:
            extra.append((title, data))
    path = out / HTML_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_html(summary, plots, extra, out / "sweep" / "sweep.png"), encoding="utf-8")
    tmp.replace(path)
    log.info("wrote %s", path)
    return path
