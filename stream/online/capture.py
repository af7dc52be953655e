"""Training-sample capture: one sample per in-order prediction, sent to training-samples.

**Capture**: for every prediction of an in-order event, the user's ring up to and including that
event is one sample (`sample_from_state`): context ring[:-1], target ring[-1]. Late events are
not captured (their "next" event is already known to the model).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from models.ids import id_key
from models.online.samples import encode_sample
from models.schema import ACTION_INDEX
from stream.events import user_key
from stream.state import RingEntry, UserState


def sample_from_state(st: UserState, upto: int | None = None) -> bytes | None:
    """The training sample of the event at ring position `upto` (default: the newest).

    Context ring[:upto], target ring[upto]; None without context. At most L events."""
    ring = st.ring if upto is None else st.ring[: upto + 1]
    if len(ring) < 2:
        return None
    return encode_sample(st.user_id, [e.item for e in ring], [e.category for e in ring],
                         [e.action for e in ring], [e.ts for e in ring], st.model_version)


def _ring_position(ring: list[RingEntry], ev: Any, used: set[int]) -> int | None:
    action = ACTION_INDEX.get(ev.action, -1)
    item = id_key(ev.item_id)  # the ring holds id keys (models/ids.py), the event the id itself
    for i in range(len(ring) - 1, -1, -1):
        e = ring[i]
        if e.ts == ev.ts and e.item == item and e.action == action and i not in used:
            return i
        if e.ts < ev.ts:
            break
    return None


@dataclass
class CaptureMetrics:
    samples: int = 0
    skipped: int = 0  # late events, first events, evicted within the batch
    seconds: float = 0.0


class SampleCapture:
    """The pipeline's batch hook: one sample per in-order prediction to training-samples (key = user)."""

    def __init__(self, send: Callable[..., Any]) -> None:
        self.send = send  # async send(key=..., value=...)
        self.metrics = CaptureMetrics()

    def samples(self, states: dict[int, UserState], predictions: Sequence[Any]) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        used: dict[int, set[int]] = {}
        for p in predictions:
            st = states.get(p.user_id)
            if p.late or st is None:
                self.metrics.skipped += 1
                continue
            mine = used.setdefault(p.user_id, set())
            pos = _ring_position(st.ring, p.event, mine)
            data = sample_from_state(st, pos) if pos is not None else None
            if data is None:
                self.metrics.skipped += 1
                continue
            mine.add(pos)  # type: ignore[arg-type]
            out.append((user_key(p.user_id), data))
        return out

    async def __call__(self, states: dict[int, UserState], predictions: Sequence[Any]) -> None:
        started = time.perf_counter()
        send = self.send
        pairs = self.samples(states, predictions)
        for key, value in pairs:
            await send(key=key, value=value)
        self.metrics.samples += len(pairs)
        self.metrics.seconds += time.perf_counter() - started

