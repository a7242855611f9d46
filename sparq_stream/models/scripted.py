"""A deterministic, programmable generation backend for exact end-to-end tests of the QD loop.

:class:`ScriptedBackend` recognises the four packaged prompts (mutation, solve,
skill-classification, skill-extraction) by matching the rendered chat against each
template, reads the problem back out of it, and answers the way a real model would
(``<problem>``/``<solution>``/``\\boxed{}``, ``<skills>`` lists, step-by-step rollouts), so
the real parsers run on its output. What it answers is set per problem by a
:class:`Script`; everything else follows deterministic default rules.

Every choice is a pure function of ``hash(script.seed, kind, problem id, index)``: the same
script and inputs give identical outputs in any batch composition, order, process or
thread. Sample ``i`` of a mutation request emits the parent's child number
``i + (params.seed or 0)`` (see :meth:`ScriptedBackend.child_for`). For a solve prompt
asked for ``n`` samples, exactly ``round(sr * n)`` samples end in ``\\boxed{<answer>}``
and the others in a different value, ``sr`` being the problem's scripted solve-rate.

Skill models (``Script.skill_model``): with ``"hash"`` (the default) a problem's skills are
a hash of its text, so a child's niche is unrelated to its parent's. With ``"inherit"``
skills are heritable: a seed (a text without a marker) gets 1..``max_skills`` skills drawn
by hash from ``skill_vocabulary``; a default child carries its parent's skill-set with at
most one random change (``drift``: replace, add or drop one skill, drawn by hash) and
writes it into its text as a marker ``[skills: a; b]`` just before its ``[variant ...]``
tag. The classification call reads the marker back (it may run in another process: the
text is all it sees) and answers those skills, restricted to the offered list. The marker
is part of the text like any other words: answers and solve-rates are drawn from the
whole text exactly as without it. Set ``skill_vocabulary`` to the classifier's vocabulary
so that what is inherited is what can be answered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sparq_stream.errors import ConfigError
from sparq_stream.ids import problem_id
from sparq_stream.models.base import Completion, GenerationResult, Prompt, SamplingParams
from sparq_stream.models.chat_format import cut_at_stop, prompt_error
from sparq_stream.prompts import MUTATION, SKILL_CLASSIFICATION, SKILL_EXTRACTION, SOLVE, VALIDITY, PromptTemplate, load_prompt

__all__ = [
    "DEFAULT_SKILLS",
    "SKILL_MODELS",
    "ChildSpec",
    "SkillDrift",
    "ProblemScript",
    "Script",
    "ScriptedBackend",
    "parse_skill_marker",
]

log = logging.getLogger(__name__)

#: Skill phrases the default skill-extraction rule draws from (already in normalised form).
DEFAULT_SKILLS: tuple[str, ...] = (
    "addition", "subtraction", "multiplication", "division", "basic arithmetic",
    "order of operation", "place value", "rounding", "estimation", "mental arithmetic",
    "fraction", "fraction addition", "fraction multiplication", "mixed number", "decimal",
    "percentage", "percentage increase", "percentage decrease", "discount", "simple interest",
    "compound interest", "profit and loss", "ratio", "proportion", "rate", "unit rate",
    "speed distance time", "work rate", "unit conversion", "time calculation", "money calculation",
    "average", "weighted average", "median", "mode", "range", "multi step reasoning",
    "linear equation", "system of linear equation", "quadratic equation", "inequality",
    "absolute value", "exponent", "square root", "radical", "polynomial", "factoring",
    "algebraic expression", "function", "linear function", "quadratic function", "exponential growth",
    "logarithm", "arithmetic sequence", "geometric sequence", "series", "recursion", "pattern recognition",
    "counting", "permutation", "combination", "probability", "conditional probability", "expected value",
    "divisibility", "prime number", "prime factorization", "greatest common divisor", "least common multiple",
    "modular arithmetic", "remainder", "digit sum", "number base", "parity", "integer",
    "perimeter", "area", "area of a triangle", "area of a circle", "volume", "surface area",
    "angle", "triangle", "right triangle", "pythagorean theorem", "similar triangle", "circle",
    "polygon", "coordinate geometry", "distance formula", "slope", "trigonometry", "vector",
    "matrix", "complex number", "set theory", "logic", "graph theory", "optimization",
    "inclusion exclusion", "pigeonhole principle", "symmetry", "scaling", "working backward",
    "table reading", "data interpretation", "variable substitution", "word problem translation",
    "comparison", "doubling and halving", "repeated addition", "grouping", "equal sharing",
)

_SUBJECTS = ("a baker", "a farmer", "a library", "a gardener", "a factory", "a cyclist", "a shop",
             "a painter", "a school", "a club", "a train", "a museum", "a chef", "a tailor")
_ACTIONS = ("sells", "buys", "makes", "collects", "paints", "plants", "packs", "repairs", "orders", "sorts")
_OBJECTS = ("apples", "tickets", "books", "tiles", "marbles", "boxes", "coins", "flowers", "cards", "bottles",
            "pencils", "chairs", "cakes", "stamps")
_PERIODS = ("day", "week", "hour", "month")
_VARIANT = re.compile(r"\s*\[variant [^\]]*\]\s*$")
_MARKER = re.compile(r"\[skills: ([^\]]*)\]")
_TRAILER = re.compile(r"\s*\[(?:variant|skills:) [^\]]*\]\s*$")
_MARKER_FORBIDDEN = ("[", "]", ";")
#: The skill models a :class:`Script` can use.
SKILL_MODELS: tuple[str, ...] = ("hash", "inherit")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s*(.+?)\s*$")
_HEX_ID = re.compile(r"^[0-9a-f]{32}$")
_CHARS_PER_TOKEN = 4
_KINDS = (MUTATION, SOLVE, SKILL_CLASSIFICATION, SKILL_EXTRACTION, VALIDITY)
#: The default validity rule: a problem is valid when it asks something (a question mark or one of these words).
_ASKS = re.compile(r"\?|\b(find|compute|calculate|determine|evaluate|solve|what|how|which)\b", re.IGNORECASE)


class ChildSpec(BaseModel):
    """One scripted mutation output: a child problem and its answer, or a verbatim ``raw`` text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    problem: str = ""
    answer: str = ""
    solution: str | None = None
    raw: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> ChildSpec:
        if self.raw is None and (not self.problem.strip() or not self.answer.strip()):
            raise ValueError("a child needs 'problem' and 'answer' (or a verbatim 'raw' output)")
        return self


