"""OnlineSettings: the online-learning knobs, taken from Settings (which reads SEQSTREAM_ONLINE*)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from models.online.learner import OnlineConfig
from stream.config import Settings


def _flag(raw: Any, default: bool) -> bool:
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        return raw
    return str(raw).strip().lower() not in ("0", "false", "no", "off")


@dataclass
class OnlineSettings:
    """Online-learning knobs: `Settings.online_<name>` (env SEQSTREAM_ONLINE_<NAME>), else these defaults."""

    enabled: bool = True  # SEQSTREAM_ONLINE=0 / --no-online: no capture, no trainer (still follows)
    trainer: str = "worker"  # worker: the trainer agent runs in the workers; external: `seqstream trainer`
    every_n: int = 2000  # a round after this many samples...
    every_s: float = 60.0  # ...or this many seconds (with at least min_samples)
    min_samples: int = 200
    lr: float = OnlineConfig.lr
    margin: float = OnlineConfig.margin
    min_eval: int = OnlineConfig.min_eval
    replay: int = OnlineConfig.replay_size
    max_steps: int = OnlineConfig.max_steps
    keep_versions: int = 5  # versions whose weights stay on model-updates (rollback targets)

    @classmethod
    def from_settings(cls, settings: Any = None, env: dict[str, str] | None = None,
                      **overrides: Any) -> "OnlineSettings":
        """From `settings` (a Settings, or anything with its online fields), then `overrides`.
        Without settings, Settings.from_env(env) is read: the environment has one parser."""
        if settings is None:
            settings = Settings.from_env(env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = getattr(settings, "online" if f.name == "enabled" else f"online_{f.name}", None)
            if raw is None or raw == "":
                continue
            kind = type(f.default)
            values[f.name] = _flag(raw, True) if kind is bool else kind(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        out = cls(**values)
        if out.trainer not in ("worker", "external"):
            raise ValueError(f"online trainer must be worker or external, got {out.trainer!r}")
        return out

    def learner_config(self, device: str | None = None) -> OnlineConfig:
        return OnlineConfig(lr=self.lr, margin=self.margin, min_eval=self.min_eval,
                            replay_size=self.replay, max_steps=self.max_steps, device=device)
