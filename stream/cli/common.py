"""The small base every command module builds on: the parser class, the flags all commands
share, and Settings from flags + environment."""
from __future__ import annotations

import argparse
from typing import NoReturn

from stream.config import Settings

# Settings fields a command's flags may override (argparse dest == field name).
SETTING_FLAGS = ("prefix", "broker", "app_id", "data_dir", "model", "device", "batch_max",
                 "batch_wait_ms", "batch_idle_ms", "producer_linger_ms", "top_k", "ring", "processing_guarantee", "web_port", "log_level",
                 "allowed_lateness_ms", "order_grace_ms", "churn_inactivity_ms",
                 "churn_risk_threshold", "churn_sweep_s", "session_timeout_s", "anomaly_alerts", "online", "web_host",
                 "interests_half_life_ms", "interests_blend", "profiles_threshold",
                 "security_protocol", "sasl_mechanism", "sasl_username", "sasl_password_file",
                 "ssl_cafile", "ssl_certfile", "ssl_keyfile", "retrieval")


class OneLineParser(argparse.ArgumentParser):
    """A bad argument gets one line that says what is wrong, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see: {self.prog} --help)\n")


def add_common(p: argparse.ArgumentParser) -> None:
    """--prefix, --broker and the secured-cluster flags: every command that talks to Kafka takes
    them. The SASL password has no flag (it would show in `ps`): SEQSTREAM_SASL_PASSWORD or
    --sasl-password-file."""
    p.add_argument("--prefix", default=None,
                   help="prepended verbatim to every topic name (env SEQSTREAM_PREFIX)")
    p.add_argument("--broker", default=None,
                   help="bootstrap host:port of an existing cluster (env SEQSTREAM_BROKER); "
                        "default: the embedded broker")
    g = p.add_argument_group("secured clusters (env SEQSTREAM_SECURITY_PROTOCOL, SEQSTREAM_SASL_*, SEQSTREAM_SSL_*)")
    g.add_argument("--security-protocol", default=None,
                   choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
    g.add_argument("--sasl-mechanism", default=None, choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
    g.add_argument("--sasl-username", default=None)
    g.add_argument("--sasl-password-file", default=None,
                   help="file holding the SASL password (else env SEQSTREAM_SASL_PASSWORD)")
    g.add_argument("--ssl-cafile", default=None, help="CA bundle to verify the brokers")
    g.add_argument("--ssl-certfile", default=None, help="client certificate (mutual TLS)")
    g.add_argument("--ssl-keyfile", default=None, help="client key (mutual TLS)")


def settings_from(args: argparse.Namespace) -> Settings:
    """Defaults, then SEQSTREAM_* environment, then the flags given."""
    overrides = {k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k, None) is not None}
    return Settings.from_env(**overrides).validate()
