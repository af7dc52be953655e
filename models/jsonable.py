"""Plain JSON/msgpack values from nested results: the one converter for reports and manifests."""
from __future__ import annotations

import math
from typing import Any


def to_jsonable(obj: Any, digits: int | None = None) -> Any:
    """Dict keys become strings, tuples lists, and NaN (an undefined metric, e.g. an AUC with one
    class) null: strict JSON has no NaN. `digits` rounds floats (model manifests keep 6)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, digits) for v in obj]
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        return obj if digits is None else round(obj, digits)
    return obj
