"""TRANSITIONAL SHIM (restructure in progress): `seqstream replay` still registered by stream.replay."""
from stream.replay import add_cli as add_parser  # noqa: F401
