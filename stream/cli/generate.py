"""TRANSITIONAL SHIM (restructure in progress): `seqstream generate` still registered by stream.generate_cli."""
from stream.generate_cli import add_cli as add_parser  # noqa: F401
