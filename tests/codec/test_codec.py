"""Every message type round-trips through msgpack; bad bytes always raise the one typed error."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparq_stream.errors import DecodeError, InvalidValue
from sparq_stream.ids import problem_id
from sparq_stream.messages import MESSAGE_TYPES, Candidate, Dropped, Seed, SolveResult, decode, encode, to_jsonable
from sparq_stream.schema_export import json_schema, schema_filename, stale_schemas

from .strategies import invalid_bodies_of, messages_of

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
TYPES = sorted(MESSAGE_TYPES.values(), key=lambda c: c.SCHEMA)
any_message = st.one_of(*(messages_of(cls) for cls in TYPES))


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.SCHEMA)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip(cls, data) -> None:
    message = data.draw(messages_of(cls))
    wire = encode(message)
    back = decode(wire)
    assert type(back) is cls
    assert back == message
    assert decode(wire, expect=cls) == message
    body = msgpack.unpackb(wire, raw=False)
    assert body["schema"] == cls.SCHEMA and body["version"] == cls.VERSION


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.SCHEMA)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_instances_validate_against_the_json_schema(cls, data) -> None:
    schema = json.loads((SCHEMAS / schema_filename(cls)).read_text())
    jsonschema.validate(to_jsonable(data.draw(messages_of(cls))), schema)


def test_schema_files_agree_with_structs() -> None:
    assert stale_schemas(SCHEMAS) == []
    for cls in TYPES:
        on_disk = json.loads((SCHEMAS / schema_filename(cls)).read_text())
        assert on_disk == json_schema(cls)
        assert set(on_disk["properties"]) == set(cls.model_fields) | {"schema", "version"}


def test_json_schema_rejects_what_decode_rejects() -> None:
    schema = json.loads((SCHEMAS / schema_filename(Seed)).read_text())
    good = to_jsonable(Seed(id=problem_id("p"), problem="p", answer="1"))
    jsonschema.validate(good, schema)
    for bad in ({**good, "version": 1}, {k: v for k, v in good.items() if k != "problem"}, {**good, "line": -1}, {**good, "id": "a"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    dropped = json.loads((SCHEMAS / schema_filename(Dropped)).read_text())
    row = to_jsonable(Dropped(id=problem_id("a"), reason="contamination"))
    jsonschema.validate(row, dropped)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**row, "reason": "boring"}, dropped)
    with pytest.raises(DecodeError, match="field reason"):
        decode(_packed(**{**row, "reason": "boring"}))


def test_unknown_fields_are_ignored_by_the_schema_and_the_decoder() -> None:
    # the tolerant-reader rule of docs/wire.md: a producer may add an optional field within a version
    good = Seed(id=problem_id("p"), problem="p", answer="1")
    schema = json.loads((SCHEMAS / schema_filename(Seed)).read_text())
    jsonschema.validate({**to_jsonable(good), "added_later": [1, 2]}, schema)
    assert decode(_packed(**good.model_dump(), added_later=[1, 2], schema="sparq.seed", version=Seed.VERSION)) == good


@settings(max_examples=400)
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        decode(data)
    except DecodeError:
        pass


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=any_message, data=st.data())
def test_truncated_bytes_raise_decode_error(message, data) -> None:
    wire = encode(message)
    cut = data.draw(st.integers(min_value=0, max_value=len(wire) - 1))
    with pytest.raises(DecodeError):
        decode(wire[:cut])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=any_message, data=st.data())
def test_flipped_bytes_decode_or_raise_decode_error(message, data) -> None:
    wire = bytearray(encode(message))
    pos = data.draw(st.integers(min_value=0, max_value=len(wire) - 1))
    wire[pos] ^= data.draw(st.integers(min_value=1, max_value=255))
    try:
        decode(bytes(wire))
    except DecodeError:
        pass


def _packed(**body) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


GOOD = Seed(id=problem_id("p"), problem="p", answer="1").model_dump()


@pytest.mark.parametrize(
    "wire, reason",
    [
        (b"", "not msgpack"),
        (b"\xc1", "not msgpack"),
        (_packed(**GOOD, version=1), "missing or non-string 'schema'"),
        (msgpack.packb([1, 2, 3]), "not a msgpack map"),
        (_packed(**GOOD, schema="sparq.nope", version=1), "unknown schema 'sparq.nope'"),
        (_packed(**GOOD, schema="sparq.seed"), "missing or non-integer 'version'"),
        (_packed(**GOOD, schema="sparq.seed", version="1"), "missing or non-integer 'version'"),
        (_packed(**GOOD, schema="sparq.seed", version=3), "unsupported version 3"),
        (_packed(**GOOD, schema="sparq.seed", version=0), "unsupported version 0"),
        (_packed(**{**GOOD, "line": "x"}, schema="sparq.seed", version=2), "field line:"),
        (_packed(**{**GOOD, "line": -1}, schema="sparq.seed", version=2), "field line:"),
        (_packed(**{**GOOD, "line": -1}, schema="sparq.seed", version=1), "field line:"),
        (_packed(**{**GOOD, "id": "a", "line": "x"}, schema="sparq.seed", version=2), "field line:"),
        (_packed(**{k: v for k, v in GOOD.items() if k != "problem"}, schema="sparq.seed", version=2), "field problem: Field required"),
        (msgpack.packb({1: "int key"}), "not msgpack"),
        (b"\x91" * 100_000, "not msgpack"),
    ],
)
def test_bad_messages_name_the_problem(wire: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode(wire)
    assert reason in str(err.value)
    assert err.value.retriable is False


def test_expect_rejects_other_types() -> None:
    wire = encode(Seed(id=problem_id("p"), problem="p", answer="1"))
    with pytest.raises(DecodeError, match="schema 'sparq.seed' where sparq.candidate was expected"):
        decode(wire, expect=Candidate)


def test_decode_rejects_non_bytes_and_oversized() -> None:
    with pytest.raises(DecodeError, match="expected bytes"):
        decode("text")  # type: ignore[arg-type]
    with pytest.raises(DecodeError, match="exceeds"):
        decode(b"\x00" * (16 * 1024 * 1024 + 1))


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.SCHEMA)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_value_that_breaks_a_rule_is_an_invalid_value_naming_its_field(cls, data) -> None:
    """Every value rule of every type: a well-formed body that breaks one is refused as InvalidValue, naming the field."""
    field, wire = data.draw(invalid_bodies_of(cls))
    with pytest.raises(InvalidValue) as err:
        decode(wire)
    assert f"field {field}" in str(err.value)
    assert err.value.retriable is False


def test_the_records_the_outside_client_slipped_through_are_refused() -> None:
    """The hostile records of the issue: NaN novelty, a quality its solve-rate contradicts, n_correct > k, negative steps."""
    text = "What is 2 + 2?"
    good = msgpack.unpackb(encode(SolveResult(id=problem_id(text), problem=text, solution="4", answer="4", k=4,
                                              rollouts_used=4, n_correct=2, solve_rate=0.5, quality=0.5)), raw=False)  # fmt: skip
    for field, value in [("novelty", float("nan")), ("novelty", float("inf")), ("quality", 0.9), ("solve_rate", 7.5),
                         ("solve_rate", -3.5), ("n_correct", 9), ("step", -2), ("model_version", -1), ("variant", "evil")]:  # fmt: skip
        with pytest.raises(InvalidValue, match=f"field {field}"):
            decode(_packed(**{**good, field: value}))


def test_version_1_records_are_read_under_the_version_2_rules() -> None:
    body = {**GOOD, "schema": "sparq.seed", "version": 1}
    assert decode(_packed(**body)).id == GOOD["id"]
    with pytest.raises(InvalidValue, match="field line"):
        decode(_packed(**{**body, "line": -5}))
