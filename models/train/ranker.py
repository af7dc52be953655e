"""`GRURanker`: the GRU as a ranker of the evaluation protocol (models/evaluate), frozen or
learning online from the revealed test events."""
from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.checkpoint import load_checkpoint
from models.device import resolve_device
from models.gru import SeqModel
from models.train.calibrate import fit_calibrated
from models.train.config import TrainConfig
from models.train.fit import fit_model, seed_everything
from models.train.infer import predict_at
from models.train.run import build_model
from models.train.sequences import SeqData, make_seqdata
from models.vocab import Vocab


class GRURanker:
    """`models.evaluate.baselines.Ranker` for the GRU: fit on the train part, score every candidate in V.

    The model trained by `fit` is cached per train set, so the item and category tasks of one log
    (same train events) share one training run. Scores are the model's log-probabilities mapped
    from vocabulary indices to V's order."""

    _cache: dict[tuple, tuple[SeqModel, Vocab, Vocab]] = {}

    def __init__(self, cfg: TrainConfig | None = None, online_lr: float | None = None, *,
                 seed: int | None = None, checkpoint: str | None = None):
        cfg = cfg or TrainConfig()
        if seed is not None:
            cfg = TrainConfig(**{**asdict(cfg), "seed": int(seed)})
        self.cfg = cfg
        self.checkpoint = checkpoint
        self.online_lr = online_lr if online_lr is not None else self.cfg.lr / 3
        self.model: SeqModel | None = None
        self._seq: tuple[int, SeqData] | None = None
        self._opt: torch.optim.Optimizer | None = None

    def _train_key(self, data: Any) -> tuple:
        tr = data.is_train
        h = hash((data.item[tr].tobytes(), data.category[tr].tobytes(), data.ts[tr].tobytes(),
                  data.user[tr].tobytes()))
        return (h, tuple(sorted(asdict(self.cfg).items())))

    def fit(self, data: Any) -> None:
        if self.checkpoint is not None:  # a trained checkpoint: used as it is, never refit
            ck = load_checkpoint(self.checkpoint, device=resolve_device(self.cfg.device))
            self._cache.clear()
            self._cache[("checkpoint", str(self.checkpoint))] = (ck.model, ck.item_vocab, ck.category_vocab)
            self.model, self.item_vocab, self.cat_vocab = ck.model, ck.item_vocab, ck.category_vocab
            self.model = copy.deepcopy(self.model)
            self._seq, self._opt = None, None
            return
        key = self._train_key(data)
        if key not in self._cache:
            seed_everything(self.cfg.seed)
            tr = data.is_train
            model, iv, cv = build_model(data.item[tr], data.category[tr], self.cfg, data.labels)
            model.to(resolve_device(self.cfg.device))
            seq = make_seqdata(data.user[tr], iv.index(data.item[tr]), cv.index(data.category[tr]),
                               data.action[tr].astype(np.int64), data.ts[tr], data.row[tr])
            fit_calibrated(model, seq, self.cfg, data_end=float(data.ts[tr].max()))
            self._cache.clear()  # one model at a time: bounded memory
            self._cache[key] = (model, iv, cv)
        model, self.item_vocab, self.cat_vocab = self._cache[key]
        self.model = copy.deepcopy(model)  # online learning must not touch the cached model
        self._seq, self._opt = None, None

    def _seqdata(self, data: Any) -> SeqData:
        if self._seq is None or self._seq[0] != id(data):
            seq = make_seqdata(data.user, self.item_vocab.index(data.item), self.cat_vocab.index(data.category),
                               data.action.astype(np.int64), data.ts, data.row)
            self._seq = (id(data), seq)  # data rows are already in (user, ts, row) order
        return self._seq[1]

    def _predict(self, data: Any, positions: np.ndarray, output: str) -> Tensor:
        assert self.model is not None, "fit first"
        pos = np.asarray(positions, dtype=np.int64)
        return predict_at(self.model, self._seqdata(data), pos, outputs=(output,))[output]

    def score(self, data: Any, event_idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(event_idx, dtype=np.int64)
        item = data.target == "item"
        # the context ends just before the scored event
        logits = self._predict(data, idx - 1, "item_logits" if item else "category_logits")
        cols = (self.item_vocab if item else self.cat_vocab).index(data.V)
        return logits[:, torch.as_tensor(cols)].double().numpy()

    def category_top(self, data: Any, event_idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The model's k likeliest next categories before each event: (raw ids [n, k], softmax
        probabilities [n, k]), as the worker blends them into interests (stream/scoring.py)."""
        logits = self._predict(data, np.asarray(event_idx, dtype=np.int64) - 1, "category_logits")
        values, indices = torch.softmax(logits.float(), -1).topk(min(k, logits.shape[1]), -1)
        return self.cat_vocab.raw(indices.numpy()), values.numpy()

    def action_probs(self, data: Any, event_idx: np.ndarray) -> np.ndarray:
        logits = self._predict(data, np.asarray(event_idx, dtype=np.int64) - 1, "action_logits")
        return torch.softmax(logits.double(), -1).numpy()

    def churn_scores(self, data: Any, event_idx: np.ndarray, horizon_s: float | None = None) -> np.ndarray:
        """P(no event within the TRAINING horizon) after event i (inclusive)."""
        logit = self._predict(data, np.asarray(event_idx, dtype=np.int64), "churn_logit")
        return torch.sigmoid(logit.double()).numpy()

    def learn(self, data: Any, event_idx: np.ndarray) -> None:
        """Online: one pass of SGD over the revealed events, each with up to `bptt` events of
        its user's context (hidden state re-derived from that window)."""
        assert self.model is not None, "fit first"
        idx = np.sort(np.asarray(event_idx, dtype=np.int64))
        if len(idx) == 0:
            return
        seq = self._seqdata(data)
        rows = []
        for u in np.unique(data.user[idx]):
            mine = idx[data.user[idx] == u]
            lo = max(int(data.seq_start[u]), int(mine.min()) - self.cfg.bptt)
            rows.append(np.arange(lo, int(mine.max()) + 1))
        r = np.concatenate(rows)
        sub = make_seqdata(data.user[r], seq.items[r], seq.cats[r], seq.actions[r], seq.ts[r], data.row[r])
        sub.item_new = sub.cat_new = None
        if self._opt is None:
            self._opt = torch.optim.Adam(self.model.parameters(), lr=self.online_lr)
        cfg = TrainConfig(**{**asdict(self.cfg), "progress": False})
        fit_model(self.model, sub, cfg, data_end=float(data.ts[r].max()), epochs=1, optimizer=self._opt,
                  item_counts=np.bincount(seq.items[data.is_train], minlength=self.model.cfg.n_items))
