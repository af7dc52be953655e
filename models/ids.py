"""Ids as shops have them: user, item and category ids are integers or strings (SKUs, UUIDs).

Normalisation (`normalize_id`), the one rule every entry point uses:
- an integer 0..2**63-1 is itself (bool is not an integer here: a boolean id is a producer bug);
- a string of 1..128 UTF-8 bytes is an id. If it is the canonical decimal form of such an
  integer ("0", or digits not starting with "0", nothing else), it IS that integer: "541312140"
  and 541312140 are one id. Every other string is kept exactly as sent: "007", "+7", "-7", " 7"
  and "7.0" are strings distinct from 7. Zero-padded codes ("007", ZIP codes, EANs) are distinct
  codes in the catalogues that use them; folding them onto 7 would merge "007" and "7" and could
  not echo the shop's own id back, while the canonical decimal string loses nothing.
- anything else (empty, longer than 128 bytes, float, None, list, dict, a negative or too large
  integer) is malformed.

Inside the models ids live in int64 arrays as *keys* (`id_key`): an integer is its own key; a
string is mapped to a 63-bit blake2b hash placed in the negative range [-2**63, -2], so it can
never collide with an integer id nor with -1 (the "no category" sentinel). String keys are
labelled back to their text by `IdLabels` (the vocabulary keeps the labels of its ids, and
predictions echo them). Two distinct strings with one key would be confused, so `IdLabels`
refuses them with an error (for 10^7 string ids the chance is about 1 in 200,000).
"""
from __future__ import annotations

import hashlib
import re
from typing import Any, Iterable, Union

Id = Union[int, str]

MAX_ID = 2**63 - 1
MAX_ID_BYTES = 128
_CANONICAL = re.compile(r"(?:0|[1-9][0-9]{0,18})\Z")  # at most 19 digits: may fit int64
_STRING_KEYS = 2**63 - 1  # keys -2 .. -2**63


class BadId(ValueError):
    """A malformed id; the message names the field."""


def normalize_id(value: Any, name: str) -> Id:
    """The canonical id of `value`, or BadId naming the field `name`."""
    if isinstance(value, bool):
        raise BadId(f"field {name!r} must be an integer or a string, got bool")
    if isinstance(value, int):
        if not 0 <= value <= MAX_ID:
            raise BadId(f"field {name!r} out of range: {value}")
        return value
    if isinstance(value, str):
        if not value:
            raise BadId(f"field {name!r} is an empty string")
        if _CANONICAL.match(value):
            number = int(value)
            if number <= MAX_ID:
                return number
            return value  # a 19-digit string above int64: an opaque code, like any other
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates: not UTF-8 at all
            raise BadId(f"field {name!r} is not valid UTF-8") from None
        if size > MAX_ID_BYTES:
            raise BadId(f"field {name!r} is {size} UTF-8 bytes, limit {MAX_ID_BYTES}")
        return value
    raise BadId(f"field {name!r} must be an integer or a string, got {type(value).__name__}")


def string_key(text: str) -> int:
    """The int64 key of a (non-canonical) string id: negative, never -1."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return -2 - int.from_bytes(digest, "big") % _STRING_KEYS


def id_key(ident: Id) -> int:
    """The int64 key of a normalised id (an integer is its own key)."""
    return ident if type(ident) is int else string_key(ident)  # type: ignore[arg-type]


class IdLabels:
    """key -> string for the string ids seen (integers need no label)."""

    def __init__(self, pairs: Iterable[tuple[int, str]] = ()) -> None:
        self.text: dict[int, str] = {}
        for key, text in pairs:
            self._add(int(key), text)

    def _add(self, key: int, text: str) -> None:
        old = self.text.setdefault(key, text)
        if old != text:
            raise ValueError(f"id hash collision: {old!r} and {text!r} share key {key}; "
                             "rename one of them")

    def key(self, ident: Id) -> int:
        """The key of a normalised id, remembering its text if it is a string."""
        if type(ident) is int:
            return ident  # type: ignore[return-value]
        key = string_key(ident)  # type: ignore[arg-type]
        if key not in self.text:
            self.text[key] = ident  # type: ignore[assignment]
        elif self.text[key] != ident:
            self._add(key, ident)  # type: ignore[arg-type]
        return key

    def ident(self, key: int) -> Id:
        """The id of a key: the string of a string key, the integer itself otherwise."""
        return self.text.get(key, key) if key < -1 else key

    def __len__(self) -> int:
        return len(self.text)