class SkillDrift(BaseModel):
    """How a default child's skill-set differs from its parent's (``inherit`` skill model).

    Per child, one of: replace one skill by another, add one, drop one, or keep the set
    (the rest of the probability). An ``add`` to a full set or a ``drop`` from a single
    skill becomes a ``replace``, so the chance of a change does not depend on the set's size.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    replace: float = Field(default=0.3, ge=0.0, le=1.0)
    add: float = Field(default=0.15, ge=0.0, le=1.0)
    drop: float = Field(default=0.15, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _total(self) -> SkillDrift:
        if self.replace + self.add + self.drop > 1.0 + 1e-9:
            raise ValueError("drift probabilities (replace + add + drop) must sum to at most 1")
        return self


class ProblemScript(BaseModel):
    """What the scripted model does with one problem; unset fields follow the default rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    answer: str | None = None
    solve_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    skills: list[str] | None = None
    children: list[ChildSpec] | None = None
    valid: bool | None = None
    after_children: Literal["default", "cycle"] = "default"


class Script(BaseModel):
    """The whole programme of a :class:`ScriptedBackend`; load it from a dict, JSON or YAML."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    #: Per-problem behaviour, keyed by the problem text or its :func:`problem_id`.
    problems: dict[str, ProblemScript] = Field(default_factory=dict)
    #: Default solve-rates, drawn per problem by hash with ``solve_rate_weights`` (uniform if unset).
    solve_rates: list[float] = Field(default_factory=lambda: [0.0, 0.125, 0.25, 0.5, 0.75, 0.875, 1.0])
    solve_rate_weights: list[float] | None = None
    #: Most skills the default classification rule picks (1..3).
    max_skills: int = Field(default=3, ge=1, le=3)
    #: Phrases the default skill-extraction rule picks from (skewed towards the first ones);
    #: with ``skill_model="inherit"`` also the skills of seeds and of drift.
    skill_vocabulary: list[str] = Field(default_factory=lambda: list(DEFAULT_SKILLS))
    #: ``hash``: skills are a hash of the text; ``inherit``: a default child inherits its parent's (module docstring).
    skill_model: Literal["hash", "inherit"] = "hash"
    #: Per-child change of the inherited skill-set (``inherit`` only).
    drift: SkillDrift = Field(default_factory=SkillDrift)
    #: Words of the parent kept at the start of a default child.
    parent_words: int = Field(default=6, ge=1)
    #: Default answers are integers in [answer_min, answer_max].
    answer_min: int = 2
    answer_max: int = 999
    #: Simulated latency: per generate call, per prompt, and per generated token (seconds).
    latency_per_call_s: float = Field(default=0.0, ge=0.0)
    latency_per_request_s: float = Field(default=0.0, ge=0.0)
    latency_per_token_s: float = Field(default=0.0, ge=0.0)

    @field_validator("solve_rates")
    @classmethod
    def _rates(cls, value: list[float]) -> list[float]:
        if not value or any(not 0.0 <= r <= 1.0 for r in value):
            raise ValueError("solve_rates must be a non-empty list of values in [0, 1]")
        return value

    @field_validator("skill_vocabulary")
    @classmethod
    def _vocabulary(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("skill_vocabulary must not be empty")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Script:
        weights = self.solve_rate_weights
        if weights is not None and (len(weights) != len(self.solve_rates) or any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError("solve_rate_weights needs one non-negative weight per solve rate, not all zero")
        if self.answer_min > self.answer_max:
            raise ValueError("answer_min must be <= answer_max")
        if self.skill_model == "inherit":
            bad = [v for v in self.skill_vocabulary if any(c in v for c in _MARKER_FORBIDDEN) or not v.strip()]
            if bad:
                raise ValueError(f"with skill_model='inherit' skills may not be blank or contain '[', ']' or ';': {bad[:3]}")
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Script:
        """Validate a dict; a bad script raises ConfigError naming the field."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(f"invalid script: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> Script:
        """Load a script from a ``.json``, ``.yaml`` or ``.yml`` file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read script {path}: {exc}") from None
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml  # lazily: only YAML scripts need it

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # json.JSONDecodeError is a ValueError, yaml.YAMLError is not
            raise ConfigError(f"cannot parse script {path}: {exc}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"script {path} must hold a mapping at the top level")
        return cls.from_dict(data)


class ScriptedBackend:
    """Deterministic generation backend driven by a :class:`Script` (see the module docstring)."""

    name = "scripted"

    def __init__(
        self,
        script: Script | Mapping[str, Any] | str | Path | None = None,
        *,
        seed: int | None = None,
        model_name: str = "scripted",
        model_version: int = 0,
        prompt_dir: str | Path | None = None,
        latency_per_call_s: float | None = None,
        latency_per_request_s: float | None = None,
        latency_per_token_s: float | None = None,
    ) -> None:
        """Build from a Script, a dict, or a JSON/YAML path; keyword knobs override the script's."""
        self.script = _as_script(script)
        overrides = {
            "seed": seed,
            "latency_per_call_s": latency_per_call_s,
            "latency_per_request_s": latency_per_request_s,
            "latency_per_token_s": latency_per_token_s,
        }
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if overrides:
            self.script = Script.from_dict({**self.script.model_dump(), **overrides})
        self.model_name = model_name
        self.model_version = model_version
        self._templates: dict[str, PromptTemplate] = {kind: load_prompt(kind, prompt_dir) for kind in _KINDS}
        self._by_id: dict[str, ProblemScript] = {}
        for key, entry in self.script.problems.items():
            self._by_id[key if _HEX_ID.match(key) else problem_id(key)] = entry
        self._child_answers: dict[str, str] = {}
        for entry in self.script.problems.values():
            for child in entry.children or []:
                if child.raw is None:
                    self._child_answers.setdefault(problem_id(child.problem), child.answer)
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()

    # ------------------------------------------------------------------ the backend interface

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[GenerationResult]:
        """Return ``n`` scripted completions per prompt, in order; an unrecognised prompt carries ``error``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n must be an integer >= 1, got {n!r}")
        results = [self._one(prompt, n, params) for prompt in prompts]
        self._sleep(len(prompts), sum(c.tokens for r in results for c in r.completions))
        return results

    def close(self) -> None:
        """Nothing to release."""

    @property
    def counts(self) -> dict[str, int]:
        """Prompts served so far per kind (``mutation``, ``solve``, ..., ``unrecognised``)."""
        with self._counts_lock:
            return dict(self._counts)

    # ------------------------------------------------------------------ the rules, public for tests

    def answer_for(self, problem: str) -> str:
        """Return the answer the scripted model holds correct for ``problem``."""
        pid = problem_id(problem)
        entry = self._by_id.get(pid)
        if entry is not None and entry.answer is not None:
            return entry.answer
        if pid in self._child_answers:
            return self._child_answers[pid]
        span = self.script.answer_max - self.script.answer_min + 1
        return str(self.script.answer_min + self._hash("answer", pid) % span)

    def solve_rate_for(self, problem: str) -> float:
        """Return the scripted solve-rate of ``problem`` (explicit, or drawn by hash from ``solve_rates``)."""
        pid = problem_id(problem)
        entry = self._by_id.get(pid)
        if entry is not None and entry.solve_rate is not None:
            return entry.solve_rate
        rates = self.script.solve_rates
        weights = self.script.solve_rate_weights or [1.0] * len(rates)
        point = (self._hash("solve_rate", pid) % 1_000_000) / 1_000_000 * sum(weights)
        acc = 0.0
        for rate, weight in zip(rates, weights):
            acc += weight
            if point < acc:
                return rate
        return rates[-1]

    def correct_samples(self, problem: str, n: int) -> list[bool]:
        """Return which of ``n`` solve samples are correct: exactly ``round(sr * n)`` of them."""
        pid = problem_id(problem)
        count = round(self.solve_rate_for(problem) * n)
        order = sorted(range(n), key=lambda i: (self._hash("order", pid, i), i))
        chosen = set(order[:count])
        return [i in chosen for i in range(n)]

    def skills_for(self, problem: str, allowed: Sequence[str]) -> list[str]:
        """Return the skills the classifier answers for ``problem`` given the offered list ``allowed``.

        A scripted ``skills`` entry wins. With ``skill_model="inherit"`` the answer is the
        problem's inherited skills (:meth:`inherited_skills_for`) that are in ``allowed``,
        in vocabulary order; only when none of them is offered does the hash rule below apply.
        Otherwise: 1..``max_skills`` of ``allowed``, drawn by hash of the problem.
        """
        pid = problem_id(problem)
        entry = self._by_id.get(pid)
        if entry is not None and entry.skills is not None:
            return list(entry.skills)
        if not allowed:
            return []
        if self.script.skill_model == "inherit":
            offered = {_skill_key(a): a for a in allowed}
            kept = [offered[_skill_key(s)] for s in self.inherited_skills_for(problem) if _skill_key(s) in offered]
            if kept:
                return kept
        return self._hash_skills(pid, list(allowed))

    def inherited_skills_for(self, problem: str) -> list[str]:
        """Return the heritable skill-set of ``problem`` (``inherit`` model): its marker's, else seed skills by hash.

        Seed skills are 1..``max_skills`` of ``skill_vocabulary`` drawn by hash of the text; a
        scripted ``skills`` entry is used as is. The list is in vocabulary order.
        """
        pid = problem_id(problem)
        entry = self._by_id.get(pid)
        if entry is not None and entry.skills is not None:
            return list(entry.skills)
        marked = parse_skill_marker(problem)
        if marked is not None:
            return marked
        return self._hash_skills(pid, self.script.skill_vocabulary)

    def drifted_skills(self, parent: str, index: int) -> list[str]:
        """Return the skill-set of the parent's default child number ``index`` (``inherit`` model)."""
        vocab = self.script.skill_vocabulary
        skills = list(self.inherited_skills_for(parent))
        pid = problem_id(parent)
        drift = self.script.drift
        u = (self._hash("drift", pid, index) % 1_000_003) / 1_000_003
        if u < drift.replace:
            op = "replace"
        elif u < drift.replace + drift.add:
            op = "add"
        elif u < drift.replace + drift.add + drift.drop:
            op = "drop"
        else:
            return skills
        if op == "add" and len(skills) >= self.script.max_skills:
            op = "replace"
        if op == "drop" and len(skills) <= 1:
            op = "replace"
        fresh = [v for v in vocab if v not in skills]
        if op == "drop":
            del skills[self._hash("drift-drop", pid, index) % len(skills)]
        elif fresh:
            if op == "replace" and skills:
                del skills[self._hash("drift-out", pid, index) % len(skills)]
            skills.append(fresh[self._hash("drift-in", pid, index) % len(fresh)])
        order = {v: i for i, v in enumerate(vocab)}
        return sorted(skills, key=lambda s: (order.get(s, len(order)), s))

    def extracted_skills_for(self, problem: str) -> list[str]:
        """Return the 1-3 skill phrases the extraction prompt answers for ``problem``."""
        pid = problem_id(problem)
        entry = self._by_id.get(pid)
        if entry is not None and entry.skills is not None:
            return list(entry.skills)
        vocab = self.script.skill_vocabulary
        k = 1 + self._hash("k-extract", pid) % 3
        found: list[str] = []
        for j in range(4 * k):
            u = (self._hash("extract", pid, j) % 1_000_003) / 1_000_003
            name = vocab[min(len(vocab) - 1, int(len(vocab) * u * u))]  # u^2: frequent skills exist
            if name not in found:
                found.append(name)
            if len(found) == k:
                break
        return found

    def child_for(self, parent: str, index: int) -> ChildSpec:
        """Return the child the mutation prompt emits for ``parent`` at emission index ``index``.

        Sample ``i`` of a mutation request has emission index ``i + (params.seed or 0)``, so a
        caller that wants new children of the same parent in a later round varies the seed.
        Scripted ``children`` are emitted in order; past their end the default rule (or ``cycle``) applies.
        """
        entry = self._by_id.get(problem_id(parent))
        children = entry.children if entry is not None else None
        if children:
            if index < len(children):
                return children[index]
            if entry is not None and entry.after_children == "cycle":
                return children[index % len(children)]
        return self._default_child(parent, index)

    # ------------------------------------------------------------------ internals

    def _default_child(self, parent: str, index: int) -> ChildSpec:
        base = parent
        trailer = _TRAILER if self.script.skill_model == "inherit" else _VARIANT
        while trailer.search(base):
            base = trailer.sub("", base)
        words = base.split()[: self.script.parent_words]
        pid = problem_id(parent)
        h = self._hash("child", pid, index)
        subject = _SUBJECTS[h % len(_SUBJECTS)]
        action = _ACTIONS[(h >> 8) % len(_ACTIONS)]
        thing = _OBJECTS[(h >> 16) % len(_OBJECTS)]
        period = _PERIODS[(h >> 24) % len(_PERIODS)]
        a, b = 2 + (h >> 32) % 18, 2 + (h >> 40) % 9
        tag = f"{self._hash('tag', pid) % 16**6:06x}-{index}"
        marker = ""
        if self.script.skill_model == "inherit":
            marker = f"[skills: {'; '.join(self.drifted_skills(parent, index))}] "
        problem = (
            f"{' '.join(words)} ... Then {subject} {action} {a} {thing} every {period} "
            f"for {b} {period}s. How many {thing} is that in total? {marker}[variant {tag}]"
        )
        return ChildSpec(problem=problem, answer=self.answer_for(problem))

    def _hash_skills(self, pid: str, allowed: Sequence[str]) -> list[str]:
        if not allowed:
            return []
        k = min(len(allowed), 1 + self._hash("k", pid) % self.script.max_skills)
        ranked = sorted(range(len(allowed)), key=lambda i: (self._hash("skill", pid, allowed[i]), i))
        return [allowed[i] for i in sorted(ranked[:k])]

    def _one(self, prompt: Prompt, n: int, params: SamplingParams) -> GenerationResult:
        invalid = prompt_error(prompt)
        if invalid:
            self._count("invalid")
            return GenerationResult(error=f"invalid prompt: {invalid}")
        for kind, template in self._templates.items():
            fields = template.match(prompt)
            if fields is not None:
                break
        else:
            self._count("unrecognised")
            log.debug("unrecognised prompt: %.80r", prompt[-1].get("content"))
            allowed = ", ".join(t.ref for t in self._templates.values())
            return GenerationResult(error=f"scripted backend: unrecognised prompt (it answers only {allowed})")
        self._count(kind)
        problem = fields["problem"]
        if kind == SOLVE:
            flags = self.correct_samples(problem, n)
            texts = [self._rollout(problem, i, flags[i]) for i in range(n)]
        elif kind == MUTATION:
            texts = [_mutation_text(self.child_for(problem, i + (params.seed or 0))) for i in range(n)]
        elif kind == SKILL_CLASSIFICATION:
            allowed = [m.group(1) for m in map(_NUMBERED.match, fields["skills"].splitlines()) if m]
            texts = [_skills_text(self.skills_for(problem, allowed))] * n
        elif kind == VALIDITY:
            texts = [self._verdict_text(problem)] * n
        else:
            texts = [_skills_text(self.extracted_skills_for(problem))] * n
        prompt_tokens = sum(_tokens(t["content"]) for t in prompt)
        return GenerationResult(completions=[_finish(t, params) for t in texts], prompt_tokens=prompt_tokens)

    def is_valid(self, problem: str) -> bool:
        """The verifier's verdict: the script's ``valid`` when set, else whether the problem asks something."""
        spec = self._by_id.get(problem_id(problem))
        if spec is not None and spec.valid is not None:
            return spec.valid
        return bool(_ASKS.search(problem))

    def _verdict_text(self, problem: str) -> str:
        if self.is_valid(problem):
            return "<verdict>valid</verdict> The problem gives every quantity it needs and asks for one value."
        return "<verdict>invalid</verdict> The problem does not ask for anything, so it has no single answer."

    def _rollout(self, problem: str, index: int, correct: bool) -> str:
        pid = problem_id(problem)
        answer = self.answer_for(problem)
        final = answer if correct else self._wrong_answer(pid, answer, index)
        h = self._hash("rollout", pid, index)
        opening = ("Let's solve this step by step.", "We work through the problem carefully.", "Let me think step by step.")
        check = ("Checking the arithmetic once more confirms it.", "This agrees with every condition.", "So that is the result.")
        return (
            f"{opening[h % 3]}\n"
            f"Step 1: The problem asks: {' '.join(problem.split()[:12])} ...\n"
            "Step 2: We write down the quantities and how they are related.\n"
            f"Step 3: Combining them gives {final}. {check[(h >> 8) % 3]}\n"
            f"The final answer is \\boxed{{{final}}}."
        )

    def _wrong_answer(self, pid: str, answer: str, index: int) -> str:
        shift = 1 + self._hash("wrong", pid, index) % 9
        try:
            value = int(answer.strip())
        except ValueError:
            return f"{answer.strip()} + {shift}"
        return str(value + shift)

    def _count(self, kind: str) -> None:
        with self._counts_lock:
            self._counts[kind] += 1

    def _hash(self, *parts: object) -> int:
        text = "\x1f".join(str(p) for p in (self.script.seed, *parts))
        return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")

    def _sleep(self, prompts: int, tokens: int) -> None:
        s = self.script
        delay = s.latency_per_call_s + s.latency_per_request_s * prompts + s.latency_per_token_s * tokens
        if delay > 0:
            time.sleep(delay)  # releases the GIL, like waiting on a remote model


