"""Imported by the checker forkserver: loads sympy/math-verify and warms them up once.

Every worker forked from that server then starts with parsers built and caches filled.
"""

from __future__ import annotations

from sparq_stream.verify.symbolic import warm_up

__all__: list[str] = []

warm_up()
