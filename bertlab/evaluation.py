"""Scores on held-out reports: a model's outputs over a whole dataset, its loss and metrics (notebook 04).

- :func:`collect_outputs`: the outputs (a tensor or a dict of them) and the batches of every
  item, in the dataset's order; :func:`collect_logits` the logits and labels.
- :func:`evaluate`: the loss and ``metrics_fn(outputs, batch)`` over a dataset;
  :func:`classification_metrics` is the default (accuracy and macro-F1).
- :func:`eval_mode`: a model in eval mode (no dropout) for a block, then back in its mode.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from bertlab.batches import IGNORE_INDEX, encode, make_loader
from bertlab.outputs import cross_entropy, forward_keys, logits_of, model_inputs


def classification_metrics(outputs, batch: dict) -> dict[str, float]:
    """Accuracy and macro-F1 (scikit-learn's, over the classes present) of the argmax of the logits.

    Per-token logits are scored per token, skipping labels equal to ``IGNORE_INDEX``.
    """
    from sklearn.metrics import accuracy_score, f1_score

    pred, true = logits_of(outputs).argmax(-1).flatten(), batch["labels"].flatten()
    keep = true != IGNORE_INDEX
    pred, true = pred[keep].cpu().numpy(), true[keep].cpu().numpy()
    return {"accuracy": float(accuracy_score(true, pred)),
            "macro_f1": float(f1_score(true, pred, average="macro", zero_division=0))}


@contextmanager
def eval_mode(*models):
    """Inside the block the ``models`` are in eval mode (no dropout); after it, each is back in the mode it was in.

    The mode is restored even when the block raises. The caller's models are not otherwise
    changed (no move, no copy). Yields the model (or the tuple of models).
    """
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield models[0] if len(models) == 1 else models
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _cat(chunks: list, fill):
    """Concatenate batches along dim 0, padding dim 1 to the longest (per-token outputs of batches of different T)."""
    if isinstance(chunks[0], Mapping):
        return {k: _cat([c[k] for c in chunks], IGNORE_INDEX if k == "labels" else fill) for k in chunks[0]}
    if chunks[0].dim() >= 2 and len({c.shape[1] for c in chunks}) > 1:
        T = max(c.shape[1] for c in chunks)
        chunks = [F.pad(c, (0, 0) * (c.dim() - 2) + (0, T - c.shape[1]), value=fill) for c in chunks]
    return torch.cat(chunks)


def _pad_across(accelerator, tensors, fill):
    """Pad dim 1 of each tensor (labels with ``IGNORE_INDEX``) to its longest across processes."""
    if isinstance(tensors, Mapping):
        return {k: _pad_across(accelerator, v, IGNORE_INDEX if k == "labels" else fill) for k, v in tensors.items()}
    return accelerator.pad_across_processes(tensors, dim=1, pad_index=fill) if tensors.dim() >= 2 else tensors


def _score(model, batch: dict, keys, device, accelerator) -> tuple:
    """The model's outputs on one batch, and the batch: gathered from every process when there are several."""
    batch = {k: v.to(device) for k, v in batch.items()}
    out = model(**model_inputs(batch, keys))
    if isinstance(out, Mapping):
        out = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    if accelerator is not None and accelerator.num_processes > 1:
        # Each process holds its own shard of the batch, padded to its own longest item: pad dim 1 to
        # the longest across processes, then gather; gather_for_metrics drops the copies of items
        # accelerate adds to even out the last batch, so every item counts once.
        out, batch = _pad_across(accelerator, out, 0.0), _pad_across(accelerator, batch, 0)
        out, batch = accelerator.gather_for_metrics((out, batch))
    return out, batch


@torch.no_grad()
def collect_outputs(model, data: Dataset, *, batch_size: int = 64, accelerator=None,
                    loss_fn: Callable | None = None, progress: bool = False) -> tuple:
    """The model's outputs and the batches for every item of ``data``, in its order, on the CPU: ``(outputs, batch)``.

    Items are batched shortest first, so little padding is computed; per-token outputs of
    batches of different lengths are padded (labels with ``IGNORE_INDEX``). With ``loss_fn``
    a third value is returned: the loss averaged over the batches, weighted by their sizes.
    With an ``accelerator`` running several processes (``accelerate launch``), each scores its
    shard and the outputs, batches and loss cover every item once, on every process.
    The model is left in the mode it was in. ``progress`` shows a bar when the pass takes
    more than a second (off by default: :func:`bertlab.train.fit` validates with it off).
    Raises ValueError naming ``data`` when it is empty, ``progress`` when it is not a bool.
    """
    from tqdm.auto import tqdm

    if len(data) == 0:
        raise ValueError("data is empty: nothing to evaluate")
    if not isinstance(progress, bool):
        raise ValueError(f"progress must be True or False, got {progress!r}")
    order = sorted(range(len(data)), key=data.lengths().__getitem__) if hasattr(data, "lengths") else None
    loader = make_loader(data, batch_size, order=order)
    if accelerator is not None:
        loader = accelerator.prepare(loader)
    device, keys = _model_device(model), forward_keys(accelerator.unwrap_model(model) if accelerator else model)
    outputs, batches, loss_sum = [], [], 0.0
    with eval_mode(model):
        for batch in tqdm(loader, desc="outputs", unit="batch", disable=not progress, delay=1.0):  # delay: quiet under 1 s
            out, batch = _score(model, batch, keys, device, accelerator)
            if loss_fn is not None:  # on the whole (gathered) batch, weighted by its size
                loss = loss_fn(out, batch)
                loss_sum += float(loss["loss"] if isinstance(loss, Mapping) else loss) * len(batch["index"])
            outputs.append({k: v.float().cpu() for k, v in out.items()} if isinstance(out, Mapping)
                           else out.float().cpu())
            batches.append({k: v.cpu() for k, v in batch.items()})
    outputs, batch = _cat(outputs, 0.0), _cat(batches, 0)
    inverse = torch.empty_like(batch["index"])
    inverse[batch["index"]] = torch.arange(len(batch["index"]))
    outputs = {k: v[inverse] for k, v in outputs.items()} if isinstance(outputs, Mapping) else outputs[inverse]
    result = (outputs, {k: v[inverse] for k, v in batch.items()})
    return result + (loss_sum / len(data),) if loss_fn is not None else result


def collect_logits(model, data: Dataset, *, batch_size: int = 64, accelerator=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (N, C) and labels (N,) (None without labels) for every item of ``data``, in its order, on the CPU."""
    outputs, batch = collect_outputs(model, data, batch_size=batch_size, accelerator=accelerator)
    return logits_of(outputs), batch.get("labels")


def evaluate(model, data: Dataset, *, batch_size: int = 64, loss_fn: Callable = cross_entropy,
             metrics_fn: Callable | None = classification_metrics, accelerator=None) -> dict[str, float]:
    """``{'loss', **metrics_fn(outputs, batch)}`` of ``model`` on ``data`` (the default metrics: accuracy and macro-F1)."""
    outputs, batch, loss = collect_outputs(model, data, batch_size=batch_size, accelerator=accelerator, loss_fn=loss_fn)
    return {"loss": loss, **(metrics_fn(outputs, batch) if metrics_fn is not None else {})}


def predict_proba(model, tokenizer, texts: Sequence[str], *, max_length: int = 128, batch_size: int = 64) -> torch.Tensor:
    """Class probabilities (N, C) for raw ``texts``, on the CPU."""
    logits, _ = collect_logits(model, encode(tokenizer, texts, max_length=max_length), batch_size=batch_size)
    return logits.softmax(-1)
