"""The skill vocabulary: normalising, ranking, saving, and parsing classifier answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparq_stream.errors import ConfigError
from sparq_stream.descriptors import niche_key
from sparq_stream.qd.vocabulary import Vocabulary, build_vocabulary, normalise_skill, parse_skill_answer


@pytest.mark.parametrize(
    ("phrase", "name"),
    [
        ("Fractions", "fraction"),
        ("  Systems of   Linear Equations. ", "system of linear equation"),
        ("Probabilities", "probability"),
        ("Ratios & Proportions", "ratio proportion"),
        ("Pythagoras's theorem", "pythagoras theorem"),
        ("two-step word problems", "two step word problem"),
        ("1. Percentages", "percentage"),
        ("- Basic statistics", "basic statistics"),
        ("Series", "series"),
        ("Calculus", "calculus"),
        ("Matrices", "matrix"),
        ("Inches and boxes", "inch and box"),
        ("3D geometry", "3d geometry"),
        ("Classes", "class"),
        ("GCD", "gcd"),
    ],
)
def test_normalise_skill(phrase: str, name: str) -> None:
    assert normalise_skill(phrase) == name


def test_build_counts_once_per_seed_and_ranks_ties_by_name() -> None:
    per_seed = [
        ["Fractions", "fraction", "Ratios"],  # fraction counted once for this seed
        ["ratio", "Percentages"],
        ["percentage", "Fractions", "Geometry"],
        ["", "x" * 80, "42"],  # empty, too long, bare number: dropped
    ]
    vocab = build_vocabulary(per_seed, m=3)
    assert vocab.skills == ("fraction", "percentage", "ratio")
    assert vocab.counts == {"fraction": 2, "percentage": 2, "ratio": 2}
    assert build_vocabulary(per_seed).skills == ("fraction", "percentage", "ratio", "geometry")
    with pytest.raises(ConfigError):
        build_vocabulary(per_seed, m=0)


def test_names_are_valid_niche_skills() -> None:
    vocab = build_vocabulary([["a|b (none)", "x/y"]])
    assert niche_key(vocab.skills) == "a b none|x y"


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    vocab = build_vocabulary([["fractions", "ratios"], ["fractions"]])
    path = tmp_path / "vocab.json"
    vocab.save(path)
    data = json.loads(path.read_text())
    assert data["skills"] == [{"name": "fraction", "count": 2}, {"name": "ratio", "count": 1}]
    assert Vocabulary.load(path) == vocab
    assert vocab.numbered() == "1. fraction\n2. ratio"
    assert vocab.number_of("ratio") == 2 and vocab.skill(2) == "ratio" and vocab.skill(3) is None


@pytest.mark.parametrize(
    "document",
    [
        "not json",
        '{"schema": "other", "version": 1, "skills": []}',
        '{"schema": "sparq.vocabulary", "version": 2, "skills": []}',
        '{"schema": "sparq.vocabulary", "version": 1, "skills": {}}',
        '{"schema": "sparq.vocabulary", "version": 1, "skills": [{"name": 3}]}',
        '{"schema": "sparq.vocabulary", "version": 1, "skills": [{"name": "a", "count": -1}]}',
        '{"schema": "sparq.vocabulary", "version": 1, "skills": [{"name": "Not Normal"}]}',
        '{"schema": "sparq.vocabulary", "version": 1, "skills": [{"name": "a"}, {"name": "a"}]}',
    ],
)
def test_load_rejects_malformed_files(tmp_path: Path, document: str) -> None:
    path = tmp_path / "vocab.json"
    path.write_text(document)
    with pytest.raises(ConfigError):
        Vocabulary.load(path)


VOCAB = Vocabulary(("fraction", "ratio", "percentage", "linear equation", "exponent and radical", "geometry"))


@pytest.mark.parametrize(
    ("answer", "skills"),
    [
        ("fractions, ratios", ["fraction", "ratio"]),
        ("2, 1", ["fraction", "ratio"]),
        ("1. Fractions\n2. Linear equations", ["fraction", "linear equation"]),
        ("Skills: 3; #6", ["geometry", "percentage"]),
        ("<skills>ratio</skills> and some chatter", ["ratio"]),
        ('["Percentages", "Exponents and Radicals"]', ["exponent and radical", "percentage"]),
        ("fractions and ratios", ["fraction", "ratio"]),
        ("fraction, fraction, 1", ["fraction"]),
        ("fraction, calculus, 99", ["fraction"]),
    ],
)
def test_parse_accepts_names_and_list_numbers(answer: str, skills: list[str]) -> None:
    found, reason = parse_skill_answer(answer, VOCAB)
    assert found == skills and reason.startswith("ok")


def test_parse_keeps_the_first_three_and_sorts_them() -> None:
    found, reason = parse_skill_answer("geometry, ratio, 1, percentage", VOCAB)
    assert found == ["fraction", "geometry", "ratio"] and "first 3 of 4" in reason
    assert parse_skill_answer("geometry, ratio, 1", VOCAB, max_skills=2)[0] == ["geometry", "ratio"]


@pytest.mark.parametrize("answer", ["", "   \n", "calculus, topology", None, 12, "I don't know"])
def test_a_malformed_answer_gives_no_skills_and_a_reason(answer: object) -> None:
    found, reason = parse_skill_answer(answer, VOCAB)
    assert found == [] and reason and not reason.startswith("ok")


@given(st.text(max_size=300))
def test_parse_never_raises(answer: str) -> None:
    found, reason = parse_skill_answer(answer, VOCAB)
    assert isinstance(reason, str) and len(found) <= 3
    assert found == sorted(set(found)) and all(name in VOCAB for name in found)
