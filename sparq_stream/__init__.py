"""sparq-stream: SPARQ quality-diversity problem generation as Kafka services."""

__version__ = "0.1.0"
__all__ = ["__version__"]
