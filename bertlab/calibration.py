"""What the served model's confidence means (notebook 13): the settings that turn its logits into a
decision, saved beside the exported model so that ``bertlab serve`` uses what the notebook measured.

- ``temperature``: the logits are divided by it before the softmax (temperature scaling, Guo et al.
  2017); 1.0 leaves them as they are.
- ``threshold``: a report whose top (calibrated) probability is at least this is automated; below it,
  the service abstains and an engineer reads the report. 0.0 automates everything.
- ``reference``: top probabilities of in-distribution reports (after the temperature), the window a
  drift detector compares the served reports' probabilities against; empty: no drift detection.

The file is JSON, ``<model>.calibration.json`` beside the model unless a path is given.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Calibration:
    """Temperature, abstention threshold and drift reference of a served model."""

    temperature: float = 1.0
    threshold: float = 0.0
    reference: list[float] = field(default_factory=list)
    target_accuracy: float | None = None  # the accuracy the threshold was chosen for, when it was

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if not (isinstance(self.threshold, (int, float)) and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"threshold must be a probability in [0, 1], got {self.threshold!r}")
        ref = np.asarray(self.reference, dtype=float).ravel()
        if ref.size and (not np.isfinite(ref).all() or ref.min() < 0 or ref.max() > 1):
            raise ValueError("reference must hold probabilities in [0, 1]")
        if self.target_accuracy is not None and not 0.0 < self.target_accuracy <= 1.0:
            raise ValueError(f"target_accuracy must be in (0, 1] or None, got {self.target_accuracy!r}")
        self.temperature, self.threshold = float(self.temperature), float(self.threshold)
        self.reference = [float(x) for x in ref]

    def probabilities(self, logits) -> np.ndarray:
        """Softmax of ``logits / temperature`` over the last axis: (..., C) -> (..., C)."""
        z = np.asarray(logits, dtype=np.float64) / self.temperature
        z = z - z.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)

    def confident(self, top_probability) -> np.ndarray:
        """Whether each report is automated: its top probability reaches the threshold."""
        return np.asarray(top_probability, dtype=float) >= self.threshold

    def save(self, path: str | os.PathLike) -> Path:
        """Write the settings as JSON (atomically: a reader never sees half a file)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        """Read settings written by :meth:`save`; a clear error on a missing or malformed file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no calibration file at {path}")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a calibration JSON file: {e}") from None
        known = {"temperature", "threshold", "reference", "target_accuracy"}
        if not isinstance(data, dict) or set(data) - known:
            raise ValueError(f"{path}: expected an object with keys {sorted(known)}, got "
                             f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
        return cls(**data)


def calibration_path(model: str | os.PathLike) -> Path:
    """Where a model's calibration lives: ``<model>.calibration.json`` beside it."""
    model = Path(model)
    return model.with_name(model.name + ".calibration.json")
