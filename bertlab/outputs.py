"""What a model returns and how the loop reads it: logits, the default loss, the inputs a model takes.

Models return their outputs: a tensor of logits, a dict, or a ``transformers`` ModelOutput
(a dict too). A loss function of ``(outputs, batch)`` turns them into the loss, so one loop
trains every model of the course.
"""
from __future__ import annotations

import inspect
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from bertlab.batches import IGNORE_INDEX


def logits_of(outputs) -> torch.Tensor:
    """The logits in a model's outputs: the tensor itself, or the ``logits`` entry of a dict or ModelOutput."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping) and "logits" in outputs:
        return outputs["logits"]
    raise TypeError(f"outputs must be a logits tensor or hold 'logits'; got {type(outputs).__name__}"
                    + (f" with {list(outputs)}" if isinstance(outputs, Mapping) else "")
                    + ": pass fit a loss_fn (and metrics_fn) that reads them")


def cross_entropy(outputs, batch: dict) -> torch.Tensor:
    """The default ``loss_fn``: cross-entropy of the logits against ``batch['labels']``.

    Logits (B, C) with labels (B,), or per-token logits (B, T, C) with labels (B, T), where
    ``IGNORE_INDEX`` marks tokens without a label (padding, later WordPieces of a word).
    """
    z = logits_of(outputs)
    return F.cross_entropy(z.flatten(0, -2), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)


def forward_keys(model: nn.Module) -> set[str] | None:
    """The batch keys ``model.forward`` accepts (None: it takes ``**kwargs``, so all but labels and index)."""
    params = inspect.signature(model.forward).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def model_inputs(batch: dict, keys: set[str] | None) -> dict:
    """The entries of ``batch`` the model takes (see :func:`forward_keys`); targets stay for the loss."""
    if keys is None:
        return {k: v for k, v in batch.items() if k not in ("labels", "index")}
    return {k: v for k, v in batch.items() if k in keys}
