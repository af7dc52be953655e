"""TRANSITIONAL SHIM (restructure in progress): `seqstream broker` still registered by stream.broker."""
from stream.broker import add_cli as add_parser  # noqa: F401