def _as_script(script: Script | Mapping[str, Any] | str | Path | None) -> Script:
    if script is None:
        return Script()
    if isinstance(script, Script):
        return script
    if isinstance(script, Mapping):
        return Script.from_dict(script)
    if isinstance(script, (str, Path)):
        return Script.from_file(script)
    raise ConfigError(f"script must be a Script, a dict or a file path, got {type(script).__name__}")


def parse_skill_marker(problem: str) -> list[str] | None:
    """Return the skills of the last ``[skills: a; b]`` marker in ``problem``, or None when it has none."""
    found = _MARKER.findall(problem)
    if not found:
        return None
    return [part.strip() for part in found[-1].split(";") if part.strip()]


def _skill_key(skill: str) -> str:
    return " ".join(skill.lower().split())


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / _CHARS_PER_TOKEN)) if text else 0


def _finish(text: str, params: SamplingParams) -> Completion:
    text, stopped = cut_at_stop(text, params.stop)
    if _tokens(text) > params.max_tokens:
        return Completion(text=text[: params.max_tokens * _CHARS_PER_TOKEN], tokens=params.max_tokens, finish_reason="length")
    return Completion(text=text, tokens=_tokens(text), finish_reason="stop")


def _mutation_text(child: ChildSpec) -> str:
    if child.raw is not None:
        return child.raw
    solution = child.solution or (
        "We read off the quantities in the problem and combine them step by step.\n"
        f"Putting the steps together gives {child.answer}.\n"
        f"The answer is \\boxed{{{child.answer}}}."
    )
    return f"<problem>\n{child.problem}\n</problem>\n<solution>\n{solution}\n</solution>"


def _skills_text(skills: Sequence[str]) -> str:
    return "<skills>\n" + "".join(f"{s}\n" for s in skills) + "</skills>"
