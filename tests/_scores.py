"""Consistent solver counts for test fixtures: the cross-field rules of ``sparq.solved`` hold."""

from __future__ import annotations

from typing import Any

__all__ = ["scores"]


def scores(quality: float, k: int = 16, solve_rate: float | None = None) -> dict[str, Any]:
    """k, rollouts_used, n_correct, solve_rate, quality and early_stopped that agree with each other.

    The solve-rate is ``1 - quality`` for a kept problem (else ``solve_rate``, default 1.0: too easy);
    a rate that is no whole count of ``k`` is marked as an early stop's estimate, as the solver does.
    """
    rate = 1.0 - quality if quality > 0 else (1.0 if solve_rate is None else solve_rate)
    correct = round(rate * k)
    exact = abs(correct / k - rate) < 1e-9
    return dict(k=k, rollouts_used=k, n_correct=correct, solve_rate=rate, quality=quality, early_stopped=not exact)
