"""Hypothesis strategies that build any message type from its pydantic field definitions."""

from __future__ import annotations

import types
import typing
from typing import Any, Union

from annotated_types import Ge, Le
from hypothesis import strategies as st
from pydantic import WithJsonSchema
from pydantic.fields import FieldInfo

from sparq_stream.messages import Message

_TEXT = st.text(max_size=40)


def _bounded(info: FieldInfo) -> tuple[float | None, float | None]:
    lo = hi = None
    for meta in info.metadata:
        if isinstance(meta, Ge):
            lo = meta.ge
        elif isinstance(meta, Le):
            hi = meta.le
    return lo, hi


def _for_type(tp: Any, info: FieldInfo | None = None) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    for meta in info.metadata if info is not None else ():
        if isinstance(meta, WithJsonSchema) and meta.json_schema and "enum" in meta.json_schema:
            return st.sampled_from(meta.json_schema["enum"])
    if origin in (Union, types.UnionType):
        return st.one_of(*(_for_type(arg) for arg in typing.get_args(tp)))
    if tp is type(None):
        return st.none()
    lo, hi = _bounded(info) if info is not None else (None, None)
    if tp is str:
        return _TEXT
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(min_value=int(lo) if lo is not None else -(2**63), max_value=int(hi) if hi is not None else 2**63 - 1)
    if tp is float:
        return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=lo is None and hi is None)
    if tp is bytes:
        return st.binary(max_size=64)
    if origin is list:
        (item,) = typing.get_args(tp)
        return st.lists(_for_type(item), max_size=5)
    if origin is dict:
        key, value = typing.get_args(tp)
        return st.dictionaries(_for_type(key), _for_type(value), max_size=5)
    raise NotImplementedError(f"no strategy for {tp!r}")


def messages_of(cls: type[Message]) -> st.SearchStrategy[Message]:
    """A strategy for valid instances of ``cls`` (every field drawn, defaults included)."""
    fields = {name: _for_type(info.annotation, info) for name, info in cls.model_fields.items()}
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**kw))
