"""Knowledge distillation: a small student learns from the fine-tuned teacher (notebook 08).

- :func:`kd_loss`: the distillation loss of Hinton et al. (2015), soft targets at
  temperature T (scaled by T²) mixed with the hard-label cross-entropy by alpha.
- :func:`student_from_teacher`: a student with a subset of the teacher's layers, initialised
  from the teacher's embeddings, those layers and its head (as DistilBERT, Sanh et al. 2019,
  took every second layer of BERT-base).
- :func:`teacher_logits`, :func:`distillation_loss`, :func:`distill`: train a student on the
  teacher's logits with :func:`bertlab.train.fit` (the same optimizer, schedule, clipping and
  early stopping); the training reports carry the teacher's logits as a field of each item.

The course's own student (trained once, cached) is ``bertlab.artifacts.distilled_student``.
"""
from __future__ import annotations

import copy
from functools import partial
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bertlab import args, train


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None, *,
            temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """The distillation loss (a scalar), averaged over the batch:

    ``alpha * T² * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)``

    ``student_logits`` and ``teacher_logits`` are (B, C); ``labels`` (B,) class ids, needed
    unless ``alpha == 1``. The T² keeps the soft term's gradients on the scale of the hard
    term's as T grows (Hinton et al. 2015, section 2). No gradient flows into the teacher.
    Raises ValueError for ``temperature <= 0``, ``alpha`` outside [0, 1] or mismatched shapes.
    """
    args.number("temperature", temperature, low=0, low_open=True)
    args.probability("alpha (the weight of the soft-target loss)", alpha)
    def shape(x):
        return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__

    if not isinstance(student_logits, torch.Tensor) or student_logits.dim() != 2:
        raise ValueError(f"student_logits must be a (B, C) tensor, got {shape(student_logits)}")
    if not isinstance(teacher_logits, torch.Tensor) or teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits must have the student's shape {shape(student_logits)}, got {shape(teacher_logits)}")
    if alpha < 1:
        if labels is None:
            raise ValueError(f"labels are needed when alpha < 1 (the hard-label term has weight {1 - alpha:g})")
        if labels.shape != student_logits.shape[:1]:
            raise ValueError(f"labels must have shape ({student_logits.shape[0]},), got {tuple(labels.shape)}")
    T = float(temperature)
    soft = F.kl_div(F.log_softmax(student_logits / T, dim=-1), F.log_softmax(teacher_logits.detach() / T, dim=-1),
                    reduction="batchmean", log_target=True) * T * T
    if alpha == 1:
        return soft
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1 - alpha) * hard if alpha > 0 else hard


