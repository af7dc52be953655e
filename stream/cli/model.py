"""TRANSITIONAL SHIM (restructure in progress): `seqstream model` is still registered by
stream.online together with `trainer`."""


def add_parser(sub) -> None:
    return None
