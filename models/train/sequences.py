"""Training data as flat per-user sequences (`SeqData`), from LogEvents, and the cut-off views
of the log that the model is trained on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from models.ids import IdLabels
from models.schema import ACTION_INDEX, LogEvent
from models.train.config import TrainConfig


@dataclass
class SeqData:
    """Events sorted by (user, ts, row) as flat arrays; user u owns rows starts[u]:starts[u+1]."""

    users: np.ndarray  # raw user id per sequence
    starts: np.ndarray  # [n_users + 1]
    items: np.ndarray  # vocabulary indices
    cats: np.ndarray
    actions: np.ndarray
    ts: np.ndarray  # float64 seconds
    item_new: np.ndarray | None = None  # first occurrence of the item in the whole log (by time)
    cat_new: np.ndarray | None = None
    weight: np.ndarray | None = None  # loss weight of each event as a target (None: 1)
    # time of the user's next event before any view removed events (inf: none); None: the next row's
    next_ts: np.ndarray | None = None

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    @property
    def user_index(self) -> np.ndarray:
        """Per event: the index of its user's sequence."""
        return np.repeat(np.arange(len(self.users)), self.lengths)

    def __len__(self) -> int:
        return len(self.items)


def events_to_arrays(events: Iterable[LogEvent], labels: IdLabels | None = None) -> dict[str, np.ndarray]:
    """Raw columns of LogEvents: user, item, category (-1 if none), action index, ts_s, row.
    Ids become int64 keys (models/ids.py); `labels` collects the text of string ids."""
    cols: dict[str, list] = {k: [] for k in ("user", "item", "cat", "action", "ts", "row")}
    key = (labels if labels is not None else IdLabels()).key
    for i, e in enumerate(events):
        cols["user"].append(key(e.user_id))
        cols["item"].append(key(e.item_id))
        cols["cat"].append(-1 if e.category_id is None else key(e.category_id))
        cols["action"].append(ACTION_INDEX[e.action])
        cols["ts"].append(e.ts_ms)
        cols["row"].append(e.row if e.row is not None else i)
    out = {k: np.asarray(v, dtype=np.int64) for k, v in cols.items()}
    out["ts"] = out["ts"].astype(np.float64) / 1000.0
    return out


def make_seqdata(user: np.ndarray, items: np.ndarray, cats: np.ndarray, actions: np.ndarray,
                 ts: np.ndarray, row: np.ndarray | None = None) -> SeqData:
    """Stable sort by (user, ts, row) and cut into per-user sequences (ids already indexed)."""
    row = np.arange(len(user)) if row is None else row
    order = np.lexsort((row, ts, user))
    u = user[order]
    cut = np.flatnonzero(np.diff(u)) + 1
    starts = np.concatenate([[0], cut, [len(u)]]).astype(np.int64)
    by_time = np.lexsort((row, ts))
    return SeqData(u[starts[:-1]] if len(u) else u, starts, items[order], cats[order],
                   actions[order], ts[order].astype(np.float64),
                   first_occurrence(items, by_time)[order], first_occurrence(cats, by_time)[order])


def cutoff_view(data: SeqData, quantile: float) -> SeqData:
    """Simulate a vocabulary frozen at the `quantile` of event time: later events whose item had
    not occurred before that time are removed, as if their ids were unknown to the model.

    Why: a deployed model (and the evaluation protocol) never sees events of items it has no row
    for -- they are dropped from the user's context. Sequences look different then (e.g.
    "A, new, A" reaches the model as "A, A"), and training on the same kind of sequences
    teaches the copy path what such contexts mean."""
    if len(data) == 0 or not 0 < quantile < 1:
        return data
    q = float(np.quantile(data.ts, quantile))
    before = data.ts < q
    next_ts = data.next_ts if data.next_ts is not None else next_event_ts(data)
    known = np.zeros(int(data.items.max()) + 1, dtype=bool)
    known[data.items[before]] = True
    keep = before | known[data.items]
    user = data.user_index[keep]
    counts = np.bincount(user, minlength=len(data.users))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    sub = lambda a: None if a is None else a[keep]  # noqa: E731
    return SeqData(data.users, starts, data.items[keep], data.cats[keep], data.actions[keep],
                   data.ts[keep], sub(data.item_new), sub(data.cat_new), sub(data.weight), next_ts[keep])


def next_event_ts(data: SeqData) -> np.ndarray:
    """Per event: the time of its user's next event in `data`, inf for a user's last one."""
    nxt = np.full(len(data), np.inf)
    if len(data):
        nxt[:-1] = data.ts[1:]
        nxt[data.starts[1:][data.lengths > 0] - 1] = np.inf
    return nxt


def concat_seqdata(parts: list[SeqData]) -> SeqData:
    """Sequences of several SeqData one after the other (users may repeat: they are views)."""
    if len(parts) == 1:
        return parts[0]
    starts, off = [np.zeros(1, dtype=np.int64)], 0
    for d in parts:
        starts.append(d.starts[1:] + off)
        off += len(d)
    cat = lambda f: np.concatenate([getattr(d, f) for d in parts])  # noqa: E731
    opt = lambda f: (None if any(getattr(d, f) is None for d in parts) else cat(f))  # noqa: E731
    w = None
    if any(d.weight is not None for d in parts):
        w = np.concatenate([d.weight if d.weight is not None else np.ones(len(d)) for d in parts])
    return SeqData(cat("users"), np.concatenate(starts), cat("items"), cat("cats"), cat("actions"),
                   cat("ts"), opt("item_new"), opt("cat_new"), w, opt("next_ts"))


def training_views(data: SeqData, cfg: TrainConfig) -> SeqData:
    """The sequences a model is trained on: `cutoff_view` at `vocab_cutoff` plus one view per
    quantile in `cutoff_views`. In each view, targets after its cut-off weigh 1 and earlier ones
    `w_before_cutoff`.

    Why: after deployment (and in the evaluation protocol) the vocabulary is frozen; the events
    that matter are later ones, whose contexts lost the items the model has no row for, and
    whose targets are known ids -- mostly revisits (on Taobao ~80%, vs ~20% of raw train
    targets), with a different recency profile. Several cut-offs give many such examples from one
    log, and the loss focuses on them, so the copy path and the gate learn the situation they
    are used in."""
    if not cfg.vocab_cutoff:
        return data
    views = []
    for qn in (cfg.vocab_cutoff, *cfg.cutoff_views):
        if not 0 < qn < 1:
            continue
        v = cutoff_view(data, qn)
        q = float(np.quantile(data.ts, qn))
        v.weight = np.where(v.ts >= q, 1.0, cfg.w_before_cutoff)
        views.append(v)
    return concat_seqdata(views) if views else data


def first_occurrence(ids: np.ndarray, by_time: np.ndarray) -> np.ndarray:
    """True where an event's id occurs for the first time in the log (in time order)."""
    first = np.zeros(len(ids), dtype=bool)
    _, i = np.unique(ids[by_time], return_index=True)
    first[by_time[i]] = True
    return first
