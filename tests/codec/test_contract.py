"""The wire contract: the id rule, the versioning policy against the released schemas, the dead-letter headers."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import unicodedata
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparq_stream.bus.dlq import HEADER_PREFIX, dlq_headers
from sparq_stream.cores.novelty import DROP_REASONS
from sparq_stream.errors import DecodeError
from sparq_stream.ids import IdMismatch, check_id, problem_id
from sparq_stream.messages import DROP_REASON_VALUES, VARIANT_VALUES, Candidate, DeadLetter, Dropped, Metric, Seed, decode, encode
from sparq_stream.qd.working_set import VARIANTS
from sparq_stream.schema_export import (
    DLQ_HEADERS,
    DLQ_HEADERS_FILE,
    DLQ_OPTIONAL_HEADERS,
    incompatible_changes,
    json_schema,
    released_problems,
    schema_filename,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def _reference_id(text: str) -> str:
    """The reference implementation printed in docs/wire.md, copied verbatim."""
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"\s+", " ", text).strip().casefold()
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_the_documented_id_rule_is_the_code(text: str) -> None:
    assert problem_id(text) == _reference_id(text)


def test_the_id_rule_normalises_width_case_and_space() -> None:
    base = problem_id("Straße has 3 apples")
    assert problem_id("  STRASSE\thas\n３   apples ") == base  # NFKC (full-width 3), casefold (ß -> ss), whitespace
    assert re.fullmatch(r"[0-9a-f]{32}", base)
    assert problem_id("Strasse has 4 apples") != base
    assert "```python" in (Path(__file__).resolve().parents[2] / "docs" / "wire.md").read_text()


def test_check_id_accepts_the_content_hash_and_rejects_anything_else() -> None:
    text = "Tom has 3 apples. How many?"
    check_id(Seed(id=problem_id(text), problem=text, answer="3"))
    check_id(Metric(service="s", instance="i"))  # nothing to check
    check_id(Dropped(id="anything", reason="exact_duplicate"))  # no text carried
    with pytest.raises(IdMismatch, match="is not the problem id of its text") as err:
        check_id(Candidate(id="c1", problem=text, solution="s", answer="3"))
    assert isinstance(err.value, DecodeError) and err.value.retriable is False


def test_enums_are_the_code_s_value_sets() -> None:
    assert set(DROP_REASON_VALUES) == set(DROP_REASONS)
    assert set(VARIANT_VALUES) == set(VARIANTS) | {""}
    schema = json_schema(Dropped)
    assert set(schema["properties"]["reason"]["enum"]) == set(DROP_REASONS)


def test_time_fields_state_their_unit() -> None:
    for cls in (Candidate, Dropped, Metric, DeadLetter):
        props = json_schema(cls)["properties"]
        for name in ("created_at", "ts"):
            if name in props:
                assert "seconds since the Unix epoch" in props[name]["description"], (cls.SCHEMA, name)


def test_every_schema_is_compatible_with_its_released_version() -> None:
    assert released_problems(SCHEMAS) == []


def test_the_policy_tells_compatible_from_incompatible_changes() -> None:
    old = json_schema(Seed)

    def changed(edit) -> list[str]:
        new = copy.deepcopy(old)
        edit(new)
        return incompatible_changes(old, new)

    assert changed(lambda s: s["properties"]["answer"].update(description="reworded")) == []
    assert changed(lambda s: s["properties"].update(lang={"type": "string", "default": "en"})) == []
    assert changed(lambda s: s["properties"].pop("source"))  # removed
    assert changed(lambda s: s["properties"]["line"].update(type="string"))  # retyped
    assert changed(lambda s: s["properties"]["line"].update(default=1))  # default changed
    assert changed(lambda s: s["properties"].update(lang={"type": "string"}))  # no default
    assert changed(lambda s: (s["properties"].update(lang={"type": "string", "default": ""}), s["required"].append("lang")))
    assert changed(lambda s: s["required"].remove("problem"))  # made optional
    assert changed(lambda s: s.update(additionalProperties=False))
    dropped = json_schema(Dropped)
    narrower = copy.deepcopy(dropped)
    narrower["properties"]["reason"]["enum"] = ["exact_duplicate", "near_duplicate", "contamination", "boring"]
    assert incompatible_changes(dropped, narrower)  # an enum value added: old strict readers would reject it


def test_dead_letter_headers_match_their_schema() -> None:
    schema = json.loads((SCHEMAS / DLQ_HEADERS_FILE).read_text())
    headers = dlq_headers(
        source_topic="p.candidates", partition=2, offset=41, error_type="IdMismatch", error="bad id", service="novelty",
        original_headers=[("trace", b"abc"), (HEADER_PREFIX + "offset", b"spoofed")],
    )
    as_text = {k: v.decode("utf-8") for k, v in headers}
    assert [k for k, _ in headers][: len(DLQ_HEADERS)] == list(DLQ_HEADERS)  # wire order as documented
    jsonschema.validate(as_text, schema)
    assert as_text["sparq.dlq.offset"] == "41" and as_text["trace"] == "abc"
    optional = {**as_text, "sparq.dlq.original_size": "2000000", "sparq.dlq.original_sha256": "0" * 64, "sparq.dlq.truncated": "true"}
    jsonschema.validate(optional, schema)
    assert set(DLQ_OPTIONAL_HEADERS) <= set(schema["properties"])
    for bad in ({k: v for k, v in as_text.items() if k != "sparq.dlq.error"}, {**as_text, "sparq.dlq.partition": "two"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_dead_letter_schema_has_no_made_up_format() -> None:
    text = (SCHEMAS / schema_filename(DeadLetter)).read_text()
    assert "base64url" not in text and '"contentEncoding": "base64"' in text


def test_a_wrong_id_still_decodes_the_check_is_separate() -> None:
    wire = encode(Candidate(id="c" * 32, problem="p", solution="s", answer="1"))
    assert decode(wire).id == "c" * 32  # decode validates the shape and the id pattern; check_id (every service) the hash


def test_whitespace_is_what_the_doc_says() -> None:
    chars = [chr(c) for c in range(0x3000 + 1)]
    assert {c for c in chars if re.fullmatch(r"\s", c)} == {c for c in chars if c.isspace()}
    assert {"\x1c", "\x1f", "\x85", "\xa0", "\u2003"} <= {c for c in chars if c.isspace()}


def test_docs_wire_md_is_current() -> None:
    from sparq_stream.wire_doc import TOPICS, render_wire_doc

    text = render_wire_doc()
    assert (SCHEMAS.parent / "docs" / "wire.md").read_text(encoding="utf-8") == text, "run: python -m sparq_stream.cli wire-doc"
    from sparq_stream.bus.topics import LOGICAL_TOPICS

    assert set(TOPICS) == set(LOGICAL_TOPICS)
    for name in LOGICAL_TOPICS:
        assert f"`<prefix>.{name}`" in text
    for header in [*DLQ_HEADERS, *DLQ_OPTIONAL_HEADERS]:
        assert f"`{header}`" in text


def test_released_files_are_locked_by_their_hashes(tmp_path: Path) -> None:
    import shutil

    from sparq_stream.schema_export import LOCK_FILE, lock_problems

    copy_dir = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, copy_dir)
    assert lock_problems(copy_dir) == []
    locked = sorted((copy_dir / "released").glob("*.json"))
    assert {p.name for p in locked} >= {"sparq.dropped.v1.json", "sparq.dropped.v2.json", "sparq.dead_letter.v1.json"}
    edited = copy_dir / "released" / "sparq.dropped.v1.json"
    edited.write_text(edited.read_text().replace('"contamination"', '"contamination", "boring"'))
    (copy_dir / "released" / "sparq.extra.v1.json").write_text("{}\n")
    problems = lock_problems(copy_dir)
    assert any("sparq.dropped.v1.json: changed in place" in p for p in problems)
    assert any("sparq.extra.v1.json: not in " + LOCK_FILE in p for p in problems)
    (copy_dir / "released" / "sparq.seed.v1.json").unlink()
    assert any("sparq.seed.v1.json: locked but missing" in p for p in lock_problems(copy_dir))
