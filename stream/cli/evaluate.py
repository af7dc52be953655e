"""TRANSITIONAL SHIM (restructure in progress): `seqstream evaluate` from models.evaluate."""
from models import evaluate as _evaluate


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate under ../shared/EVALUATION.md, beside baselines")
    _evaluate.add_evaluate_arguments(p)
    p.set_defaults(func=_evaluate.run_evaluate_command)
