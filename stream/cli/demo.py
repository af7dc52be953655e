"""TRANSITIONAL SHIM (restructure in progress): `seqstream demo` still registered by stream.demo."""
from stream.demo import add_cli as add_parser  # noqa: F401
