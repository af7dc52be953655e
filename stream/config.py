"""Settings for a seqstream process: defaults, then SEQSTREAM_* environment, then flags.

SEQSTREAM_<FIELD> is read here for every field, online learning's SEQSTREAM_ONLINE_* included
(stream/online/settings.py takes them from Settings); SEQSTREAM_BROKER is left to the bootstrap
resolver (stream/kafka.py), its one reader.
"""
from __future__ import annotations

import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from models.schema import ACTIONS

DEFAULT_CACHE = Path(os.environ.get("SEQSTREAM_CACHE", Path.home() / ".cache" / "seqstream"))


class ConfigError(ValueError):
    """A bad setting: the message is one line that says what is wrong."""


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_ENV_ELSEWHERE = ("broker",)  # SEQSTREAM_BROKER: stream/kafka.py


def _plain_type(hint: typing.Any) -> type:
    """`int | None` -> int: the type an environment string is converted to."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


@dataclass
class Settings:
    broker: str = ""  # host:port; empty means the embedded broker
    prefix: str = ""  # prepended verbatim to every topic name
    app_id: str = "seqstream"  # faust app id and consumer group
    data_dir: Path = field(default_factory=lambda: DEFAULT_CACHE / "worker")
    model: str = ""  # checkpoint path; empty means a fresh untrained model
    device: str = "auto"  # auto|cpu|cuda
    batch_max: int = 512  # micro-batch: at most this many events...
    batch_wait_ms: int = 20  # ...or this long after the first one...
    batch_idle_ms: int = 1  # ...or once nothing new came for this long (stream/worker/batching.py)
    producer_linger_ms: int = 5  # outputs and changelog: batch sends this long (latency vs requests)
    top_k: int = 20
    # retrieval (issue 23): how the explore path finds its top-k. exact: score every item;
    # ann: an HNSW index over the item table, built when a model version is loaded;
    # auto: ann on the CPU from models.retrieval.AUTO_ANN_MIN_ITEMS (100k) items, else exact
    retrieval: str = "auto"
    ring: int = 0  # L: events kept per user; 0 = the length the model was trained with
    max_value_bytes: int = 64 * 1024
    allowed_lateness_ms: int = 60_000  # the event-time clock trails the newest event by this
    # reorder buffer: also wait for a fetch this much newer than the event's before treating the
    # other input topics as caught up (covers a producer's still-in-flight records; replays)
    order_grace_ms: int = 0
    churn_inactivity_ms: int = 2 * 24 * 3600 * 1000  # alert after this much event-time silence
    churn_risk_threshold: float = 0.0  # ...when the last churn risk was at least this (0: any)
    churn_sweep_s: float = 5.0  # how often (wall time) the sweep looks for due users
    # a worker that stops heartbeating (kill -9, a frozen host) loses its partitions after this
    # long: it bounds recovery time (RELIABILITY.md); heartbeats run in the consumer's own thread
    session_timeout_s: float = 10.0
    anomaly_alerts: str = "1"  # "0": no abnormal-behaviour alerts (models/anomaly.py defaults)
    # interest profiles (models/interests.py): category counts halve per this much event time,
    # the model's category probabilities get this share of each weight, and a user's profile is
    # republished on `profiles` when some category's weight moved by more than this
    interests_half_life_ms: int = 3 * 24 * 3600 * 1000
    interests_blend: float = 0.3
    profiles_threshold: float = 0.2
    processing_guarantee: str = "at_least_once"
    web_port: int = 0  # 0: faust's web server off (metrics, health, dashboard)
    web_host: str = "127.0.0.1"  # bind address of the web server; non-local needs web_token for the feed
    web_token: str = field(default="", repr=False)  # bearer token of the dashboard's feed (SEQSTREAM_WEB_TOKEN)
    # secured clusters: passed to every Kafka client (worker, trainer, replay, CLI)
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str = "PLAIN"  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)  # or sasl_password_file; never logged
    sasl_password_file: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    online: str = "1"  # "0": no online learning (no sample capture, no trainer; still follows versions)
    # online learning (stream/online/settings.py): None = OnlineSettings' default
    online_trainer: str | None = None  # worker | external (`seqstream trainer`)
    online_every_n: int | None = None
    online_every_s: float | None = None
    online_min_samples: int | None = None
    online_lr: float | None = None
    online_margin: float | None = None
    online_min_eval: int | None = None
    online_replay: int | None = None
    online_max_steps: int | None = None
    online_keep_versions: int | None = None
    torch_threads: int = 0  # 0: half the cores (at most 4): scoring and the trainer each get a thread
    rocksdb_block_cache_mb: int = 32
    log_level: str = "info"

    # -- topic names -------------------------------------------------------------------------
    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    @property
    def input_topics(self) -> list[str]:
        return [self.topic(a) for a in ACTIONS]

    @property
    def predictions_topic(self) -> str:
        return self.topic("predictions")

    @property
    def dead_letter_topic(self) -> str:
        return self.topic("dead-letter")

    @property
    def churn_alerts_topic(self) -> str:
        return self.topic("churn-alerts")

    @property
    def anomalies_topic(self) -> str:
        return self.topic("anomalies")

    @property
    def churn_commands_topic(self) -> str:
        return self.topic("churn-commands")

    @property
    def profiles_topic(self) -> str:
        return self.topic("profiles")

    @property
    def model_updates_topic(self) -> str:
        return self.topic("model-updates")

    @property
    def state_table(self) -> str:
        return "user-state"

    @property
    def state_changelog_topic(self) -> str:
        # faust names a table's changelog "<app id>-<table>-changelog" (not prefixed by us).
        return f"{self.app_id}-{self.state_table}-changelog"

    def validate(self) -> "Settings":
        if not 6.0 <= self.session_timeout_s <= 300.0:  # Kafka's default group.min/max.session.timeout.ms
            raise ConfigError(f"session timeout must be 6..300 s, got {self.session_timeout_s:g}")
        if self.batch_max < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_max}")
        if self.batch_wait_ms < 1:
            raise ConfigError(f"batch wait must be at least 1 ms, got {self.batch_wait_ms}")
        if not 0 <= self.producer_linger_ms <= 1000:
            raise ConfigError(f"producer linger must be 0-1000 ms, got {self.producer_linger_ms}")
        if not 1 <= self.batch_idle_ms <= self.batch_wait_ms:
            raise ConfigError(f"batch idle must be between 1 ms and the batch wait "
                              f"({self.batch_wait_ms} ms), got {self.batch_idle_ms}")
        if not 1 <= self.top_k <= 1000:
            raise ConfigError(f"top-k must be in 1..1000, got {self.top_k}")
        if not 0 <= self.ring <= 1000:
            raise ConfigError(f"ring length must be in 0..1000 (0: the model's), got {self.ring}")
        if self.retrieval not in ("exact", "ann", "auto"):  # retrieval (issue 23)
            raise ConfigError(f"retrieval must be exact, ann or auto, got {self.retrieval!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.processing_guarantee not in ("at_least_once", "exactly_once"):
            raise ConfigError("processing guarantee must be at_least_once or exactly_once, "
                              f"got {self.processing_guarantee!r}")
        if not 0.0 <= self.churn_risk_threshold <= 1.0:
            raise ConfigError(f"churn risk threshold must be in 0..1, got {self.churn_risk_threshold}")
        if self.interests_half_life_ms < 1:
            raise ConfigError(f"interests half-life must be at least 1 ms, got {self.interests_half_life_ms}")
        if not 0.0 <= self.interests_blend <= 1.0:
            raise ConfigError(f"interests blend must be in 0..1, got {self.interests_blend}")
        if not 0.0 <= self.profiles_threshold <= 1.0:
            raise ConfigError(f"profiles threshold must be in 0..1, got {self.profiles_threshold}")
        if self.order_grace_ms < 0:
            raise ConfigError(f"order grace must not be negative, got {self.order_grace_ms}")
        if self.churn_inactivity_ms < 1 or self.allowed_lateness_ms < 0:
            raise ConfigError("churn inactivity must be positive and allowed lateness not negative")
        if self.model and not Path(self.model).is_file():
            raise ConfigError(f"model checkpoint not found: {self.model}")
        if any(c.isspace() for c in self.prefix) or any(c.isspace() for c in self.app_id):
            raise ConfigError("prefix and app id must not contain spaces")
        if not self.app_id:
            raise ConfigError("app id must not be empty")
        if not 0 <= self.web_port <= 65535:
            raise ConfigError(f"web port must be in 0..65535 (0: off), got {self.web_port}")
        if not self.web_host.strip():
            raise ConfigError("web host must not be empty")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(f"security protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, "
                              f"got {self.security_protocol!r}")
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise ConfigError(f"SASL mechanism must be one of {', '.join(SASL_MECHANISMS)}, "
                              f"got {self.sasl_mechanism!r}")
        for name in ("sasl_password_file", "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"{name.replace('_', ' ')} not found: {path}")
        return self

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> "Settings":
        """SEQSTREAM_<FIELD> for every field (e.g. SEQSTREAM_BATCH_MAX=256), then overrides.

        `broker` is not read here: an empty one means "ask stream.kafka.resolve_bootstrap", which
        reads SEQSTREAM_BROKER itself."""
        env = os.environ if env is None else env
        values: dict = {}
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name in _ENV_ELSEWHERE:
                continue
            raw = env.get(f"SEQSTREAM_{f.name.upper()}")
            if raw is None:
                continue
            kind = _plain_type(hints[f.name])
            if raw == "" and kind is not hints[f.name]:
                continue  # an optional setting left empty keeps its default
            try:
                values[f.name] = Path(raw) if kind is Path else kind(raw)
            except ValueError:
                raise ConfigError(f"SEQSTREAM_{f.name.upper()}={raw!r} is not a valid "
                                  f"{kind.__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])
        return cls(**values)
