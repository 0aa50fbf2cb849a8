"""Checks used by the graded tests: they say exactly what is wrong.

A failing check raises AssertionError with the rule that was broken, the shapes,
and the first differing value, so a learner can fix the code without guessing.
"""
from __future__ import annotations

import torch


def assert_shape(actual, expected: tuple, name: str = "output") -> None:
    """``actual`` is a tensor of shape ``expected`` (None in ``expected`` matches any size)."""
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{name} should be a torch.Tensor, got {type(actual).__name__}")
    shape = tuple(actual.shape)
    ok = len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))
    if not ok:
        raise AssertionError(f"{name} should have shape {tuple(expected)}, got {shape}")


def assert_close(actual, expected, name: str = "output", atol: float = 1e-5, rtol: float = 0.0) -> None:
    """``actual`` equals ``expected`` elementwise within ``atol + rtol*|expected|``.

    On failure the message gives the shape, how many values differ, the largest
    difference and the first differing position with both values.
    """
    expected = torch.as_tensor(expected)
    assert_shape(actual, tuple(expected.shape), name)
    if actual.dtype.is_floating_point != expected.dtype.is_floating_point:
        raise AssertionError(f"{name} should have a {'floating' if expected.dtype.is_floating_point else 'integer'} "
                             f"dtype like {expected.dtype}, got {actual.dtype}")
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if torch.isnan(a).any() and not torch.isnan(e).any():
        first = tuple(torch.nonzero(torch.isnan(a))[0].tolist())
        raise AssertionError(f"{name} contains NaN (first at index {first}); expected none")
    bad = ~torch.isclose(a, e, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        idx = tuple(torch.nonzero(bad)[0].tolist())
        diff = (a - e).abs()[bad].max().item()
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.numel()} values differ (largest difference {diff:.3g}, "
            f"tolerance {atol:g}). First at index {idx}: got {a[idx].item():.6g}, expected {e[idx].item():.6g}"
        )


# ---------------------------------------------------------------- what the learner should see


def expect(claim: str, holds: bool, measured: str = "") -> bool:
    """Check a notebook's own result against what its "What you should see" box states.

    Prints ``as expected: <claim> (<measured>)`` when ``holds``; raises AssertionError
    otherwise, so a full run (``make course``, ``make test-full``) that falls outside fails. In
    grading mode (``NBGRADER_EXECUTION`` set) the runs are reduced, so the claim is printed, not
    checked.
    """
    import os

    shown = f" ({measured})" if measured else ""
    if os.environ.get("NBGRADER_EXECUTION"):
        print(f"grading mode, reduced run: not checked: {claim}{shown}")
        return bool(holds)
    if not holds:
        raise AssertionError(f"not what this notebook expects: {claim}{shown}. Rerun from the top; if it persists, "
                             "something changed in the code or the data.")
    print(f"as expected: {claim}{shown}")
    return True


def expect_between(what: str, value: float, low: float, high: float, fmt: str = ".3f") -> bool:
    """:func:`expect` that ``low <= value <= high``, e.g. ``expect_between("test macro-F1", f1, 0.84, 0.90)``."""
    return expect(f"{what} between {low:{fmt}} and {high:{fmt}}", low <= value <= high, f"measured {value:{fmt}}")


# ---------------------------------------------------------------- the learner's code, used downstream
_PASSED: dict[str, object] = {}  # name -> the function object whose visible test passed


class NotReady(RuntimeError):
    """A learner's function that a cell needs has not passed its visible test. Jupyter shows the
    one-line message, not a traceback (IPython's ``_render_traceback_`` hook)."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def mark_passed(*functions) -> None:
    """Record, at the end of a test cell's visible tests, that these functions passed them."""
    for f in functions:
        _PASSED[f.__name__] = f


def needs(*functions) -> None:
    """Stop the cell with one line (:class:`NotReady`) unless each of these learner's functions, as
    defined now, passed its visible test: a later cell that runs the learner's code on the lesson's
    data says "fix `align_labels` first" instead of failing somewhere inside the library."""
    for f in functions:
        name = getattr(f, "__name__", None)
        if not callable(f) or name is None:
            raise TypeError(f"needs() takes the learner's functions, got {f!r}")
        if _PASSED.get(name) is not f:
            raise NotReady(f"fix `{name}` first: its test above fails (or has not run since `{name}` was defined)")
