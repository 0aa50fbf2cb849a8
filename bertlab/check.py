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
