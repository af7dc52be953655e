"""TRANSITIONAL SHIM (restructure in progress): `seqstream train` from models.train."""
from models import train as _train


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train the GRU offline from a historical log")
    _train.add_train_arguments(p)
    p.set_defaults(func=_train.run_train_command)
