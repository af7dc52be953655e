"""Streaming readers of behaviour logs, one module per format, all yielding `LogEvent`s:
`reader.read_events` (whose docstring maps every format onto click/cart/purchase), `common`
(bad rows), `dump` (our own jsonl/msgpack dumps, read and written)."""
