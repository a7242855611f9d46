"""The held-out sets ship with the package: their bytes, the checks built on them, and the one off switch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from sparq_stream.cores.novelty import NoveltyConfig, NoveltyCore
from sparq_stream.errors import ConfigError
from sparq_stream.heldout import (
    NO_CHECK_FLAG,
    PACKAGED,
    PACKAGED_SHA256,
    HeldOut,
    eval_sets,
    filter_seeds,
    heldout_files,
    packaged_paths,
    read_problems,
    sha256_of,
)
from sparq_stream.ids import problem_id
from sparq_stream.models.hashing_embedder import HashingEmbedder
from sparq_stream.seeds import collect_seeds, refuse_heldout

REPO = Path(__file__).resolve().parents[2]
EMBEDDER = HashingEmbedder(dim=64)


def _gsm8k_test(n: int) -> list[dict]:
    return [json.loads(line) for line in packaged_paths()[0].read_text(encoding="utf-8").splitlines()[:n]]


def test_the_packaged_files_are_the_published_sets_byte_for_byte() -> None:
    paths = packaged_paths()
    assert [p.name for p in paths] == list(PACKAGED.values()) == ["gsm8k_test.jsonl", "math500_test.jsonl"]
    for path in paths:
        assert sha256_of(path) == PACKAGED_SHA256[path.name]
        assert "sparq_stream" in path.parts and path.parent.name == "heldout"  # inside the package, nowhere else
    assert [len(read_problems(p)) for p in paths] == [1319, 500]
    notes = (paths[0].parent / "README.md").read_text(encoding="utf-8")
    assert all(digest in notes for digest in PACKAGED_SHA256.values()) and notes.count("MIT") >= 2


def test_the_package_data_is_declared_and_no_machine_path_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    assert '"data/heldout/*.jsonl"' in (REPO / "pyproject.toml").read_text(encoding="utf-8")
    monkeypatch.chdir("/")  # from the file-system root: no development data folder anywhere near
    assert [sha256_of(p) for p in heldout_files()] == list(PACKAGED_SHA256.values())


def test_a_users_own_set_is_added_and_a_copy_of_a_packaged_one_is_not(tmp_path: Path) -> None:
    own = tmp_path / "algebra_test.jsonl"
    own.write_text(json.dumps({"problem": "Solve x + 1 = 2.", "answer": "1"}) + "\n")
    copy = tmp_path / "gsm8k_copy.jsonl"
    copy.write_bytes(packaged_paths()[0].read_bytes())
    files = heldout_files([own, copy, own])
    assert files == [*packaged_paths(), own.resolve()]
    assert list(eval_sets([own])) == ["gsm8k", "math500", "algebra"]
    with pytest.raises(ConfigError, match="does not exist"):
        heldout_files([tmp_path / "missing.jsonl"])
    assert heldout_files([own], check=False) == []  # --no-contamination-check: nothing at all


def test_a_missing_package_file_refuses_and_names_the_off_switch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sparq_stream.heldout as heldout

    monkeypatch.setattr(heldout, "_PACKAGED_CACHE", [])
    monkeypatch.setattr(heldout.resources, "files", lambda _pkg: tmp_path)  # an install stripped of its data
    with pytest.raises(ConfigError, match=NO_CHECK_FLAG):
        heldout.heldout_files()
    assert heldout.heldout_files(check=False) == []


def test_seeds_that_are_held_out_problems_are_refused_by_id_13_gram_and_embedding(tmp_path: Path) -> None:
    test = _gsm8k_test(3)
    reworded = "Every day, " + test[1]["question"]  # a copy with a prefix: the 13-gram rule
    rows = [
        {"question": test[0]["question"], "answer": test[0]["answer"]},  # verbatim: the same id
        {"question": reworded, "answer": test[1]["answer"]},
        {"question": "Tom has 3 red balls and buys 4 more. How many balls does Tom have?", "answer": "#### 7"},
    ]
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seeds, _ = collect_seeds(path)
    kept, refused = refuse_heldout(seeds, embedder="hash", embedder_options={"dim": 64}, cache_dir=tmp_path / "cache")
    assert [s.line for s in kept] == [3]
    assert [(s.line, m.reason, m.source) for s, m in refused] == [
        (1, "contamination", "gsm8k_test.jsonl"), (2, "contamination_ngram", "gsm8k_test.jsonl"),
    ]  # fmt: skip
    assert refused[0][1].match_id == problem_id(test[0]["question"])
    # the embedding rule (cosine >= 0.90 with novelty's embedder) on its own: vectors made to be close
    close = np.ones((1, 4), np.float32) / 2.0
    heldout = HeldOut(("x" * 32,), ("own.jsonl",), close)

    class Near:
        dim = 4

        def embed(self, texts):  # noqa: ANN001, ANN202
            return np.repeat(close, len(texts), axis=0)

    from sparq_stream.heldout import HeldOutCheck

    check = HeldOutCheck(heldout, None, 0.90)
    assert check.check(["y" * 32], ["anything"], Near().embed(["anything"]))[0].reason == "contamination"
    assert refuse_heldout(seeds, check=False) == (seeds, [])  # the off switch keeps every seed


def test_filter_seeds_with_the_real_n_gram_rule_on_the_shipped_training_seeds(tmp_path: Path) -> None:
    seeds, _ = collect_seeds(REPO / "examples" / "seeds" / "gsm8k_train_512.jsonl")
    kept, refused = filter_seeds(seeds, packaged_paths(), EMBEDDER, cache_dir=tmp_path)
    # two GSM8K training problems share a word 13-gram with a test problem (a known overlap of the splits)
    assert sorted(s.line for s, _ in refused) == [21, 407] and len(kept) == 510
    assert {m.reason for _, m in refused} == {"contamination_ngram"}


def test_novelty_config_has_one_explicit_off_switch(tmp_path: Path) -> None:
    assert NoveltyConfig().heldout_files() == packaged_paths()
    own = tmp_path / "own.jsonl"
    own.write_text(json.dumps({"question": "What is 12 times 12 plus 1?"}) + "\n")
    assert NoveltyConfig(heldout=[str(own)]).heldout_files()[-1] == own.resolve()
    assert NoveltyConfig(contamination=[str(own)]).heldout_files()[-1] == own.resolve()  # deprecated spelling
    with pytest.raises(ValidationError, match=NO_CHECK_FLAG):
        NoveltyConfig(contamination=[])  # used to turn the check off silently
    off = NoveltyCore(NoveltyConfig(contamination_check=False, classify=False), embedder=EMBEDDER)
    on = NoveltyCore(NoveltyConfig(classify=False, heldout=[str(own)]), embedder=EMBEDDER)
    assert (off.metrics()["contamination_check"], off.metrics()["heldout_size"]) == (0.0, 0.0)
    assert (on.metrics()["contamination_check"], on.metrics()["heldout_size"]) == (1.0, 1320.0 + 500.0)


def test_the_live_view_summary_and_page_say_when_the_check_is_off(tmp_path: Path) -> None:
    from sparq_stream.orchestrator.html_report import render_html
    from sparq_stream.orchestrator.learning_summary import contamination_status
    from sparq_stream.orchestrator.live import contamination_line

    novelty_off = {"gauges": {"contamination_check": 0.0, "heldout_size": 0.0}, "counters": {}}
    novelty_on = {"gauges": {"contamination_check": 1.0, "heldout_size": 1819.0}, "counters": {}}
    assert "contamination check OFF" in contamination_line(novelty_off)
    assert contamination_line(novelty_on) == "contamination check on: 1,819 held-out problems"
    assert contamination_line(None) == ""
    status = contamination_status({"novelty.contamination_check": 0.0, "novelty.heldout_size": 0.0})
    assert status == {"on": False, "status": "contamination check OFF", "heldout_problems": 0}
    page = render_html({"contamination_check": status}, [], [])
    assert "contamination check OFF" in page and "--no-contamination-check" in page
    on_page = render_html({"contamination_check": {"on": True, "heldout": list(PACKAGED.values()), "seeds_refused": 3}}, [], [])
    assert "OFF" not in on_page and "contamination check on" in on_page and "3 seed(s) refused" in on_page


def test_sparq_up_without_any_held_out_set_refuses_to_start_naming_the_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sparq_stream.heldout as heldout
    from sparq_stream.orchestrator.up import UpConfig, run_up

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"question": "What is 1+1?", "answer": "#### 2"}) + "\n")
    monkeypatch.setattr(heldout, "_PACKAGED_CACHE", [])
    monkeypatch.setattr(heldout.resources, "files", lambda _pkg: tmp_path)  # an install stripped of its data
    with pytest.raises(ConfigError, match=NO_CHECK_FLAG):
        run_up(UpConfig(seeds=seeds, out=tmp_path / "run", steps=1, backend="scripted", embedder="hash"))
    assert not (tmp_path / "run").exists()  # refused before anything started
