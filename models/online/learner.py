"""Online fine-tuning of `models.gru.SeqModel` in micro-batches: pure PyTorch, no Kafka, no Faust.

The streaming trainer (stream/online/trainer.py) and the drift benchmark (bench/bench_drift.py) run this
same code. River-like API (samples: models/online/samples.py):

    learner = OnlineLearner.from_checkpoint(ckpt, OnlineConfig(lr=1e-3))
    report = learner.learn_many(samples)      # one round: test on them, decide, then train
    if report.promoted:
        publish(learner.serving, learner.version)
    learner.evaluate(samples)                 # HR@20, MRR@20, next-action log-loss


One round (`learn_many`), prequential ("test, then train"):
1. the round's new samples are *held back*: neither the serving version nor the candidate has
   trained on them. Both are evaluated on them (full ranking over the vocabulary).
2. promotion: the candidate (the serving version plus everything learned since) replaces the
   serving version if it is not worse by more than `margin` (relative) on HR@K, MRR@K and the
   next-action log-loss (`promotion_decision`). After `reset_after` rejections in a row the
   candidate is reset to the serving weights (a poisoned candidate cannot linger).
3. the new samples go into a bounded FIFO replay buffer of recent samples, and the candidate takes
   Adam steps on mini-batches that mix the new samples with as many replayed ones
   (`replay_ratio`), at most `max_steps` per round, so one burst cannot wreck the model.

Losses are the offline ones of models/train/loss.py (`item_log_prob` with popularity-aware shared
negatives and the log-Q correction, `category_log_prob`, next-action cross-entropy, churn BCE),
with the same weights by default. Online differences:
- context: the hidden state is re-encoded from zeros over the newest `encode_context` (20)
  events of the sample's ring (the serving Scorer re-folds a stale state from the whole ring after
  a swap; 20 keeps a training step 2.5x cheaper than 49 and a GRU's memory is mostly recent);
  the copy path sees the whole ring, as when serving;
- negatives are drawn ∝ pop^alpha from popularity counted online over the targets seen, decayed
  (half-life `pop_half_life` samples), so that trending items are sampled as they trend;
- churn: the label of the context's last event is "the target came more than `horizon_s` later".
  Users who never come back produce no sample, so online churn labels are biased towards "no
  churn" (right-censored): the online churn weight is small (`w_churn`, default 0.1).
Vocabulary: fixed to the serving checkpoint's. Targets outside it are not trained on and not
scored (no version can rank an item it has no row for); new items need an offline retrain.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.checkpoint import Checkpoint
from models.config import UNKNOWN
from models.device import resolve_device
from models.gru import SeqModel
from models.online.samples import ReplayBuffer, Sample, SampleBatch, make_sample_batch
from models.ring import Recent
from models.train.batches import NegativeSampler
from models.train.config import TrainConfig
from models.train.fit import GradientStep
from models.train.infer import target_ranks
from models.train.loss import category_log_prob, item_log_prob
from models.vocab import Vocab


_OFFLINE = TrainConfig()


@dataclass
class OnlineConfig:
    lr: float = _OFFLINE.lr / 3  # as GRURanker's online mode
    batch: int = 128  # samples per gradient step
    max_steps: int = 64  # gradient steps per round, at most
    max_new_per_round: int = 4096  # a larger burst is sub-sampled (it stays in the replay buffer)
    replay_size: int = 20_000  # FIFO of recent samples
    replay_ratio: float = 1.0  # replayed samples per new sample in a round
    max_context: int = 50  # context events per sample for the copy path (the ring bounds it)
    encode_context: int = 20  # of which the newest this many are run through the GRU for h
    negatives: int = _OFFLINE.negatives
    alpha: float = _OFFLINE.alpha
    pop_half_life: float = 50_000.0  # in samples
    horizon_s: float = _OFFLINE.horizon_s
    w_category: float = _OFFLINE.w_category
    w_action: float = _OFFLINE.w_action
    w_churn: float = 0.1  # right-censored online labels: see the module docstring
    clip: float = _OFFLINE.clip
    k: int = 20  # HR@k, MRR@k
    margin: float = 0.02  # relative: promote unless worse than serving by more than this
    min_eval: int = 30  # scored item targets needed to decide; else the round defers
    reset_after: int = 3  # rejections in a row before the candidate restarts from serving
    train: bool = True  # False: a frozen learner (evaluation only)
    device: str | None = None  # None: cuda when available
    seed: int = 0

    def validate(self) -> "OnlineConfig":
        if self.lr <= 0 or self.batch < 1 or self.max_steps < 1 or self.replay_size < 0:
            raise ValueError("online config: lr, batch, max_steps must be positive")
        if not 0 <= self.margin < 1 or self.replay_ratio < 0:
            raise ValueError("online config: margin must be in [0, 1), replay_ratio >= 0")
        return self


def promotion_decision(candidate: dict[str, float], serving: dict[str, float], *, margin: float,
                       min_eval: int, k: int = 20) -> tuple[bool | None, str]:
    """(True, why) promote / (False, why) reject / (None, why) not enough evidence.

    Not worse than serving by more than `margin` (relative) on HR@k, MRR@k and action log-loss."""
    if candidate.get("n_items", 0) < min_eval:
        return None, f"only {candidate.get('n_items', 0)} scored targets (< {min_eval})"
    worse = []
    for key in (f"hr@{k}", f"mrr@{k}"):
        if candidate[key] < serving[key] * (1.0 - margin) - 1e-12:
            worse.append(f"{key} {candidate[key]:.4f} < {serving[key]:.4f}")
    ll = "action_logloss"
    if candidate[ll] > serving[ll] * (1.0 + margin) + 1e-12:
        worse.append(f"{ll} {candidate[ll]:.4f} > {serving[ll]:.4f}")
    if worse:
        return False, "worse: " + "; ".join(worse)
    return True, "not worse than serving"


@dataclass
class RoundReport:
    """What one `learn_many` round did (JSON-friendly through `to_dict`)."""

    n_samples: int
    decision: str  # promoted | rejected | deferred | untrained
    reason: str
    version: int  # serving version after the round
    parent: int | None  # for a promotion: the version it replaced
    candidate: dict[str, float] = field(default_factory=dict)
    serving: dict[str, float] = field(default_factory=dict)  # the version served before the round
    steps: int = 0
    loss: float = math.nan
    seconds: float = 0.0
    trained_samples: int = 0  # samples the candidate has trained on since it was forked

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hidden(model: SeqModel, b: SampleBatch) -> Tensor:
    _, h = model.encode(None, b.items, b.cats, b.actions, b.gaps, b.lengths)
    return h


@torch.no_grad()
def evaluate_model(model: SeqModel, b: SampleBatch, k: int = 20,
                   max_cells: int = 1 << 24) -> dict[str, float]:
    """Full-ranking HR@k / MRR@k of the next item (targets in the vocabulary only; rank counts
    ties against the model) and the next-action log-loss, over all rows of `b`."""
    was_training = model.training
    model.eval()
    n_items = int(model.item_valid.shape[0])
    rows = max(1, max_cells // max(n_items, 1))
    ranks: list[Tensor] = []
    ll_sum, n = 0.0, len(b)
    for lo in range(0, n, rows):
        sub = b.rows(torch.arange(lo, min(n, lo + rows), device=b.lengths.device))
        h = _hidden(model, sub)
        ok = (sub.t_item > UNKNOWN) & model.item_valid[sub.t_item]
        if ok.any():
            ranks.append(target_ranks(model.item_logits(h, sub.recent)[ok], sub.t_item[ok]).cpu())
        ll_sum += float(F.cross_entropy(model.action_logits(h), sub.t_action, reduction="sum"))
    r = torch.cat(ranks).double() if ranks else torch.zeros(0, dtype=torch.float64)
    hit = r <= k
    if was_training:
        model.train()
    return {"n": n, "n_items": int(len(r)),
            f"hr@{k}": float(hit.double().mean()) if len(r) else 0.0,
            f"mrr@{k}": float((hit / r).mean()) if len(r) else 0.0,
            "action_logloss": ll_sum / max(n, 1)}


class OnlineLearner:
    """Keeps the serving version and a candidate that learns from micro-batches of samples."""

    def __init__(self, model: SeqModel, items: Vocab, categories: Vocab, *, version: int,
                 config: OnlineConfig | None = None) -> None:
        self.config = (config or OnlineConfig()).validate()
        self.device = resolve_device(self.config.device)
        self.items, self.categories = items, categories
        self.replay = ReplayBuffer(self.config.replay_size, seed=self.config.seed)
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(self.config.seed)
        self._rng = np.random.default_rng(self.config.seed)
        self.pop = np.zeros(model.cfg.n_items, dtype=np.float64)
        self.rounds = 0
        self.latest_version = int(version)  # highest version number known anywhere
        self.rebase(model, items, categories, version)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, config: OnlineConfig | None = None) -> "OnlineLearner":
        return cls(ckpt.model, ckpt.item_vocab, ckpt.category_vocab, version=ckpt.version,
                   config=config)

    # -- versions ----------------------------------------------------------------------------

    def rebase(self, model: SeqModel, items: Vocab, categories: Vocab, version: int) -> None:
        """Serve `model` as `version` (e.g. a rollback seen on model-updates); restart the candidate."""
        self.serving = copy.deepcopy(model).to(self.device).eval()
        if len(self.pop) != model.cfg.n_items:
            self.pop = np.zeros(model.cfg.n_items, dtype=np.float64)
        self.items, self.categories = items, categories
        self.version = int(version)
        self.parent: int | None = None
        self.observe_version(version)
        self._fork()

    def observe_version(self, version: int) -> None:
        """A version number seen elsewhere (model-updates): new numbers go above it."""
        self.latest_version = max(self.latest_version, int(version))

    def _fork(self) -> None:
        self.candidate = copy.deepcopy(self.serving).train()
        self.opt = torch.optim.Adam(self.candidate.parameters(), lr=self.config.lr)
        self.trained_samples = 0
        self.rejections = 0

    # -- tensors -------------------------------------------------------------------------------

    def batch(self, samples: Sequence[Sample]) -> SampleBatch:
        c = self.config
        return make_sample_batch(samples, self.items, self.categories,
                                 n_gap_buckets=self.serving.cfg.n_gap_buckets,
                                 max_context=c.max_context, horizon_s=c.horizon_s, device=self.device,
                                 encode_context=c.encode_context)

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self, samples: Sequence[Sample] | SampleBatch,
                 model: SeqModel | None = None) -> dict[str, float]:
        """Metrics of `model` (default: the serving version) on samples it has not trained on."""
        b = samples if isinstance(samples, SampleBatch) else self.batch(samples)
        if len(b) == 0:
            return {"n": 0, "n_items": 0, f"hr@{self.config.k}": 0.0, f"mrr@{self.config.k}": 0.0,
                    "action_logloss": 0.0}
        return evaluate_model(model if model is not None else self.serving, b, self.config.k)

    # -- one round -------------------------------------------------------------------------------

    def learn_many(self, samples: Sequence[Sample]) -> RoundReport:
        """Test the serving version and the candidate on `samples`, maybe promote, then train."""
        started = time.perf_counter()
        c = self.config
        samples = list(samples)
        self.rounds += 1
        if not samples:
            return RoundReport(0, "deferred", "no samples", self.version, None)
        held = self.batch(samples)
        serving_m = self.evaluate(held)
        report = RoundReport(len(samples), "untrained", "candidate has not trained yet",
                             self.version, None, serving=serving_m)
        if self.trained_samples > 0:
            cand_m = self.evaluate(held, self.candidate)
            report.candidate = cand_m
            ok, why = promotion_decision(cand_m, serving_m, margin=c.margin, min_eval=c.min_eval,
                                         k=c.k)
            report.reason = why
            if ok:
                report.parent = self.version
                report.trained_samples = self.trained_samples
                self._promote()
                report.decision = "promoted"
                report.version = self.version
            elif ok is None:
                report.decision = "deferred"
            else:
                report.decision = "rejected"
                self.rejections += 1
                if self.rejections >= c.reset_after:
                    report.reason += f"; candidate reset to v{self.version} after {self.rejections} rejections"
                    self._fork()
        if c.train:
            report.steps, report.loss = self._train(samples)
        report.seconds = time.perf_counter() - started
        return report

    def _promote(self) -> None:
        self.parent = self.version
        self.latest_version += 1
        self.version = self.latest_version
        self.serving = copy.deepcopy(self.candidate).eval()
        self.trained_samples = 0
        self.rejections = 0
        # the candidate and its optimizer state carry on from where they are

    def _observe_popularity(self, samples: Sequence[Sample]) -> None:
        decay = 0.5 ** (len(samples) / max(self.config.pop_half_life, 1.0))
        self.pop *= decay
        t = self.items.index(np.fromiter((s.items[-1] for s in samples), dtype=np.int64, count=len(samples)))
        np.add.at(self.pop, t[t > UNKNOWN], 1.0)

    def _sampler(self) -> NegativeSampler:
        counts = self.pop.copy()
        valid = self.serving.item_valid.cpu().numpy()
        # a small floor for every valid item, so items that have not trended yet still get
        # pushed down sometimes (offline, every item in the vocabulary has been seen)
        counts = np.where(valid, counts + 1e-3 * max(counts.sum(), 1.0) / max(valid.sum(), 1), 0.0)
        return NegativeSampler(counts, self.config.alpha, self.device)

    def _train(self, new: list[Sample]) -> tuple[int, float]:
        c = self.config
        if len(new) > c.max_new_per_round:
            pick = self._rng.choice(len(new), c.max_new_per_round, replace=False)
            fresh = [new[i] for i in pick]
        else:
            fresh = new
        mix = fresh + self.replay.sample(int(round(len(fresh) * c.replay_ratio)))
        self.replay.add_many(new)
        b = self.batch(mix)
        self._observe_popularity(fresh)
        sampler = self._sampler()
        model, opt = self.candidate, self.opt
        model.train()
        order = torch.randperm(len(b), generator=torch.Generator().manual_seed(self.rounds))
        steps, loss_sum = 0, 0.0
        step = GradientStep(model, opt, c.clip)
        for lo in range(0, len(b), c.batch):
            if steps >= c.max_steps:
                break
            mb = b.rows(order[lo: lo + c.batch].to(self.device))
            loss = self.loss(model, mb, sampler)
            if not loss.requires_grad:
                continue
            step(loss)
            steps += 1
            loss_sum += float(loss.detach())
        self.trained_samples += min(len(b), steps * c.batch)
        return steps, (loss_sum / steps if steps else math.nan)

    def loss(self, model: SeqModel, b: SampleBatch, sampler: NegativeSampler) -> Tensor:
        """The offline objective (models/train/loss.py) on one target per sample."""
        c = self.config
        h = _hidden(model, b)
        total = h.new_zeros(())
        sel = b.t_item > UNKNOWN
        if sel.any():
            r = b.recent
            rs = Recent(r.items[sel], r.categories[sel], r.actions[sel], r.age[sel], r.mask[sel])
            lp = item_log_prob(model, h[sel], rs, b.t_item[sel],
                               sampler.sample(c.negatives, self._gen), sampler)
            total = total - lp.mean()
        selc = b.t_cat > UNKNOWN
        if selc.any() and c.w_category > 0:
            r = b.recent
            rs = Recent(r.items[selc], r.categories[selc], r.actions[selc], r.age[selc], r.mask[selc])
            total = total - c.w_category * category_log_prob(model, h[selc], rs, b.t_cat[selc]).mean()
        if c.w_action > 0:
            total = total + c.w_action * F.cross_entropy(model.action_head(model.drop(h)), b.t_action)
        if c.w_churn > 0:
            logit = model.churn_logit(h, b.recent)
            total = total + c.w_churn * F.binary_cross_entropy_with_logits(logit, b.churn)
        return total