def check_layers(layers: Sequence[int], n_teacher: int) -> list[int]:
    """``layers`` as a list if they are strictly increasing layer indices of an ``n_teacher``-layer teacher; else ValueError."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) == 0:
        raise ValueError(f"layers must be a non-empty list of teacher layer indices, got {layers!r}")
    out = [args.integer(f"layers[{k}] (a layer of the {n_teacher}-layer teacher)", i, 0, n_teacher - 1)
           for k, i in enumerate(layers)]
    if out != sorted(set(out)):
        raise ValueError(f"layers must be strictly increasing (each teacher layer once, in order), got {list(layers)}")
    return out


def student_from_teacher(teacher: nn.Module, layers: Sequence[int]) -> nn.Module:
    """A copy of ``teacher`` (a :class:`bertlab.train.SequenceClassifier`) keeping only ``layers``.

    The student gets the teacher's embeddings, its layers ``layers`` (student layer k is a
    copy of teacher layer ``layers[k]``), the pooler and the classification head; the
    teacher is not changed. Works for ``transformers`` and ``bertlab.model`` BERTs. Raises
    ValueError for an empty, unordered or out-of-range ``layers``.
    """
    encoder = getattr(teacher, "encoder", None)
    config = getattr(encoder, "config", None)
    if config is None or not hasattr(encoder, "encoder"):
        raise TypeError("teacher must be a bertlab.train.SequenceClassifier around a BERT encoder "
                        f"(with .encoder.config and .encoder.encoder.layer), got {type(teacher).__name__}")
    layers = check_layers(layers, config.num_hidden_layers)
    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = len(layers)
    student_encoder = type(encoder)(cfg)
    rename = {f"encoder.layer.{t}.": f"encoder.layer.{s}." for s, t in enumerate(layers)}
    state = {}
    for name, value in encoder.state_dict().items():
        if name.startswith("encoder.layer."):
            prefix = ".".join(name.split(".")[:3]) + "."
            if prefix not in rename:
                continue  # a layer the student leaves out
            name = rename[prefix] + name[len(prefix):]
        state[name] = value.clone()
    student_encoder.load_state_dict(state, strict=True)
    student = train.SequenceClassifier(student_encoder, teacher.num_labels, hidden_size=teacher.classifier.in_features,
                                       dropout=teacher.dropout.p)
    student.classifier.load_state_dict(teacher.classifier.state_dict())
    return student.to(next(teacher.parameters()).device).train(teacher.training)


# ---------------------------------------------------------------- training


def teacher_logits(teacher: nn.Module, data: train.TextDataset, batch_size: int = 64) -> torch.Tensor:
    """The teacher's logits (N, C) for every item of ``data`` (eval mode, so no dropout)."""
    logits, _ = train.collect_logits(teacher, data, batch_size=batch_size)
    return logits


def _distillation_loss(outputs, batch: dict, *, temperature: float, alpha: float) -> torch.Tensor:
    if "teacher_logits" not in batch:  # validation reports: the plain loss, comparable between students
        return train.cross_entropy(outputs, batch)
    logits = train.logits_of(outputs)  # (B, C)
    return kd_loss(logits, batch["teacher_logits"].to(logits.dtype), batch.get("labels"),
                   temperature=temperature, alpha=alpha)


def distillation_loss(temperature: float = 2.0, alpha: float = 0.5):
    """``loss_fn(outputs, batch)`` for :func:`bertlab.train.fit`: :func:`kd_loss` against ``batch["teacher_logits"]``.

    Batches without teacher logits (the validation reports) get the cross-entropy, so the
    validation loss stays comparable between students. Bad settings raise ValueError now,
    not in the middle of training.
    """
    args.number("temperature", temperature, low=0, low_open=True)
    args.probability("alpha (the weight of the soft-target loss)", alpha)
    return partial(_distillation_loss, temperature=temperature, alpha=alpha)


def distill(student: nn.Module, teacher_logits_train: torch.Tensor, train_data: train.TextDataset,
            validation: train.TextDataset | None = None, config: train.TrainConfig | None = None, *,
            temperature: float = 2.0, alpha: float = 0.5, progress: bool = True) -> train.TrainResult:
    """Train ``student`` on ``train_data`` with :func:`kd_loss` against ``teacher_logits_train`` (N, C).

    The logits travel with the reports (``train_data.with_fields(teacher_logits=...)``);
    everything else is :func:`bertlab.train.fit` with ``config`` (AdamW, warm-up and decay,
    clipping, early stopping on the validation macro-F1 with plain labels). ``alpha = 0`` is
    training on the labels only; ``alpha = 1`` needs no labels. Returns fit's
    :class:`~bertlab.train.TrainResult`.
    """
    loss_fn = distillation_loss(temperature, alpha)
    if train_data.labels is None and alpha < 1:
        raise ValueError("train_data has no labels: encode it with labels=... (alpha < 1 needs them)")
    if teacher_logits_train.dim() != 2 or len(teacher_logits_train) != len(train_data):
        raise ValueError(f"teacher_logits_train must be (N, C) with N = len(train_data) = {len(train_data)}, "
                         f"got {tuple(teacher_logits_train.shape)}")
    data = train_data.with_fields(teacher_logits=teacher_logits_train.detach().cpu())
    return train.fit(student, data, validation, config, loss_fn=loss_fn, progress=progress)
