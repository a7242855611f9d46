"""Fault drills: disturb a scripted run (kill -9, broker restart, poison, stall, resume) and compare with its reference.

One module per drill (``kill``, ``broker``, ``poison``, ``stall``, ``resume``, ``hostile``),
``runner`` to run them on Tansu and Apache Kafka into ``DIR/drills.json``, ``table`` to
render that file into docs/reliability.md, ``cli`` for ``sparq drill``.
"""

__all__ = ["broker", "common", "hostile", "kill", "poison", "resume", "runner", "stall", "table"]
