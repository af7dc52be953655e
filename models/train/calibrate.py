"""Calibration on held-out events after training (fusion temperature and gate shift, next-action
temperature, the category successor factor), and `fit_calibrated`, which trains and calibrates."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import NEG_INF, UNKNOWN
from models.gru import SeqModel
from models.train.config import TrainConfig
from models.train.fit import fit_model
from models.train.infer import states_at, target_ranks
from models.train.sequences import SeqData, cutoff_view, training_views


def _next_event_at_or_after(data: SeqData, since_ts: float) -> tuple[np.ndarray, np.ndarray]:
    """(index of each event's successor, True where the user has one at or after `since_ts`):
    the held-out rows the calibrations fit on."""
    nxt = np.minimum(np.arange(len(data)) + 1, len(data) - 1)
    user = data.user_index
    return nxt, (user[nxt] == user) & (nxt > np.arange(len(data))) & (data.ts[nxt] >= since_ts)


def _held_out_positions(data: SeqData, since_ts: float, task: str) -> np.ndarray:
    """Positions whose next event is held out (at or after `since_ts`) and has a known `task`
    target (item or category) that is not new to the vocabulary."""
    nxt, ok = _next_event_at_or_after(data, since_ts)
    target, new = (data.items, data.item_new) if task == "item" else (data.cats, data.cat_new)
    return np.flatnonzero(ok & (target[nxt] > UNKNOWN) & ~(new[nxt] if new is not None else False))


TEMPERATURES = (0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0, 5.7, 8.0, 11.0, 16.0, 32.0)
GATE_SHIFTS = tuple(x / 10 for x in range(-50, 51))


@torch.no_grad()
def calibrate_fusion(model: SeqModel, data: SeqData, since_ts: float, max_rows: int = 4000,
                     seed: int = 0) -> dict[str, float]:
    """Fit `model.explore_temp` and `model.gate_shift` (items, categories) on the next events at
    or after `since_ts`, which the model was not trained on: the (T, shift) of the grid with the
    least exact (full-softmax) NLL of the mixture. Why: the explore head is trained with a
    sampled normaliser and memorises ids it saw a few times, so its full softmax is
    overconfident at serving time, where it is ranked against the copy path (time slice: the top
    new item got p = 0.09 on average; such items are right < 1% of the time).

    Returns the fitted values and the NLL before and after (per task)."""
    model.eval()
    model.explore_temp.fill_(1.0)
    model.gate_shift.zero_()
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for task in ("item", "category"):
        pos = _held_out_positions(data, since_ts, task)
        if len(pos) < 50:  # too few to fit two numbers: keep the neutral calibration
            out[f"{task}_rows"] = float(len(pos))
            continue
        pos = np.sort(rng.choice(pos, min(max_rows, len(pos)), replace=False))
        parts = _fusion_parts(model, data, pos, task)
        temps = torch.tensor(TEMPERATURES, dtype=torch.float64)
        shifts = torch.tensor(GATE_SHIFTS, dtype=torch.float64).view(-1, 1, 1)
        g = parts["gate"].view(1, 1, -1) + shifts  # [S, 1, N]
        log_exp = parts["log_exp"].T.unsqueeze(0)  # [1, T, N]
        lp = F.logsigmoid(-g) + log_exp
        lp = torch.where(parts["in_ring"], torch.logaddexp(F.logsigmoid(g) + parts["log_rep"], lp), lp)
        nll = -lp.mean(-1)  # [S, T]
        best = int(nll.argmin())
        s_i, t_i = divmod(best, len(TEMPERATURES))
        k = 0 if task == "item" else 1
        model.explore_temp[k] = float(temps[t_i])
        model.gate_shift[k] = float(GATE_SHIFTS[s_i])
        out.update({f"{task}_temp": float(temps[t_i]), f"{task}_gate_shift": float(GATE_SHIFTS[s_i]),
                    f"{task}_nll_before": float(nll[GATE_SHIFTS.index(0.0), TEMPERATURES.index(1.0)]),
                    f"{task}_nll_after": float(nll[s_i, t_i]), f"{task}_rows": float(len(pos))})
    return out


@torch.no_grad()
def calibrate_actions(model: SeqModel, data: SeqData, since_ts: float, max_rows: int = 20000,
                      seed: int = 0, min_rows: int = 1000) -> dict[str, float]:
    """Fit `model.action_temp` and `model.action_shift` on the next actions at or after
    `since_ts` (events the model was not trained on): the least NLL of softmax(logits / T +
    shift), by L-BFGS from the neutral (1, 0). Kept only where it lowers that NLL.

    Returns the fitted values and the NLL before and after."""
    model.eval()
    model.action_temp.fill_(1.0)
    model.action_shift.zero_()
    pos = np.flatnonzero(_next_event_at_or_after(data, since_ts)[1])
    if len(pos) < min_rows:  # purchases are ~2%: fewer rows fit noise (taobao_users has 120)
        return {"action_rows": float(len(pos))}
    pos = np.sort(np.random.default_rng(seed).choice(pos, min(max_rows, len(pos)), replace=False))
    raw, order = [], []
    for sel, h, _ in states_at(model, data, pos):
        raw.append(model.action_head(h).double().cpu())
        order.append(torch.as_tensor(sel))
    logits = torch.cat(raw)[torch.cat(order).argsort()]
    target = torch.as_tensor(data.actions[pos + 1], dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    shift = torch.zeros(logits.shape[1], dtype=torch.float64, requires_grad=True)
    nll = lambda: F.cross_entropy(logits * torch.exp(-log_t) + shift, target)  # noqa: E731
    opt = torch.optim.LBFGS([log_t, shift], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nll()
        loss.backward()
        return loss

    with torch.enable_grad():
        before = nll().item()
        opt.step(closure)
        after = nll().item()
    out = {"action_rows": float(len(pos)), "action_nll_before": before, "action_nll_after": before}
    if math.isfinite(after) and after < before:
        model.action_temp.fill_(float(torch.exp(log_t)))
        model.action_shift.copy_((shift - shift.mean()).float())  # softmax ignores a common shift
        out.update({"action_temp": float(torch.exp(log_t)), "action_nll_after": after})
    return out


def _fusion_parts(model: SeqModel, data: SeqData, positions: np.ndarray, task: str,
                  batch_users: int = 64, rows_per_block: int = 64) -> dict[str, Tensor]:
    """Per position (predicting the next event): the copy path's log-prob of the target (-inf
    outside the ring) and gate, and the explore log-softmax of the target at each of
    TEMPERATURES [N, T] (exact: over every valid id)."""
    acc: dict[str, list[Tensor]] = {"log_rep": [], "gate": [], "log_exp": [], "order": []}
    temps = torch.tensor(TEMPERATURES, device=model.device).view(-1, 1, 1)
    targets = torch.as_tensor(data.items if task == "item" else data.cats, device=model.device)
    for sel, h, r in states_at(model, data, positions, batch_users):
        target = targets[torch.as_tensor(positions[sel] + 1, device=model.device)]
        if task == "item":
            la, gate = model.copy_item(h, r)
            ring, logits, bias, valid = r.items, model.item_explore_logits(h), model.item_bias, model.item_valid
        else:
            la, gate = model.copy_category(h, r)
            ring, logits, bias, valid = r.categories, model.cat_explore_logits(h), model.cat_bias, model.cat_valid
            # the successor term stays untempered, like the bias (the held-out transitions are
            # among the counted ones: each row's own is left out)
            succ = model.cat_successor_scores(r.categories[:, -1], target)
            bias, logits = bias + succ, logits + succ
        hit = (ring == target.unsqueeze(1)) & torch.isfinite(la)
        acc["log_rep"].append(torch.logsumexp(la.masked_fill(~hit, NEG_INF), 1).double())
        acc["gate"].append(gate.double())
        # temperature 1 during calibration: logits = context + bias; only the context is tempered
        context = logits - bias
        bias = bias.masked_fill(~valid, NEG_INF).expand(len(logits), -1)  # [rows, V]
        ct = context.gather(1, target.unsqueeze(1)).squeeze(1)
        bt = bias.gather(1, target.unsqueeze(1)).squeeze(1)
        for a in range(0, len(logits), rows_per_block):  # [T, rows, V] one block at a time
            z = torch.logsumexp(context[a: a + rows_per_block].unsqueeze(0) / temps + bias[a: a + rows_per_block], -1)
            lt = ct[a: a + rows_per_block].unsqueeze(0) / temps.squeeze(-1) + bt[a: a + rows_per_block]
            acc["log_exp"].append((lt - z).T.double())
        acc["order"].append(torch.as_tensor(sel))
    order = torch.cat(acc["order"]).argsort()
    out = {k: torch.cat(v)[order] for k, v in acc.items() if k != "order"}
    out["in_ring"] = torch.isfinite(out["log_rep"])
    return out


SUCCESSOR_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)


@torch.no_grad()
def calibrate_successor_rank(model: SeqModel, data: SeqData, since_ts: float, max_rows: int = 4000,
                             seed: int = 0, k: int = 20) -> dict[str, float]:
    """Fit `model.cat_succ_rank_scale`, the factor on the successor term in served category
    rankings, on the next categories at or after `since_ts`: the factor of SUCCESSOR_SCALES
    with the best MRR@k (full ranking, ties against; ties between factors go to the smaller).
    Why not NLL: on the Taobao time slice a sharper successor term ranks new categories better
    (10x: like train co-occurrence counts), while held-out NLL rises from 3.8 at 1x to 10 at 8x;
    and categories are only ever served as a ranking (bench/history/BENCHMARKS-to-2026-11-25.md, eighth and ninth rounds).
    Run after `calibrate_fusion`, whose temperature it keeps."""
    if model.cat_succ_w is None:
        return {}
    model.eval()
    model.cat_succ_rank_scale.fill_(1.0)
    pos = _held_out_positions(data, since_ts, "category")
    if len(pos) < 50:
        return {"successor_rank_rows": float(len(pos))}
    pos = np.sort(np.random.default_rng(seed).choice(pos, min(max_rows, len(pos)), replace=False))
    rr = torch.zeros(len(SUCCESSOR_SCALES), len(pos), dtype=torch.float64)  # reciprocal ranks [S, N]
    cats = torch.as_tensor(data.cats, device=model.device)
    for sel, h, r in states_at(model, data, pos):
        target = cats[torch.as_tensor(pos[sel] + 1, device=model.device)]
        for j, scale in enumerate(SUCCESSOR_SCALES):
            # the held-out transitions are among the counted ones: each row's own is left out
            scores = model.category_logits(h, r, successor_scale=scale, own=target)
            rank = target_ranks(scores, target).double()
            rr[j, sel] = torch.where(rank <= k, 1.0 / rank, torch.zeros_like(rank)).cpu()
    mrr = rr.mean(1)
    best = int(torch.nonzero(mrr == mrr.max())[0])
    model.cat_succ_rank_scale.fill_(SUCCESSOR_SCALES[best])
    return {"successor_rank_scale": SUCCESSOR_SCALES[best], f"successor_rank_mrr{k}_before": float(mrr[0]),
            f"successor_rank_mrr{k}_after": float(mrr[best]), "successor_rank_rows": float(len(pos))}


def category_successors(data: SeqData, n_categories: int, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Per category, its `top` most frequent next categories over consecutive events of a user,
    and their counts: ([n_categories, top] ids, 0 where there are fewer; counts as float32).
    Repeats count too, as in the item-kNN baseline; ties go to the smaller id."""
    ids = np.zeros((n_categories, top), dtype=np.int64)
    counts = np.zeros((n_categories, top), dtype=np.float32)
    if top == 0 or len(data) < 2:
        return ids, counts
    user = data.user_index
    a, b = data.cats[:-1], data.cats[1:]
    pair = (user[:-1] == user[1:]) & (a > UNKNOWN) & (b > UNKNOWN)
    pairs, n = np.unique(a[pair] * n_categories + b[pair], return_counts=True)
    src, dst = pairs // n_categories, pairs % n_categories
    order = np.lexsort((dst, -n, src))
    src, dst, n = src[order], dst[order], n[order]
    first = np.r_[0, np.flatnonzero(src[1:] != src[:-1]) + 1]
    rank = np.arange(len(src)) - np.repeat(first, np.diff(np.r_[first, len(src)]))
    keep = rank < top
    ids[src[keep], rank[keep]] = dst[keep]
    counts[src[keep], rank[keep]] = n[keep]
    return ids, counts


