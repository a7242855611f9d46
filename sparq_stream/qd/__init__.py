"""Quality-diversity logic, pure and broker-free: quality, early stopping, selection
policies C, update policies U and the working set W, the archive log A, run statistics and
the skill vocabulary; the descriptor (:mod:`sparq_stream.descriptors`, which the messages
validate with) is handed on here too."""

from sparq_stream.qd.archive_log import ArchiveLog, dedupe_by_id, iter_archive, read_archive, read_table
from sparq_stream.descriptors import EMPTY_NICHE, MAX_SKILLS, DescriptorError, niche_key, niche_of, parse_niche
from sparq_stream.qd.early_stop import (
    ExactStop,
    NeverStop,
    PredictiveStop,
    StopDecision,
    exact_decision,
    make_stop_rule,
    simulate_early_stop,
)
from sparq_stream.qd.quality import T_HIGH, T_LOW, Thresholds, keep_range, quality, quality_from_counts, solve_rate
from sparq_stream.qd.selection import DiverseSelection, UniformSelection, make_rng, make_selection
from sparq_stream.qd.stats import coverage, coverage_by_count, coverage_over_steps, qd_score, sr_histogram, summary, yield_rate
from sparq_stream.qd.update import DEFAULT_NICHE_CAP, DEFAULT_TOP_CAP, NicheCapUpdate, StaticUpdate, TopTUpdate, Update
from sparq_stream.qd.vocabulary import Vocabulary, build_vocabulary, normalise_skill, parse_skill_answer
from sparq_stream.qd.working_set import VARIANTS, WorkingSet, make_working_set, variant_spec

__all__ = [
    "ArchiveLog",
    "dedupe_by_id",
    "iter_archive",
    "read_archive",
    "read_table",
    "EMPTY_NICHE",
    "MAX_SKILLS",
    "DescriptorError",
    "niche_key",
    "niche_of",
    "parse_niche",
    "ExactStop",
    "NeverStop",
    "PredictiveStop",
    "StopDecision",
    "exact_decision",
    "make_stop_rule",
    "simulate_early_stop",
    "T_HIGH",
    "T_LOW",
    "Thresholds",
    "keep_range",
    "quality",
    "quality_from_counts",
    "solve_rate",
    "DiverseSelection",
    "UniformSelection",
    "make_rng",
    "make_selection",
    "coverage",
    "coverage_by_count",
    "coverage_over_steps",
    "qd_score",
    "sr_histogram",
    "summary",
    "yield_rate",
    "DEFAULT_NICHE_CAP",
    "DEFAULT_TOP_CAP",
    "NicheCapUpdate",
    "StaticUpdate",
    "TopTUpdate",
    "Update",
    "Vocabulary",
    "build_vocabulary",
    "normalise_skill",
    "parse_skill_answer",
    "VARIANTS",
    "WorkingSet",
    "make_working_set",
    "variant_spec",
]
