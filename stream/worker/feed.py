"""The dashboard's feed: the last predictions and churn alerts of this worker (GET /feed).

The pipeline appends what it already has (the Prediction objects of a batch, a small tuple per
alert) to bounded deques; the JSON items are built only when /feed is requested.
"""
from __future__ import annotations

import socket
from collections import deque
from typing import Any, Sequence

FEED_SIZE = 50


class Feed:
    def __init__(self, size: int = FEED_SIZE) -> None:
        self.predictions: deque = deque(maxlen=size)  # Prediction objects, newest last
        self.alerts: deque = deque(maxlen=size)  # (user_id, kind, risk, ts_ms)
        self.size = size

    def add_predictions(self, predictions: Sequence[Any]) -> None:
        """Once per batch: only the last `size` can survive, so only those are appended."""
        self.predictions.extend(predictions[-self.size:])

    def add_churn(self, user_id: int, msg: dict, risk: float | None = None) -> None:
        """A churn-alerts message: type "churn" is an alert, "returned" the user came back."""
        if msg.get("type") == "churn":
            kind, ts = "alert", msg.get("alert_ts", 0)
        else:
            kind, ts = "returned", msg.get("returned_ts", 0)
        self.alerts.append((user_id, kind, msg.get("risk", risk), ts))

    def to_json(self, *, model_version: int, app_id: str) -> dict[str, Any]:
        return {
            "predictions": [prediction_item(p) for p in list(self.predictions)],
            "alerts": [{"user": str(u), "kind": kind, "risk": float(risk or 0.0), "ts_ms": int(ts)}
                       for u, kind, risk, ts in list(self.alerts)],
            "model": {"version": int(model_version)},
            "worker": {"app_id": app_id, "host": socket.gethostname()},
        }


def prediction_item(p: Any) -> dict[str, Any]:
    """One feed item; ts_ms is the event's own time (ms since epoch)."""
    ev = p.event
    return {"user": str(p.user_id), "topic": ev.topic, "partition": int(ev.partition),
            "offset": int(ev.offset), "action": ev.action, "item": str(ev.item_id),
            "top_items": [str(item) for item, _ in p.next_items],
            "next_action": {k: float(v) for k, v in p.next_action.items()},
            "churn_risk": float(p.churn_risk), "ts_ms": int(ev.ts)}
