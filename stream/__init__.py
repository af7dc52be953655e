"""Kafka and Faust wiring for seqstream: thin code around the pure functions in `models`."""
