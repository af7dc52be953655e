"""Results for people: a plain-text table per run, and a Markdown report with PNG plots."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _fmt(metrics: dict[str, Any], key: str) -> str:
    v = metrics.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "   -  "
    std = metrics.get(f"{key}_std")
    return f"{v:.4f}" + (f"±{std:.4f}" if std is not None else "")


HISTORY_NOTE = ("by history: targets by their user's earlier events in the filtered sequence "
                "(train prefix + earlier test events), disjoint buckets")


def _history_cell(m: dict[str, Any]) -> str:
    return f"{_fmt(m, 'R@20').strip()} / {_fmt(m, 'MRR@20').strip()}"


def _history_rows(result: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Column heads ("<=1 (n=..)", ...) and per ranker its "R@20 / MRR@20" cells."""
    by = result.get("by_history") or {}
    if not by:
        return [], []
    first = next(iter(by.values()))
    heads = [f"{b} (n={m['n']})" for b, m in first.items()]
    return heads, [(name, [_history_cell(m) for m in buckets.values()]) for name, buckets in by.items()]


def _after_text(after: dict[str, dict[str, float]]) -> str:
    """Mean predicted vs observed P(purchase), P(cart) per previous action."""
    return "; ".join(
        f"after a {a} (n={d['n']}): P(purchase) {d['p_purchase']:.3f} (seen {d['obs_purchase']:.3f}), "
        f"P(cart) {d['p_cart']:.3f} (seen {d['obs_cart']:.3f})" for a, d in after.items())


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of one result (one target, one mode)."""
    ks = [k[2:] for k in next(iter(result["models"].values())) if k.startswith("R@") and not k.endswith("_std")]
    cols = [c for k in ks for c in (f"R@{k}", f"MRR@{k}")]
    width = max(8, *(len(n) for n in result["models"]))
    seeds = f", mean±std of {result['seeds']} seeds" if result.get("seeds") else ""
    lines = [f"target={result['target']} mode={result['mode']} n={result['n']} |V|={result['V']}{seeds}"]
    cell = max(len(_fmt(m, c)) for m in result["models"].values() for c in cols)
    lines.append(f"{'model':<{width}}  " + "  ".join(f"{c:>{cell}}" for c in cols))
    for name, m in result["models"].items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{_fmt(m, c):>{cell}}" for c in cols))
    heads, rows = _history_rows(result)
    if rows:
        lines.append(f"{HISTORY_NOTE}; R@20 / MRR@20")
        hw = max(len(c) for c in heads + [c for _, cells in rows for c in cells])
        lines.append(f"{'model':<{width}}  " + "  ".join(f"{h:>{hw}}" for h in heads))
        for name, cells in rows:
            lines.append(f"{name:<{width}}  " + "  ".join(f"{c:>{hw}}" for c in cells))
    for name, m in result.get("action", {}).items():
        lines.append(
            f"next action [{name}] n={m['n']}: AUC purchase {_fmt(m, 'auc_purchase')}, cart {_fmt(m, 'auc_cart')}; "
            f"AP purchase {_fmt(m, 'ap_purchase')}, cart {_fmt(m, 'ap_cart')}; log-loss {_fmt(m, 'log_loss')}"
        )
        if m.get("after"):
            lines.append(f"  [{name}] " + _after_text(m["after"]))
    churn = result.get("churn")
    if churn:
        head = f"churn H={churn['horizon_s'] / 3600:g}h n={churn['n']}"
        if churn.get("note"):
            lines.append(f"{head}: {churn['note']}")
        for name, m in churn["models"].items():
            lines.append(
                f"{head} [{name}] positive rate {_fmt(m, 'pos_rate')}: "
                f"ROC-AUC {_fmt(m, 'roc_auc')}, PR-AUC {_fmt(m, 'pr_auc')}"
            )
    lines += _interest_lines(result)
    return "\n".join(lines)


def _interest_lines(result: dict[str, Any]) -> list[str]:
    """Interest profiles: next event's category in the top-1 / top-5 interests."""
    it = result.get("interests")
    if not it:
        return []
    head = f"interests half-life {it['half_life_h']:g}h n={it['n']}"
    return [f"{head} [{name}] next category in top-1 {_fmt(m, 'top1')}, top-5 {_fmt(m, 'top5')}"
            for name, m in it["models"].items()]


