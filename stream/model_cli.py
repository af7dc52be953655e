"""`seqstream train` and `seqstream evaluate`: thin wrappers over models.train / models.evaluate."""
from __future__ import annotations

import argparse


def _lazy(module: str, runner: str):
    def run(args: argparse.Namespace) -> int:
        import importlib

        return importlib.import_module(module).__getattribute__(runner)(args)
    return run


def add_cli(sub) -> None:
    from models import evaluate, train

    p = sub.add_parser("train", help="train the GRU offline from a historical log")
    train.add_train_arguments(p)
    p.set_defaults(func=_lazy("models.train", "run_train_command"))

    p = sub.add_parser("evaluate", help="evaluate under ../shared/EVALUATION.md, beside baselines")
    evaluate.add_evaluate_arguments(p)
    p.set_defaults(func=_lazy("models.evaluate", "run_evaluate_command"))
