"""Hypothesis strategies that build any message type from its pydantic field definitions.

``messages_of`` draws valid instances: every field from its type and bounds, then the
cross-field rules of the type applied (the niche from the skills, counts that agree, a slot of
the elite's own niche or id, parallel lists of one length). ``invalid_bodies_of`` draws wire
bodies that break exactly one value rule of the type, each tagged with the field it breaks.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Callable, Union

from annotated_types import Ge, Le, MaxLen, MinLen
from hypothesis import strategies as st
from pydantic import StringConstraints, WithJsonSchema
from pydantic.fields import FieldInfo

from sparq_stream.ids import problem_id
from sparq_stream.messages import ID_PATTERN, Elite, EndMarker, Message, ModelVersion, MutatorState, NovelCandidate, SolveResult, Watermark, encode

_TEXT = st.text(max_size=40)
_SKILL = st.text(alphabet="abcdefghij klmn", min_size=1, max_size=12).map(lambda s: " ".join(s.split()) or "a")


def _metadata(tp: Any, info: FieldInfo | None) -> tuple[Any, list[Any]]:
    """The bare type and every constraint object attached to it (Annotated or the field's own)."""
    metas = list(info.metadata) if info is not None else []
    while typing.get_origin(tp) is typing.Annotated:
        tp, *extra = typing.get_args(tp)
        for meta in extra:
            metas.extend(meta.metadata if isinstance(meta, FieldInfo) else [meta])
    return tp, metas


def _bounds(metas: list[Any]) -> tuple[Any, Any, int | None, int | None, str | None]:
    lo = hi = min_len = max_len = pattern = None
    for meta in metas:
        if isinstance(meta, Ge):
            lo = meta.ge
        elif isinstance(meta, Le):
            hi = meta.le
        elif isinstance(meta, MinLen):
            min_len = meta.min_length
        elif isinstance(meta, MaxLen):
            max_len = meta.max_length
        elif isinstance(meta, StringConstraints) and meta.pattern:
            pattern = meta.pattern
        elif isinstance(meta, WithJsonSchema) and meta.json_schema and "pattern" in meta.json_schema:
            pattern = meta.json_schema["pattern"]
        elif getattr(meta, "pattern", None):
            pattern = meta.pattern
    return lo, hi, min_len, max_len, pattern


def _for_type(tp: Any, info: FieldInfo | None = None) -> st.SearchStrategy[Any]:
    tp, metas = _metadata(tp, info)
    for meta in metas:
        if isinstance(meta, WithJsonSchema) and meta.json_schema and "enum" in meta.json_schema:
            return st.sampled_from(meta.json_schema["enum"])
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return st.one_of(*(_for_type(arg) for arg in typing.get_args(tp)))
    if tp is type(None):
        return st.none()
    lo, hi, min_len, max_len, pattern = _bounds(metas)
    if tp is str:
        if pattern == ID_PATTERN:
            return _TEXT.map(problem_id)
        if pattern:
            return st.from_regex(pattern, fullmatch=True)
        return st.text(min_size=min_len or 0, max_size=40)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(min_value=int(lo) if lo is not None else -(2**63), max_value=int(hi) if hi is not None else 2**63 - 1)
    if tp is float:
        return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)
    if tp is bytes:
        return st.binary(max_size=64)
    if origin is list:
        (item,) = typing.get_args(tp)
        return st.lists(_for_type(item), max_size=max_len if max_len is not None else 5)
    if origin is dict:
        key, value = typing.get_args(tp)
        return st.dictionaries(_for_type(key), _for_type(value), max_size=5)
    raise NotImplementedError(f"no strategy for {tp!r}")


def _novel_rules(kw: dict[str, Any], skills: list[str]) -> None:
    kw["skills"] = sorted(set(skills))[:3]
    kw["niche"] = "|".join(kw["skills"]) if kw["skills"] else "(none)"


