"""``report.html``: summary.json's learning entries and one self-contained page, checked as HTML and, when a
headless Chromium is installed, as a screenshot that is not blank."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sparq_stream.ids import problem_id
from sparq_stream.messages import SolveResult
from sparq_stream.orchestrator.html_report import HTML_NAME
from sparq_stream.orchestrator.report import write_report
from sparq_stream.qd.archive_log import ArchiveLog
from sparq_stream.qd.audit import ANSWER_IN_PROBLEM, VERIFIER_REJECTS


def _result(i: int, quality: float, audit: list[str] | None, niche: str, versions: tuple[int, int] = (0, 0)) -> SolveResult:
    text = f"Ann has {i} pens and buys {i + 1} more. How many pens?"
    return SolveResult(id=problem_id(text), problem=text, solution="", answer=str(2 * i + 1), k=4, rollouts_used=4,
                       n_correct=round(4 * (1 - quality)), solve_rate=1.0 - quality, quality=quality,
                       correct_rollouts=["\\boxed{1}"], audit=audit, niche=niche, skills=[niche], step=i,
                       model="student", model_version=versions[0], solver_model="student", solver_version=versions[1])  # fmt: skip


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    with ArchiveLog(out / "archive") as log:
        log.extend([
            _result(1, 0.5, [], "addition"),
            _result(2, 0.5, [f"{ANSWER_IN_PROBLEM}: says it", f"{VERIFIER_REJECTS}: no"], "<script>alert(1)</script>"),
            _result(3, 0.0, None, "ratios"),
            _result(4, 0.25, None, "ratios", versions=(0, 1)),
            _result(5, 0.0, None, "ratios", versions=(1, 1)),
        ])  # fmt: skip
    for number, accuracy in ((1, 0.1), (2, 0.2)):
        folder = out / "models" / f"student-v{number:04d}"
        (folder / "model").mkdir(parents=True)
        (folder / "train_result.json").write_text(json.dumps({"examples": 8, "steps": 2, "loss_first": 2.0, "loss_last": 1.5,
                                                              "method": "lora", "settings": {"trainer": "trl.SFTTrainer 1.16.0"}}))  # fmt: skip
        (folder / "eval.json").write_text(json.dumps({"gsm8k": {"accuracy": accuracy, "n": 20}, "math500": {"accuracy": accuracy / 2, "n": 20}}))
    (out / "models" / "student-v0003").mkdir()  # unfinished: no train_result.json
    return out


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        found = dict(attrs)
        if tag == "img":
            self.images.append(found.get("src") or "")
        for key in ("src", "href"):
            if found.get(key) and not str(found[key]).startswith("data:"):
                self.external.append(str(found[key]))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_summary_and_a_self_contained_page(run_dir: Path) -> None:
    metrics = {"novelty": {"counters": {"dropped_contamination": 1, "dropped_contamination_ngram": 2, "dropped_prompt_example": 3,
                                        "dropped_near_duplicate": 4}, "gauges": {}, "instances": 1},
               "mutator": {"counters": {"reloads": 1}, "gauges": {"model_version": 1}, "instances": 1},
               "solver": {"counters": {"reloads": 2}, "gauges": {"model_version": 2}, "instances": 1}}  # fmt: skip
    summary = write_report(run_dir, metrics, reason="budget reached", prefix="sparq-test")
    saved = json.loads((run_dir / "summary.json").read_text())
    assert [v["version"] for v in saved["model_versions"]] == [1, 2]
    assert saved["model_versions"][1]["eval"]["gsm8k"]["accuracy"] == 0.2
    assert saved["models_in_use"] == {"mutator": 1, "solver": 2}
    used = [(v["children_generated"], v["children_solved"], v["in_use_by"]) for v in saved["model_versions"]]
    assert used == [(1, 2, ["mutator"]), (0, 0, ["solver"])]
    assert saved["contamination"] == {"contamination": 1, "contamination_ngram": 2, "prompt_example": 3}
    assert saved["audit"] == {"kept": 3, "audited": 2, "flagged": 1, "not_audited_kept": 1,
                              "flags": {ANSWER_IN_PROBLEM: 1, VERIFIER_REJECTS: 1}}  # fmt: skip
    assert "children generated" in (run_dir / HTML_NAME).read_text()
    rebuilt = write_report(run_dir, {}, reason="report", prefix="sparq-test")  # `sparq report DIR`: no live metrics
    assert rebuilt["contamination"] == saved["contamination"] and rebuilt["models_in_use"] == saved["models_in_use"]
    assert rebuilt["stopped"] == "budget reached" and rebuilt["stages"] == saved["stages"]
    page_path = Path(summary["html"])
    assert page_path == run_dir / HTML_NAME
    raw = page_path.read_text()
    page = _Page()
    page.feed(raw)
    text = " ".join(page.text)
    assert page.external == []  # nothing to fetch: every image is a data: URI
    assert "<script>alert(1)</script>" not in raw and "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert page.tags.count("h2") == 5 and "script" not in page.tags
    for heading in ("Plots", "Model versions", "Validity audit", "Contamination", "Niches"):
        assert heading in text
    assert "pass@1 gsm8k" in text and "pass@1 math500" in text and "prompt_example" in text and "plumbing, not a gain" in text
    assert len(page.images) >= 5  # coverage, SR histogram, niche heatmap, versions, audit/contamination
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.slow
def test_headless_chromium_renders_a_page_that_is_not_blank(run_dir: Path, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no headless Chromium installed (apt-get install -y chromium); the HTML structure is tested above")
    summary = write_report(run_dir, {}, reason="budget reached", prefix="sparq-test")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
         "--window-size=1200,1600", Path(summary["html"]).resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    from PIL import Image

    image = Image.open(shot).convert("L")
    histogram = image.histogram()
    dominant = max(histogram) / sum(histogram)
    assert image.size == (1200, 1600)
    assert dominant < 0.97, f"the screenshot is {dominant:.1%} one shade: blank"
    assert len([n for n in histogram if n > 0]) > 20  # text, plots and tables give many grey levels
    assert re.search(rb"IDAT", shot.read_bytes())
