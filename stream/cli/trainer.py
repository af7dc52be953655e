"""TRANSITIONAL SHIM (restructure in progress): `seqstream trainer` still registered by stream.online."""
from stream.online import add_cli as add_parser  # noqa: F401
