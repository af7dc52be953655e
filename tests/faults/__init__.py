"""Fault-injection scenarios: real broker, real worker processes, an independent judge."""
