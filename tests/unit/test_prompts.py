"""Prompt templates: loading, versions, hashes, rendering, missing fields, reverse matching."""

from __future__ import annotations

import hashlib
import importlib.resources

import pytest

from sparq_stream.errors import ConfigError
from sparq_stream.prompts import (
    MUTATION,
    PROMPT_NAMES,
    SKILL_CLASSIFICATION,
    SKILL_EXTRACTION,
    SOLVE,
    VALIDITY,
    available_prompts,
    load_prompt,
    parse_template,
)

EXPECTED_FIELDS = {
    MUTATION: ("problem", "solution", "answer"),
    SOLVE: ("problem",),
    SKILL_CLASSIFICATION: ("problem", "skills"),
    SKILL_EXTRACTION: ("problem",),
    VALIDITY: ("problem", "answer"),
}

LATEX = r"Let $f(x) = \frac{x^2}{2}$ and {a, b} = \{1, 2\}. Find $$f(3)$$, costing $5."


def test_packaged_prompts_are_all_present() -> None:
    assert set(PROMPT_NAMES) <= set(available_prompts())


@pytest.mark.parametrize("name", PROMPT_NAMES)
def test_each_prompt_has_version_hash_and_fields(name: str) -> None:
    template = load_prompt(name)
    data = importlib.resources.files("sparq_stream.prompts").joinpath(f"{name}.txt").read_bytes()
    assert template.name == name
    assert template.version >= 1
    assert template.sha256 == hashlib.sha256(data).hexdigest()
    assert template.fields == EXPECTED_FIELDS[name]
    roles = [role for role, _ in template.messages]
    # the mutation prompt carries one worked example turn (user, assistant) before the real request
    assert roles == (["system", "user", "assistant", "user"] if name == MUTATION else ["system", "user"])
    assert template.ref == f"{name}@v{template.version}"


@pytest.mark.parametrize("name", PROMPT_NAMES)
def test_render_inserts_values_verbatim_and_matches_back(name: str) -> None:
    template = load_prompt(name)
    values = {field: f"{field}: {LATEX}" for field in template.fields}
    prompt = template.render(**values)
    assert [turn["role"] for turn in prompt][0] == "system" and prompt[-1]["role"] == "user"
    for value in values.values():
        assert value in prompt[-1]["content"]
    assert "$" not in prompt[-1]["content"].replace(LATEX, "")  # no placeholder left unfilled
    assert template.match(prompt) == values
    others = [load_prompt(n) for n in PROMPT_NAMES if n != name]
    assert all(other.match(prompt) is None for other in others)


def test_mutation_prompt_asks_for_the_tagged_format() -> None:
    text = load_prompt(MUTATION).render(problem="p", solution="s", answer="a")[-1]["content"]
    assert "<problem>" in text and "</problem>" in text
    assert "<solution>" in text and "</solution>" in text
    assert r"\boxed{" in text
    assert r"\boxed{" in load_prompt(SOLVE).render(problem="p")[1]["content"]
    for name in (SKILL_CLASSIFICATION, SKILL_EXTRACTION):
        assert "<skills>" in load_prompt(name).messages[1][1]


def test_missing_field_raises_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="missing field.*solution"):
        load_prompt(MUTATION).render(problem="p", answer="a")


def test_unknown_field_and_non_text_value_raise() -> None:
    with pytest.raises(ConfigError, match="unknown field.*answer"):
        load_prompt(SOLVE).render(problem="p", answer="a")
    with pytest.raises(ConfigError, match="must be text"):
        load_prompt(SOLVE).render(problem=["not", "text"])
    assert "42" in load_prompt(SOLVE).render(problem=42)[1]["content"]


def test_unknown_prompt_name_lists_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match="allowed: .*mutation"):
        load_prompt("no_such_prompt")
    with pytest.raises(ConfigError):
        load_prompt("../etc/passwd")


def test_match_rejects_other_shapes() -> None:
    template = load_prompt(SOLVE)
    prompt = template.render(problem="What is 1+1?")
    assert template.match(prompt[1:]) is None
    assert template.match([prompt[0], {"role": "assistant", "content": prompt[1]["content"]}]) is None
    assert template.match([prompt[0], {"role": "user", "content": "hello"}]) is None
    assert template.match([prompt[0], "not a dict"]) is None  # type: ignore[list-item]


def test_directory_templates_dollars_braces_and_hash(tmp_path) -> None:
    body = "# version: 3\n# a test prompt\n=== user ===\nPay $$${amount} for ${item}s; then $item again.\n"
    (tmp_path / "custom.txt").write_text(body, encoding="utf-8")
    template = load_prompt("custom", tmp_path)
    assert (template.version, template.fields, template.description) == (3, ("amount", "item"), "a test prompt")
    prompt = template.render(amount="5", item="apple")
    assert prompt == [{"role": "user", "content": "Pay $5 for apples; then apple again."}]
    assert template.match(prompt) == {"amount": "5", "item": "apple"}
    assert available_prompts(tmp_path) == ["custom"]
    (tmp_path / "custom.txt").write_text(body.replace("again", "once more"), encoding="utf-8")
    assert load_prompt("custom", tmp_path).sha256 != template.sha256


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("=== user ===\nhi $x\n", "version"),
        ("# version: 1\n", "no '=== system ==="),
        ("# version: 1\nstray text\n=== user ===\nhi\n", "before the first"),
        ("# version: 1\n=== user ===\ncosts $5\n", "bad placeholder"),
    ],
)
def test_malformed_template_files_raise(text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_template("bad", text.encode("utf-8"))


def test_missing_directory_file_raises(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read prompt"):
        load_prompt("solve", tmp_path)
