"""Where the Kafka cluster is: the one bootstrap resolver every command and the worker use.

Order: an explicit `--broker host:port`, else `SEQSTREAM_BROKER`, else the embedded broker on
this machine (`seqstream broker start`), started on demand where the caller allows it.
"""
from __future__ import annotations

import os

from stream.config import ConfigError

BROKER_ENV = "SEQSTREAM_BROKER"


def _checked(address: str, source: str) -> str:
    address = address.strip().removeprefix("kafka://")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{source}={address!r} must be host:port")
    return address


def explicit_bootstrap(explicit: str | None = None) -> str:
    """The broker the user named (flag, then environment), or "" for the embedded one."""
    if explicit and explicit.strip():
        return _checked(explicit, "--broker")
    env = os.environ.get(BROKER_ENV, "")
    if env.strip():
        return _checked(env, BROKER_ENV)
    return ""


def resolve_bootstrap(explicit: str | None = None, start_embedded: bool = True,
                      timeout_s: float = 60.0) -> str:
    """host:port of the cluster to talk to. Nothing is started when a broker is named."""
    named = explicit_bootstrap(explicit)
    if named:
        return named
    # the embedded broker is optional here
    from stream.broker.embedded import EmbeddedBroker
    from stream.broker.install import BrokerError

    broker = EmbeddedBroker()
    if start_embedded:
        try:
            broker.start(timeout_s=timeout_s)
        except BrokerError as exc:  # its first line says why
            raise ConfigError(f"embedded broker: {str(exc).splitlines()[0]}") from None
    return broker.bootstrap
