"""The embedded Kafka broker for local runs and tests: `install` (the jars from Maven Central,
Java), `process` (ports, pids, the readiness probe), `embedded` (EmbeddedBroker: start, stop,
status). Where a command finds its cluster is stream/kafka.py's business, not this package's."""
