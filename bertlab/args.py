"""Argument checks shared by the package: each raises ValueError naming the argument and what was expected.

Public functions check their arguments once, at the call a learner makes; nothing here
runs per forward pass or per training step.
"""
from __future__ import annotations

import math


def is_int(value) -> bool:
    """An int, and not a bool (True is an int to Python, not to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value) -> bool:
    """An int or a float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` if it is an int in ``low..high`` (either bound may be None)."""
    if not is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            want = f"an int in {low}..{high}"
        elif low is not None:
            want = "a positive int" if low == 1 else f"an int >= {low}"
        else:
            want = "an int" if high is None else f"an int <= {high}"
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return value


def positive_int(name: str, value) -> int:
    """``value`` if it is an int >= 1."""
    return integer(name, value, low=1)


def number(name: str, value, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float if it is a finite number within the bounds (open bounds exclude the bound itself)."""
    ok = is_real(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        if low is not None and high is not None:
            want = f"a number in {lo}, {hi}"
        elif low is not None:
            want = f"a finite number {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            want = f"a finite number {'<' if high_open else '<='} {high:g}"
        else:
            want = "a finite number"
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return float(value)


def probability(name: str, value) -> float:
    """``value`` as a float if it is a number in [0, 1]."""
    return number(name, value, 0.0, 1.0)


def indices(name: str, values, upper: int, upper_name: str) -> None:
    """Raise unless every entry of the integer tensor ``values`` is in ``0..upper-1`` (e.g. token ids).

    Reads the minimum and maximum back to the host: on an accelerator that waits for it, so
    call it once per public call, not per forward pass or training step.
    """
    if values.numel():
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= upper:
            raise ValueError(f"{name} must be in [0, {upper_name}={upper}), got values in [{lo}, {hi}]")


def one_of(name: str, value, choices):
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def optional(check, name: str, value, *args, **kwargs):
    """None, or ``check(name, value, ...)``."""
    return None if value is None else check(name, value, *args, **kwargs)
