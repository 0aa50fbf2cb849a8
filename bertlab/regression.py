"""A regression head beside the classification heads: the severity score (notebook 06).

The generator sets a report's severity by cutting a number, the severity score
(``bertlab.data.severity_score``: failure type + root cause + stage + impact), at
``SEVERITY_CUTS``. The classes low / medium / high forget how far a report is from a cut; a
head that predicts the score itself keeps the order and the distance.

- :func:`severity_scores`: the score of each report (from its clean labels, stage and impact).
- :class:`ScoreScale`: the mean and standard deviation of the training scores; the head learns
  ``z = (s - mean) / std``, so its loss starts near 1, the size of a classification loss.
- :func:`regression_loss`: MSE or Huber, averaged over the reports that have a score (NaN: none).
- :class:`ScoredStates`, :class:`ScoredTopLayers`: ``bertlab.frozen``'s states and top layers with a
  score per report and one more head, a linear map to one number: ``{task: logits, "score": (B,)}``.
- :func:`scored_loss`, :func:`fit_scored`: ``sum_t w_t L_t + weight * L_score``, trained by
  :func:`bertlab.train.fit`; :func:`score_metrics`, :func:`severity_from_score`,
  :func:`evaluate_scored`: MAE, RMSE, Spearman's rho and R^2 in score points, and the severity
  class the predicted score falls in.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from bertlab import args, frozen, train
from bertlab import multitask as mt
from bertlab.data import SEVERITY_CUTS, severity_score

#: The key of the score head's output (B,) and of the batch's targets (B,).
SCORE = "score"
LOSSES = ("mse", "huber")


def severity_scores(reports) -> list[float]:
    """The severity score of each report (FailureReports): the generator's number before the cut into classes.

    Computed from the clean failure type and root cause, the stage and the impact, so it has
    none of the annotators' label noise. Raises ValueError naming ``reports`` for one that
    lacks those fields.
    """
    out = []
    for i, r in enumerate(reports):
        try:
            out.append(float(severity_score(r.clean_failure_type, r.clean_root_cause, r.stage, r.impact)))
        except (AttributeError, KeyError) as e:
            raise ValueError(f"reports[{i}] must be a bertlab.data.FailureReport with clean labels, stage and impact; "
                             f"{type(e).__name__}: {e}") from None
    return out


@dataclass(frozen=True)
class ScoreScale:
    """``z = (s - mean) / std``: the unit the head predicts in; :meth:`of` the training scores."""

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self):
        args.number("mean", self.mean)
        args.number("std", self.std, low=0, low_open=True)

    @classmethod
    def of(cls, scores: Sequence[float]) -> "ScoreScale":
        """The mean and (population) standard deviation of ``scores``; raises ValueError for fewer than 2 or all equal."""
        s = torch.tensor([float(v) for v in scores], dtype=torch.float64)
        if len(s) < 2 or float(s.std(correction=0)) == 0:
            raise ValueError(f"scores must hold at least 2 values that are not all equal, got {len(s)} value(s)")
        return cls(float(s.mean()), float(s.std(correction=0)))

    def to_z(self, s):
        return (torch.as_tensor(s, dtype=torch.float32) - self.mean) / self.std

    def from_z(self, z):
        return torch.as_tensor(z, dtype=torch.float32) * self.std + self.mean


def regression_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse", delta: float = 1.0) -> torch.Tensor:
    """The mean squared error (``"mse"``) or Huber loss (``"huber"``) over the reports whose target is not NaN.

    ``pred`` and ``target`` are float tensors (B,). Huber is ``r^2 / 2`` for ``|r| <= delta``
    and ``delta * (|r| - delta / 2)`` beyond (``F.huber_loss``): a wrong report pulls with a
    force of at most ``delta``. With no target in the batch the loss is 0 (not NaN) and sends
    no gradient. Raises ValueError naming the argument for shapes that differ, a bad ``kind``
    or ``delta``.
    """
    args.one_of("kind", kind, LOSSES)
    args.number("delta", delta, low=0, low_open=True)
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, torch.Tensor) or x.dim() != 1 or not x.dtype.is_floating_point:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a float tensor of shape (B,), got {got}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    keep = ~torch.isnan(target)
    p, y = pred[keep], target[keep].to(pred.dtype)
    err = F.mse_loss(p, y, reduction="sum") if kind == "mse" else F.huber_loss(p, y, reduction="sum", delta=delta)
    return err / keep.sum().clamp(min=1)  # the mean over the reports with a target; 0 when there are none


# ---------------------------------------------------------------- states and model


class ScoredStates(frozen.HiddenStates):
    """``frozen.HiddenStates`` with tasks and one number per report (NaN: none); batches add ``score`` (B,).

    ``ScoredStates.of(states, scores)`` adds ``scores`` (already in the head's unit, e.g.
    :meth:`ScoreScale.to_z`) to a :class:`~bertlab.frozen.HiddenStates` with tasks.
    """

    def __init__(self, states, labels, tasks: Sequence[str], scores: Sequence[float]):
        super().__init__(states, labels, tasks)
        if not tasks:
            raise ValueError("tasks must name the label columns (states from frozen_states of a MultiTaskDataset)")
        self.scores = [float(s) for s in scores]
        if len(self.scores) != len(self.states):
            raise ValueError(f"scores has {len(self.scores)} entries for {len(self.states)} states; give one per report")

    @classmethod
    def of(cls, states: frozen.HiddenStates, scores: Sequence[float]) -> "ScoredStates":
        return cls(states.states, states.labels, states.tasks or (), scores)

    def __getitem__(self, i: int) -> dict:
        return {**super().__getitem__(i), SCORE: self.scores[i]}

    def subset(self, indices: Sequence[int]) -> "ScoredStates":
        return ScoredStates.of(super().subset(indices), [self.scores[i] for i in indices])

    def select(self, tasks) -> "ScoredStates":
        return ScoredStates.of(super().select(tasks), self.scores)

    def collate(self, items: list[dict]) -> dict:
        return {**super().collate(items), SCORE: torch.tensor([it[SCORE] for it in items], dtype=torch.float32)}


class ScoredTopLayers(frozen.TopLayers):
    """``frozen.TopLayers`` with one head per task and one more, ``nn.Linear(H, 1)``, for the score.

    ``forward(hidden_states, attention_mask)`` returns ``{task: logits (B, C_task), ...,
    "score": (B,)}``: every head reads the same dropped-out [CLS] vector. The score head sits in
    ``classifier`` beside the others (``TrainConfig.head_lr`` reaches it), initialised as they
    are: N(0, 0.02^2) weights, zero bias, so it starts by predicting about 0, the mean of a
    standardized score. Arguments as ``frozen.TopLayers``; ``num_labels`` must be a
    ``{task: classes}`` mapping (ValueError naming it otherwise, or for a task called "score").
    """

    def __init__(self, bert, n_frozen: int, num_labels: Mapping[str, int], dropout: float = 0.1, *,
                 train_keys_values: bool = True):
        if not isinstance(num_labels, Mapping) or SCORE in num_labels:
            raise ValueError(f"num_labels must be a dict {{task: number of classes}} without a task {SCORE!r}, "
                             f"got {num_labels!r}")
        super().__init__(bert, n_frozen, num_labels, dropout, train_keys_values=train_keys_values)
        head = nn.Linear(self.hidden_size, 1)
        nn.init.normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        self.classifier[SCORE] = head

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.dropout(self.features(hidden_states, attention_mask))  # (B, H)
        out = {t: self.classifier[t](h) for t in self.tasks}  # {task: (B, C_task)}
        out[SCORE] = self.classifier[SCORE](h).squeeze(-1)  # (B, 1) -> (B,)
        return out


# ---------------------------------------------------------------- loss and training


def scored_loss(outputs: Mapping[str, torch.Tensor], batch: dict, *, weight: float = 1.0, kind: str = "mse",
                delta: float = 1.0, task_weights: Mapping[str, float] | None = None) -> dict:
    """``loss_fn`` for :func:`bertlab.train.fit`: ``sum_t w_t L_t + weight * L_score``, the parts logged.

    ``L_t`` is :func:`bertlab.multitask.multitask_loss` of the logits against the batch's label
    columns (``task_weights`` its ``w_t``), ``L_score`` the :func:`regression_loss` of
    ``outputs["score"]`` against ``batch["score"]``.
    """
    logits = {t: z for t, z in outputs.items() if t != SCORE}
    total, per_task = mt.multitask_loss(logits, mt.split_labels(batch["labels"], list(logits)), task_weights)
    score_loss = regression_loss(outputs[SCORE], batch[SCORE], kind, delta)
    return {"loss": total + weight * score_loss, **{f"{t}_loss": v for t, v in per_task.items()},
            "score_loss": score_loss}


def fit_scored(model: ScoredTopLayers, train_data: ScoredStates, config: train.TrainConfig | None = None, *,
               weight: float = 1.0, kind: str = "mse", delta: float = 1.0,
               task_weights: Mapping[str, float] | None = None, progress: bool = True) -> train.TrainResult:
    """Train every head of ``model`` (and its top layer) on ``train_data`` with :func:`bertlab.train.fit`.

    The loss is :func:`scored_loss`; no validation (the last weights are kept), as notebook 06's
    recipe. ``weight`` (>= 0; 0 trains the classification heads only) scales the score's loss
    against the tasks' losses. Raises ValueError naming the argument for a model or data of
    the wrong kind, tasks that differ, or a bad ``weight``, ``kind``, ``delta`` or ``task_weights``.
    """
    if not isinstance(model, ScoredTopLayers):
        raise ValueError(f"model must be a bertlab.regression.ScoredTopLayers, got {type(model).__name__}")
    if not isinstance(train_data, ScoredStates):
        raise ValueError(f"train_data must be bertlab.regression.ScoredStates, got {type(train_data).__name__}")
    if tuple(train_data.tasks) != model.tasks:
        raise ValueError(f"train_data.tasks {list(train_data.tasks)} must be the model's tasks {list(model.tasks)}")
    args.number("weight", weight, low=0)
    args.one_of("kind", kind, LOSSES)
    args.number("delta", delta, low=0, low_open=True)
    task_weights = mt.check_weights(task_weights, model.tasks)
    loss_fn = partial(scored_loss, weight=float(weight), kind=kind, delta=float(delta), task_weights=task_weights)
    return train.fit(model, train_data, None, config, loss_fn=loss_fn, metrics_fn=None, progress=progress)


# ---------------------------------------------------------------- evaluation


def score_metrics(pred, target) -> dict[str, float]:
    """``{"mae", "rmse", "spearman", "r2", "n"}`` of predicted scores against true ones (NaN targets skipped).

    MAE and RMSE are in the unit of the scores; Spearman's rho compares their orders: the
    correlation of their ranks (ties share their average rank); R^2 is ``1 - MSE / Var(target)``.
    Raises ValueError naming ``pred`` when the lengths differ, and for fewer than 2 targets.
    """
    p = torch.as_tensor(pred, dtype=torch.float64).flatten()
    y = torch.as_tensor(target, dtype=torch.float64).flatten()
    if p.shape != y.shape:
        raise ValueError(f"pred has {p.numel()} values but target has {y.numel()}; give one per report")
    keep = ~torch.isnan(y)
    p, y = p[keep], y[keep]
    if len(y) < 2:
        raise ValueError(f"target must hold at least 2 scores (not NaN), got {len(y)}")
    err = p - y
    rank_p, rank_y = pd.Series(p.numpy()).rank(), pd.Series(y.numpy()).rank()  # 1..n, ties averaged
    with np.errstate(invalid="ignore", divide="ignore"):  # constant predictions: NaN, without a warning
        rho = float(np.corrcoef(rank_p, rank_y)[0, 1])
    return {"mae": float(err.abs().mean()), "rmse": float(err.pow(2).mean().sqrt()), "spearman": rho,
            "r2": float(1 - err.pow(2).mean() / (y - y.mean()).pow(2).mean()), "n": len(y)}


def severity_from_score(score) -> torch.Tensor:
    """Class ids of ``LABELS["severity"]`` (low, medium, high) for scores, cut half-way between the integers
    at ``SEVERITY_CUTS``: the true scores are integers, so ``s <= 0.5`` is low and ``s <= 2.5`` medium."""
    s = torch.as_tensor(score, dtype=torch.float32)
    cuts = torch.tensor([c + 0.5 for c in SEVERITY_CUTS])
    return torch.bucketize(s, cuts)  # 0: s <= cut 0, 1: s <= cut 1, 2: above


def evaluate_scored(model: ScoredTopLayers, data: ScoredStates, scale: ScoreScale, *,
                    batch_size: int = 64) -> dict[str, dict]:
    """``{task: {"accuracy", "macro_f1", "n"}, ..., "score": score_metrics}`` of ``model`` on ``data``.

    The scores of ``data`` and the model's predictions are mapped back to score points with
    ``scale.from_z`` (the scale they were trained in); the score entry adds
    ``"severity_macro_f1"``: the macro-F1 of :func:`severity_from_score` of the predicted
    score against the data's severity labels, when it has that task.
    """
    if not isinstance(data, ScoredStates) or tuple(data.tasks) != model.tasks:
        raise ValueError(f"data must be ScoredStates with the model's tasks {list(model.tasks)}")
    outputs, batch = train.collect_outputs(model, data, batch_size=batch_size)
    labels = mt.split_labels(batch["labels"], model.tasks)
    out = mt.task_metrics({t: outputs[t] for t in model.tasks}, labels)
    pred = scale.from_z(outputs[SCORE])
    out[SCORE] = score_metrics(pred, scale.from_z(batch[SCORE]))
    if "severity" in labels:
        classes = F.one_hot(severity_from_score(pred), 3).float()  # as logits: the class the score falls in
        out[SCORE]["severity_macro_f1"] = mt.task_metrics({"severity": classes}, {"severity": labels["severity"]})[
            "severity"]["macro_f1"]
    return out