def _interest_markdown(result: dict[str, Any]) -> list[str]:
    it = result.get("interests")
    if not it:
        return []
    md = [f"### Interests (half-life {it['half_life_h']:g} h, model blend {it['blend']:g}, n = {it['n']})", "",
          "Share of scored events whose category is in the user's top-1 / top-5 interests before it.", "",
          "| profile | top-1 | top-5 |", "|---|---|---|"]
    md += [f"| {name} | {_fmt(m, 'top1').strip()} | {_fmt(m, 'top5').strip()} |" for name, m in it["models"].items()]
    return md + [""]


def _markdown_table(result: dict[str, Any]) -> str:
    keys = [k for k in next(iter(result["models"].values())) if "@" in k and not k.endswith("_std")]
    out = ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, m in result["models"].items():
        out.append(f"| {name} | " + " | ".join(_fmt(m, k).strip() for k in keys) + " |")
    return "\n".join(out)


def write_report(results: list[dict[str, Any]], out_dir: str | Path, title: str = "seqstream evaluation",
                 source: str | None = None) -> Path:
    """Markdown report plus PNG plots (Recall@K curves; action-head reliability diagrams)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", ""]
    if source:
        md += [f"Log: `{source}`", ""]
    md += ["Protocol: EVALUATION.md v1 (full ranking, ties count against, micro averages).", ""]
    for res in results:
        tag = f"{res['target']}_{res['mode']}"
        seeds = f", mean±std of {res['seeds']} seeds" if res.get("seeds") else ""
        md += [f"## {res['target']} / {res['mode']}", "", f"n = {res['n']} scored events, |V| = {res['V']}{seeds}", ""]
        md += [_markdown_table(res), ""]
        heads, rows = _history_rows(res)
        if rows:
            md += ["### By history (R@20 / MRR@20)", "", HISTORY_NOTE[0].upper() + HISTORY_NOTE[1:] + ".", "",
                   "| model | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
            md += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
            md.append("")

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, curve in res["curve"]["recall"].items():
            ax.plot(res["curve"]["K"], curve, marker=".", label=name)
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K")
        ax.set_title(f"{res['target']} / {res['mode']} (n={res['n']}, |V|={res['V']})")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"recall_{tag}.png", dpi=110)
        plt.close(fig)
        md += [f"![Recall@K](recall_{tag}.png)", ""]

        action = res.get("action", {})
        if action:
            md += ["### Next action", "", "| model | n | AUC purchase | AUC cart | AP purchase | AP cart | log-loss |",
                   "|---|---|---|---|---|---|---|"]
            for name, m in action.items():
                md.append(f"| {name} | {m['n']} | " + " | ".join(
                    _fmt(m, k).strip() for k in ("auc_purchase", "auc_cart", "ap_purchase", "ap_cart", "log_loss")) + " |")
            md.append("")
            for name, m in action.items():
                if m.get("after"):
                    md += [f"{name}: " + _after_text(m["after"]), ""]
            for name, m in action.items():
                if name == "prior":
                    continue  # a constant: its reliability diagram is a single point per action
                fig, ax = plt.subplots(figsize=(5, 5))
                ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
                for a, cal in m["calibration"].items():
                    ax.plot(cal["mean_pred"], cal["frac_pos"], marker="o", label=a)
                ax.set_xlabel("predicted probability")
                ax.set_ylabel("observed frequency")
                ax.set_title(f"next-action calibration: {name} ({res['target']}/{res['mode']})")
                ax.legend()
                fig.tight_layout()
                safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
                fig.savefig(out / f"calibration_{tag}_{safe}.png", dpi=110)
                plt.close(fig)
                md += [f"![calibration {name}](calibration_{tag}_{safe}.png)", ""]

        churn = res.get("churn")
        if churn:
            md += [f"### Churn (H = {churn['horizon_s'] / 3600:g} h, n = {churn['n']})", ""]
            if churn.get("note"):
                md += [churn["note"], ""]
            if churn["models"]:
                md += ["| model | positive rate | ROC-AUC | PR-AUC |", "|---|---|---|---|"]
                for name, m in churn["models"].items():
                    md.append(f"| {name} | " + " | ".join(_fmt(m, k).strip() for k in ("pos_rate", "roc_auc", "pr_auc")) + " |")
                md.append("")
        md += _interest_markdown(res)
    path = out / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    return path
