"""Config fields that document and check themselves: `option(default, help, ...)` puts a field's
meaning, its valid range or choices and its old flat name in the dataclass field's metadata, so
`ov2 train --list-keys`, the overrides and the up-front validation all read one declaration."""

from __future__ import annotations

import math
from dataclasses import MISSING, field, fields

from .errors import UserError


def option(default, help: str, *, low=None, high=None, low_open: bool = False, high_open: bool = True,
           choices: tuple | None = None, alias: str | None = None, derived: bool = False):
    """A dataclass field with its meaning (help) and its valid values: low..high (low included unless
    low_open; high excluded unless high_open=False), or one of choices. alias: the field's flat key
    (`ov2 train alias=...`) where it differs from the field's name. derived: set by the program (e.g.
    from the tokenizer), not a key a user sets."""
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "high_open": high_open,
            "choices": choices, "alias": alias, "derived": derived}
    return field(default=default, metadata=meta)


def _number(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"  # a bound of 2**28 shown whole


def _range_text(meta: dict) -> str:
    low = "" if meta["low"] is None else f"{'(' if meta['low_open'] else '['}{_number(meta['low'])}"
    high = "" if meta["high"] is None else f"{_number(meta['high'])}{')' if meta['high_open'] else ']'}"
    if low and high:
        return f"in {low}, {high}"
    if low:
        return f"{'>' if meta['low_open'] else '>='} {_number(meta['low'])}"
    return f"{'<' if meta['high_open'] else '<='} {_number(meta['high'])}" if high else ""


def check_value(name: str, value, meta: dict) -> None:
    """A one-line UserError where value is outside the field's declared range or choices."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value}")
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise UserError(f"unknown {name} {value!r}: use one of {', '.join(map(str, meta['choices']))}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    low, high = meta.get("low"), meta.get("high")
    too_low = low is not None and (value <= low if meta.get("low_open") else value < low)
    too_high = high is not None and (value >= high if meta.get("high_open", True) else value > high)
    if too_low or too_high:
        raise UserError(f"{name} must be {_range_text(meta)}, got {value}")


def check_fields(obj, prefix: str = "") -> None:
    """Every field of a dataclass instance against its declared range (see option())."""
    for f in fields(obj):
        if f.metadata:
            check_value(prefix + f.name, getattr(obj, f.name), f.metadata)


def describe(f) -> str:
    """A field's meaning, with its range or choices, for --list-keys."""
    meta = f.metadata
    extra = ("one of " + ", ".join(map(str, meta["choices"]))) if meta.get("choices") else _range_text(meta)
    return meta.get("help", "") + (f" ({extra})" if extra else "")


def default_of(f):
    return f.default if f.default is not MISSING else f.default_factory()


def with_default(base, name: str, default):
    """The field `name` of dataclass `base`, meaning and range kept, with another default (for a
    subclass that only changes defaults)."""
    meta = next(f for f in fields(base) if f.name == name).metadata
    return field(default=default, metadata=meta)