def fit_calibrated(model: SeqModel, data: SeqData, cfg: TrainConfig, data_end: float) -> dict[str, Any]:
    """Train on `training_views(data)` with the last `calibrate_frac` of the log's time held out
    as targets (still context), then `calibrate_fusion` on it. Returns fit_model's stats plus
    the calibration."""
    ids, counts = category_successors(data, model.cfg.n_categories, model.cfg.cat_successors)
    model.set_category_successors(torch.as_tensor(ids), torch.as_tensor(counts))
    views = training_views(data, cfg)
    if not cfg.calibrate_frac or len(data) < 2:
        return {**fit_model(model, views, cfg, data_end=data_end, counted=True), "trained_events": len(views)}
    qn = 1.0 - cfg.calibrate_frac
    since = float(np.quantile(data.ts, qn))
    w = views.weight if views.weight is not None else np.ones(len(views))
    # the weight of an event is its weight as a target: held-out targets teach nothing
    views.weight = np.where(views.ts < since, w, 0.0)
    stats = fit_model(model, views, cfg, data_end=data_end, counted=True)
    stats["trained_events"] = len(views)
    # the held-out period seen as after a deployment: its ids unknown before `since` dropped
    held_out = cutoff_view(data, qn)
    stats["calibration"] = {**calibrate_fusion(model, held_out, since, seed=cfg.seed),
                            **calibrate_actions(model, held_out, since, seed=cfg.seed),
                            **calibrate_successor_rank(model, held_out, since, seed=cfg.seed)}
    return stats