def _solved_rules(kw: dict[str, Any], draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
    k = kw["k"] = draw(st.integers(1, 64))
    early = kw["early_stopped"]
    used = kw["rollouts_used"] = draw(st.integers(0, k)) if early else k
    correct = kw["n_correct"] = draw(st.integers(0, used))
    kw["correct_rollouts"] = kw["correct_rollouts"][:correct]
    sr = kw["solve_rate"] = draw(st.floats(0.0, 1.0)) if early else correct / k
    kw["quality"] = 1.0 - sr if 0.0 < sr < 1.0 and draw(st.booleans()) else 0.0


@st.composite
def _valid(draw: Callable[[st.SearchStrategy[Any]], Any], cls: type[Message]) -> Message:
    kw = {name: draw(_for_type(info.annotation, info)) for name, info in cls.model_fields.items()}
    if kw.get("problem"):  # the wrapper's id check: the id is the hash of the text
        kw["id"] = problem_id(kw["problem"])
    if issubclass(cls, NovelCandidate):
        _novel_rules(kw, draw(st.lists(_SKILL, max_size=4)))
    if issubclass(cls, SolveResult):
        _solved_rules(kw, draw)
    if cls is Elite:
        kw["slot"] = draw(st.sampled_from([kw["niche"], f"{kw['niche']}/{kw['id']}", f"top/{kw['id']}"]))
    if cls is ModelVersion and kw["parent_version"] is not None:
        kw["number"] = max(kw["number"], 1)
        kw["parent_version"] = kw["parent_version"] % kw["number"]
    if cls is MutatorState:
        for prefix in ("queue", "credit", "wait"):
            names = [n for n in cls.model_fields if n.startswith(prefix + "_")]
            shortest = min(len(kw[n]) for n in names)
            for n in names:
                kw[n] = kw[n][:shortest]
        if kw["open_step"] is not None:
            kw["step"] = max(kw["step"], 1)
            kw["open_step"] = kw["open_step"] % kw["step"]
    if cls is EndMarker:  # covers: distinct partitions below of
        kw["covers"] = sorted({c % kw["of"] for c in kw["covers"]})
    return cls(**kw)


def messages_of(cls: type[Message]) -> st.SearchStrategy[Message]:
    """A strategy for valid instances of ``cls`` (every field drawn, defaults included, cross-field rules kept)."""
    return _valid(cls)


_NOT_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


def _breakers(cls: type[Message], body: dict[str, Any]) -> list[tuple[str, st.SearchStrategy[dict[str, Any]]]]:
    """(field, strategy of a body breaking one rule of that field) for every value rule of the type."""
    out: list[tuple[str, st.SearchStrategy[dict[str, Any]]]] = []

    def set_to(field: str, values: st.SearchStrategy[Any]) -> None:
        out.append((field, values.map(lambda v, f=field: {**body, f: v})))

    for name, info in cls.model_fields.items():
        tp, metas = _metadata(info.annotation, info)
        if typing.get_origin(tp) in (Union, types.UnionType):
            tp, metas = _metadata(next(a for a in typing.get_args(tp) if a is not type(None)), None)
        lo, hi, min_len, max_len, pattern = _bounds(metas)
        enum = next((m.json_schema["enum"] for m in metas if isinstance(m, WithJsonSchema) and "enum" in (m.json_schema or {})), None)
        if tp is float:
            set_to(name, _NOT_FINITE)
        if tp in (int, float) and lo is not None:
            set_to(name, st.integers(-(10**6), -1).map(lambda v, lo=lo: lo + v) if tp is int else st.floats(lo - 1e6, lo, exclude_max=True))
        if tp in (int, float) and hi is not None:
            set_to(name, st.integers(hi + 1, hi + 10**6) if tp is int else st.floats(hi, hi + 1e6, exclude_min=True))
        if tp is str and pattern:
            set_to(name, st.text(alphabet="XYZ-!", min_size=1, max_size=40))
        if tp is str and min_len:
            set_to(name, st.just(""))
        if enum is not None:
            set_to(name, st.text(min_size=1, max_size=20).filter(lambda v, e=enum: v not in e))
        if typing.get_origin(tp) is list and max_len is not None:
            set_to(name, st.just(["a", "b", "c", "d"]))
        if typing.get_origin(tp) is list and _bounds(_metadata(typing.get_args(tp)[0], None)[1])[4]:
            set_to(name, st.just(["not-an-id"]))
        if typing.get_origin(tp) is dict and _metadata(typing.get_args(tp)[1], None)[0] is float:
            set_to(name, _NOT_FINITE.map(lambda v: {"x": v}))
    if issubclass(cls, NovelCandidate):
        set_to("niche", st.text(min_size=1, max_size=20).filter(lambda v: v != body["niche"]))
        set_to("skills", st.sampled_from([["a|b"], ["a", "b", "c", "d"], ["(none)"]]))
    if issubclass(cls, SolveResult):
        set_to("n_correct", st.integers(body["rollouts_used"] + 1, body["rollouts_used"] + 50))
        set_to("rollouts_used", st.integers(body["k"] + 1, body["k"] + 50))
        if not body["early_stopped"]:
            # more than half a rollout away from n_correct / k (the rule's tolerance for a rate written as a rounded count)
            set_to("solve_rate", st.floats(0.0, 1.0).filter(lambda v: abs(v * body["k"] - body["n_correct"]) > 0.5 + 1e-6))
        set_to("quality", st.floats(0.01, 1.0).filter(lambda v: abs(v - (1.0 - body["solve_rate"])) > 1e-6))
    if cls is ModelVersion:
        set_to("parent_version", st.integers(body["number"], body["number"] + 10))
    if cls is MutatorState:
        out.append(("credit_*", st.just({**body, "credit_steps": list(body["credit_steps"]) + [0]})))
        set_to("open_step", st.integers(body["step"], body["step"] + 10))
    if cls is Watermark:
        set_to("offsets", st.just({"p1": 3}))
    if cls is EndMarker:
        out.append(("covers", st.just({**body, "covers": [body["of"]]})))
    return out


def invalid_bodies_of(cls: type[Message]) -> st.SearchStrategy[tuple[str, bytes]]:
    """(field, msgpack bytes) of a well-formed body of ``cls`` that breaks one value rule of that field."""
    import msgpack

    @st.composite
    def build(draw: Callable[[st.SearchStrategy[Any]], Any]) -> tuple[str, bytes]:
        body = msgpack.unpackb(encode(draw(messages_of(cls))), raw=False)
        field, breaker = draw(st.sampled_from(_breakers(cls, body)))
        return field, msgpack.packb(draw(breaker), use_bin_type=True)

    return build()

