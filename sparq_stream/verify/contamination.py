"""Text-overlap contamination: word n-grams shared with held-out sets, and copies of the prompt's worked example.

Decontamination as in the GPT-3 and Llama reports: a generated problem that shares any word
13-gram with a problem of an evaluation set (GSM8K test, MATH500) is contaminated, whatever
its embedding says. Words are lower-cased runs of letters and digits, so punctuation, case
and LaTeX spacing do not hide an overlap. A text shorter than n words is one whole gram, so
a short held-out problem copied verbatim is still caught (short near-copies are left to the
embedding check).

The mutation prompt carries a worked example (parent and child); a small model often writes
that example back instead of mutating its parent. :func:`prompt_examples` reads the example
problems out of a template, and a :class:`NgramIndex` built over them with a shorter n
(8 words by default) recognises children that repeat them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sparq_stream.errors import ConfigError
from sparq_stream.prompts import PromptTemplate

__all__ = ["NgramIndex", "NgramMatch", "prompt_examples", "word_ngrams", "words"]

log = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z0-9]+")
_PROBLEM_TAG = re.compile(r"<problem>(.*?)</problem>", re.DOTALL | re.IGNORECASE)


def words(text: str) -> list[str]:
    """The lower-cased words (runs of letters and digits) of ``text``."""
    return _WORD.findall(text.lower())


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The word n-grams of ``text`` (a text of fewer than ``n`` words gives itself as one gram)."""
    tokens = words(text)
    if not tokens:
        return set()
    if len(tokens) < n:
        return {tuple(tokens)}
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


@dataclass(frozen=True)
class NgramMatch:
    """The first indexed document a text shares a gram with."""

    source: str
    doc_id: str
    gram: str


class NgramIndex:
    """A set of word n-grams of reference documents (held-out problems), each mapped to its first document."""

    def __init__(self, n: int = 13) -> None:
        """An empty index of word ``n``-grams."""
        if n < 1:
            raise ConfigError(f"n-gram length must be >= 1, got {n}")
        self.n = n
        self._grams: dict[int, int] = {}
        self._docs: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self._docs)

    def add(self, text: str, source: str, doc_id: str) -> None:
        """Index the n-grams of one document."""
        grams = word_ngrams(text, self.n)
        if not grams:
            return
        row = len(self._docs)
        self._docs.append((source, doc_id))
        for gram in grams:
            self._grams.setdefault(hash(gram), row)

    def match(self, text: str) -> NgramMatch | None:
        """The first indexed document sharing an n-gram with ``text``, or None."""
        for gram in word_ngrams(text, self.n):
            row = self._grams.get(hash(gram))
            if row is not None:
                source, doc_id = self._docs[row]
                return NgramMatch(source, doc_id, " ".join(gram))
        return None

    @classmethod
    def from_texts(cls, texts: Iterable[tuple[str, str, str]], n: int = 13) -> NgramIndex:
        """Build an index from (text, source, doc id) triples."""
        index = cls(n)
        for text, source, doc_id in texts:
            index.add(text, source, doc_id)
        return index

    @classmethod
    def from_files(cls, paths: Sequence[str | Path], n: int = 13) -> NgramIndex:
        """Build an index over held-out JSONL files (``problem`` or ``question`` field; the file name is the source)."""
        from sparq_stream.ids import problem_id

        index = cls(n)
        for path in map(Path, paths):
            count = 0
            try:
                with path.open("r", encoding="utf-8", errors="replace") as fh:
                    for line in fh:
                        try:
                            obj = json.loads(line) if line.strip() else None
                        except ValueError:
                            continue
                        text = obj.get("problem", obj.get("question")) if isinstance(obj, dict) else None
                        if isinstance(text, str) and text.strip():
                            index.add(text, path.name, problem_id(text.strip()))
                            count += 1
            except OSError as exc:
                raise ConfigError(f"cannot read held-out file {path}: {exc}") from None
            log.info("n-gram contamination check: %d held-out problems from %s (n=%d)", count, path, n)
        return index


def prompt_examples(template: PromptTemplate) -> list[str]:
    """The worked-example problems written into a template (turns without placeholders, inside ``<problem>`` tags)."""
    found = []
    for _role, text in template.messages:
        if re.search(r"\$\{?[A-Za-z_]", text):
            continue  # a turn with placeholders is the real request, not the example
        found.extend(m.strip() for m in _PROBLEM_TAG.findall(text) if len(words(m)) >= 3)
    return found
