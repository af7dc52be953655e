"""Score a micro-batch of events against per-user state: the pure core of the worker.

Events -> UserState -> batch tensors -> model -> Prediction records (the message itself is in
stream/events.py). Nothing here touches Kafka or Faust, so the same code scores a live batch, a replayed log, or a unit test.

A user may appear several times in one batch. The batch is split into *waves*: wave k holds
the k-th event (in event-time order) of every user in the batch, so each event sees its
predecessor's state and each wave is one batched GRU step plus one batched predict.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from models.checkpoint import Checkpoint
from models.config import GAP_FIRST
from models.explore_index import ExploreIndex, predict_top_items_indexed
from models.anomaly import AnomalyPolicy, AnomalyStats, Population, observe
from models.gru import SeqModel
from models.ids import id_key
from models.interests import MODEL_TOP, InterestPolicy, changed_materially
from models.ring import Recent, gap_bucket
from models.vocab import Vocab
from models.schema import ACTION_INDEX, ACTIONS
from stream.churn import ChurnPolicy, on_event
from stream.events import Event, Prediction
from stream.state import Insertion, RingEntry, UserState, insert_event, is_redelivery


@dataclass
class ScoringModel:
    """A loaded model version plus what is needed to turn raw ids into tensors."""

    model: SeqModel
    items: Vocab
    categories: Vocab
    version: int
    device: torch.device
    # retrieval (issue 23): the explore path's index; None = exact (predict_top_items)
    explore_index: ExploreIndex | None = None

    @property
    def hidden_size(self) -> int:
        return self.model.cfg.hidden

    @classmethod
    def from_checkpoint(cls, ckpt: "Checkpoint", retrieval: str = "exact") -> "ScoringModel":
        """`retrieval`: exact|ann|auto (Settings.retrieval). The index is built here, from this
        version's weights, so it is always the model's own and swaps with it."""
        return cls(ckpt.model, ckpt.item_vocab, ckpt.category_vocab, ckpt.version,
                   next(ckpt.model.parameters()).device, ExploreIndex.build(ckpt.model, retrieval))


class Scorer:
    """Turns (states, events) into (new states, predictions). Not thread-safe: one executor."""

    def __init__(self, scoring: ScoringModel, *, ring_size: int = 50, top_k: int = 20,
                 churn: ChurnPolicy | None = None, anomaly: AnomalyPolicy | None = None,
                 interests: InterestPolicy | None = None) -> None:
        self.scoring = scoring
        self.anomaly = anomaly  # None: no abnormal-behaviour alerts (and no stats in the state)
        self.population = Population()  # per worker: its partitions' users
        self.ring_size = ring_size
        self.k = top_k
        self.churn = churn or ChurnPolicy()
        self.interests = interests or InterestPolicy()
        self.redeliveries = 0  # events skipped because their state already holds them

    def swap(self, scoring: ScoringModel) -> None:
        """Hot-swap the model between two batches. Old hidden states refresh lazily."""
        self.scoring = scoring

    # -- tensors ---------------------------------------------------------------------------

    def _buckets(self, seconds: np.ndarray) -> np.ndarray:
        return gap_bucket(seconds, self.scoring.model.cfg.n_gap_buckets)

    def _ids(self, items: list[int], categories: list[int], actions: list[int],
             gaps_s: list[float | None]):
        s = self.scoring
        dev = s.device
        item_idx = torch.as_tensor(s.items.index(np.asarray(items, dtype=np.int64)), device=dev)
        cat_idx = torch.as_tensor(s.categories.index(np.asarray(categories, dtype=np.int64)), device=dev)
        act = torch.as_tensor(np.asarray(actions, dtype=np.int64), device=dev)
        first = np.array([g is None for g in gaps_s])
        buckets = self._buckets(np.array([0.0 if g is None else g for g in gaps_s]))
        gap = torch.as_tensor(np.where(first, GAP_FIRST, buckets), device=dev)
        return item_idx, cat_idx, act, gap

    def _hidden(self, vectors: list[np.ndarray | None]) -> torch.Tensor:
        h = np.zeros((len(vectors), self.scoring.hidden_size), dtype=np.float32)
        for row, v in enumerate(vectors):
            if v is not None:
                h[row] = v
        return torch.from_numpy(h).to(self.scoring.device)

    def _step(self, hiddens: list[np.ndarray | None], entries: list[RingEntry],
              prev_ts: list[int | None]) -> np.ndarray:
        """One batched GRU step: returns float32 [B, H]."""
        gaps = [(e.ts - p) / 1000.0 if p is not None else None for e, p in zip(entries, prev_ts)]
        ids = self._ids([e.item for e in entries], [e.category for e in entries],
                        [e.action for e in entries], gaps)
        h = self.scoring.model.step(self._hidden(hiddens), *ids)
        return h.detach().cpu().numpy().astype(np.float32, copy=False)

    def fold(self, anchor: np.ndarray | None, anchor_ts: int | None,
             ring: list[RingEntry]) -> np.ndarray | None:
        """hidden = fold(step, anchor, ring): recompute one user's state from its ring."""
        h = anchor
        prev = anchor_ts
        for entry in ring:
            h = self._step([h], [entry], [prev])[0]
            prev = entry.ts
        return h

    def _recent(self, states: list[UserState]) -> Recent:
        L = self.ring_size
        B = len(states)
        items = np.zeros((B, L), dtype=np.int64)
        cats = np.zeros((B, L), dtype=np.int64)
        acts = np.zeros((B, L), dtype=np.int64)
        age_s = np.zeros((B, L), dtype=np.float64)
        mask = np.zeros((B, L), dtype=bool)
        raw_items = np.zeros((B, L), dtype=np.int64)
        raw_cats = np.full((B, L), -1, dtype=np.int64)
        for row, st in enumerate(states):
            n = len(st.ring)
            if n == 0:
                continue
            newest = st.ring[-1].ts
            raw_items[row, L - n:] = [e.item for e in st.ring]
            raw_cats[row, L - n:] = [e.category for e in st.ring]
            acts[row, L - n:] = [e.action for e in st.ring]
            age_s[row, L - n:] = [(newest - e.ts) / 1000.0 for e in st.ring]
            mask[row, L - n:] = True
        s = self.scoring
        items[mask] = s.items.index(raw_items[mask])
        cats[mask] = s.categories.index(raw_cats[mask])
        ages = self._buckets(age_s)
        dev = s.device
        t = lambda a: torch.as_tensor(a, device=dev)  # noqa: E731
        return Recent(items=t(items), categories=t(cats), actions=t(acts),
                      age=t(np.where(mask, ages, 0)), mask=t(mask))

    def _model_categories(self, h: torch.Tensor, recent: Recent) -> list[dict] | None:
        """Per row, the model's MODEL_TOP likeliest next categories {category id: probability}
        (softmax of category_logits), ids in the catalogue's own type like next_items; None when
        the blend is off or the model knows no categories."""
        cats = self.scoring.categories
        if self.interests.blend <= 0 or len(cats) <= 2:
            return None
        probs = torch.softmax(self.scoring.model.category_logits(h, recent).float(), dim=-1)
        values, indices = probs.topk(min(MODEL_TOP, probs.shape[1]), -1)
        ids = cats.ids_of(indices.cpu().numpy())
        return [dict(zip(i, p)) for i, p in zip(ids, values.cpu().numpy().tolist())]

    def _profile_update(self, st: UserState, model_cats: dict | None) -> tuple[list, dict | None]:
        """The user's top interests now, and the `profiles` message when they changed materially
        since the last one published (which then becomes the last published)."""
        pol = self.interests
        top = st.interests.top(pol.k, model_cats, pol.blend)
        if not changed_materially(st.profile_sent, top, pol.publish_threshold):
            return top, None
        st.profile_sent = top
        return top, {"user_id": st.user_id, "interests": top, "event_ts": st.interests.ref_ts,
                     "model_version": self.scoring.version}

    # -- the batch -------------------------------------------------------------------------

    @torch.no_grad()
    def score_batch(self, states: dict[int, UserState],
                    events: list[Event]) -> list[Prediction]:
        """Apply `events` to `states` (mutated in place) and predict after each event.

        Predictions come back in the order of `events`. Per user, events are applied in
        event-time order (stable for ties), whatever order they arrived in. An event the user's
        state already holds (redelivered after a restart) is skipped: no prediction, no change.
        """
        per_user: dict[int, list[int]] = defaultdict(list)
        for pos, ev in enumerate(events):
            per_user[ev.user_id].append(pos)
        for positions in per_user.values():
            positions.sort(key=lambda p: events[p].ts)
        results: list[Prediction | None] = [None] * len(events)
        depth = max((len(p) for p in per_user.values()), default=0)
        for wave in range(depth):
            wave_positions = [p[wave] for p in per_user.values() if len(p) > wave]
            self._score_wave(states, events, wave_positions, results)
        return [r for r in results if r is not None]

    def _refresh_if_stale(self, st: UserState) -> None:
        """A state computed by another model version is re-folded from its ring (lazily)."""
        if st.model_version != self.scoring.version and st.ring:
            st.anchor, st.anchor_ts = None, None
            st.hidden = self.fold(None, None, st.ring)
        st.model_version = self.scoring.version

    def _anomalies(self, st: UserState, ev: Event, entry: RingEntry) -> tuple[dict, ...]:
        """Bursts, bots and brushing (models/anomaly.py). Surprise needs the event's NLL under
        the state before it, which this scorer does not compute yet: not scored here."""
        if self.anomaly is None:
            return ()
        if st.anomaly is None:
            st.anomaly = AnomalyStats()
        alerts = observe(st.anomaly, ev.user_id, ev.ts, ev.item_id, entry.action, None,
                         self.population, self.anomaly, self.scoring.version)
        return tuple(a.message() for a in alerts)

    def _score_wave(self, states: dict[int, UserState], events: list[Event],
                    positions: list[int], results: list[Prediction | None]) -> None:
        wave_states: list[UserState] = []
        inserts: list[Insertion] = []
        entries: list[RingEntry] = []
        prevs: list[int | None] = []  # event time of each new event's predecessor (its gap)
        churn_msgs: list[list[dict]] = []
        anomaly_msgs: list[tuple[dict, ...]] = []
        kept: list[int] = []
        for pos in positions:
            ev = events[pos]
            st = states.get(ev.user_id)
            if st is None:
                st = states[ev.user_id] = UserState(user_id=ev.user_id)
            action = ACTION_INDEX[ev.action]
            if is_redelivery(st, action, ev.offset):
                self.redeliveries += 1
                continue
            kept.append(pos)
            self._refresh_if_stale(st)
            # the ring holds int64 id keys (models/ids.py); predictions name ids via Vocab.ids_of
            entry = RingEntry(id_key(ev.item_id),
                              id_key(ev.category_id) if ev.category_id is not None else -1,
                              action, ev.ts, ev.offset)
            prevs.append(st.last_entry.ts if st.last_entry is not None else st.anchor_ts)
            churn_msgs.append(on_event(st, ev.ts, self.churn, self.scoring.version))
            inserts.append(insert_event(st, entry, self.ring_size))
            anomaly_msgs.append(self._anomalies(st, ev, entry))
            st.interests.observe(ev.category_id, ev.ts, self.interests.half_life_ms, self.interests.cap)
            wave_states.append(st)
            entries.append(entry)
        positions = kept
        if not positions:
            return

        # 1. Evicted events are folded into the anchor (independent of the new event).
        ev_rows = [i for i, ins in enumerate(inserts) if ins.evicted is not None]
        if ev_rows:
            new_anchor = self._step([wave_states[i].anchor for i in ev_rows],
                                    [inserts[i].evicted for i in ev_rows],  # type: ignore[misc]
                                    [inserts[i].prev_ts for i in ev_rows])
            for j, i in enumerate(ev_rows):
                wave_states[i].anchor = new_anchor[j]
                wave_states[i].anchor_ts = inserts[i].evicted.ts  # type: ignore[union-attr]
        # 2. In-order events: one batched step from the stored hidden state.
        step_rows = [i for i, ins in enumerate(inserts) if not ins.late]
        if step_rows:
            new_h = self._step([wave_states[i].hidden for i in step_rows],
                               [entries[i] for i in step_rows], [prevs[i] for i in step_rows])
            for j, i in enumerate(step_rows):
                wave_states[i].hidden = new_h[j]
        # 3. Late events: re-fold from the anchor (rare; per user).
        for i, ins in enumerate(inserts):
            if ins.late:
                st = wave_states[i]
                st.hidden = self.fold(st.anchor, st.anchor_ts, st.ring)
        # 4. One batched predict for the whole wave.
        h = self._hidden([st.hidden for st in wave_states])
        recent = self._recent(wave_states)
        if self.scoring.explore_index is not None:  # retrieval (issue 23): ANN explore path
            values, indices, action_logits, churn_logit = predict_top_items_indexed(
                self.scoring.model, self.scoring.explore_index, h, recent, self.k)
        else:
            values, indices, action_logits, churn_logit = self.scoring.model.predict_top_items(
                h, recent, self.k)
        model_cats = self._model_categories(h, recent)
        # numpy -> Python lists once per wave: per-element float()/round() calls cost more
        # than the model on small waves
        action_p = np.round(torch.softmax(action_logits, dim=-1).cpu().numpy(), 6).tolist()
        churn = torch.sigmoid(churn_logit).cpu().numpy()
        churn_l = np.round(churn, 6).tolist()
        # ids in the catalogue's own type: ints, or the strings it was trained with
        raw_l = self.scoring.items.ids_of(indices.cpu().numpy())
        scores = values.cpu().numpy()
        finite = np.isfinite(scores)
        all_finite = finite.all(1).tolist()
        scores_l = np.round(scores, 6).tolist()
        version = self.scoring.version
        for row, pos in enumerate(positions):
            ev = events[pos]
            st = wave_states[row]
            st.churn_risk = float(churn[row])
            if all_finite[row]:
                next_items = list(zip(raw_l[row], scores_l[row]))
            else:  # fewer than k candidates (tiny catalogue): drop the -inf padding
                next_items = [(i, v) for i, v, ok in zip(raw_l[row], scores_l[row], finite[row]) if ok]
            interests, profile = self._profile_update(st, model_cats[row] if model_cats else None)
            results[pos] = Prediction(
                user_id=ev.user_id, event=ev, model_version=version,
                next_action=dict(zip(ACTIONS, action_p[row])),
                next_items=next_items, churn_risk=churn_l[row], late=inserts[row].late,
                user_events=st.n_events, churn_messages=tuple(churn_msgs[row]),
                anomaly_messages=anomaly_msgs[row],
                interests=interests, profile=profile,
            )
