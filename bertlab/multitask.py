"""One encoder, several heads: failure type, severity, root cause and action at once (notebook 06).

- :class:`MultiTaskModel`: a shared encoder and one linear head per task on the [CLS]
  vector (or the pooler's output); ``forward`` returns a dict of logits, one (B, C_t) per task.
- :func:`multitask_loss`: ``sum_t w_t * L_t``, each ``L_t`` the cross-entropy averaged over
  the reports that *have* a label for task t. A label of ``IGNORE_INDEX`` (-100) means the
  report has none (e.g. no root cause was found): it is masked out, not counted as wrong,
  and a task with no label in the batch contributes 0, never NaN.
- :func:`report_labels`, :func:`encode_multitask`, :class:`MultiTaskDataset`: the class ids
  of every task (some hidden at random, to simulate missing labels), tokenized into a
  dataset whose batches carry ``labels`` (B, K), one column per task.
- :func:`batch_loss`, :func:`batch_metrics`, :func:`fit_multitask`: training with
  :func:`bertlab.train.fit` itself (optimizer groups, warm-up schedule, clipping, early
  stopping on the mean macro-F1 over the tasks): the model returns its dict of logits and
  the loss and metrics read it, with the label columns of the batch.
- :func:`task_metrics`, :func:`collect_multitask_logits`, :func:`evaluate_multitask`:
  accuracy and macro-F1 per task over the reports that have a label.

The fast variant notebook 06 compares with on a CPU is ``bertlab.frozen``: the lower layers
frozen and run once per report (``frozen.frozen_states`` of a :class:`MultiTaskDataset` keeps
its label columns), and a ``frozen.TopLayers`` with a ``{task: classes}`` mapping, trained and
evaluated by the very same functions.
"""
from __future__ import annotations

import random
from functools import partial
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bertlab import args, frozen, train
from bertlab.data import LABELS
from bertlab.pretraining import IGNORE_INDEX

#: The four report-level tasks, in the order of the label columns.
TASKS = tuple(LABELS)
POOLING = ("cls", "pooler")


def num_labels_for(tasks: Sequence[str] = TASKS) -> dict[str, int]:
    """``{task: number of classes}`` for tasks of ``bertlab.data.LABELS``, e.g. for :class:`MultiTaskModel`."""
    tasks = _check_tasks(tasks, "tasks")
    return {t: len(LABELS[t]) for t in tasks}


# ---------------------------------------------------------------- the model


class MultiTaskModel(nn.Module):
    """A shared encoder and one linear head per task (Caruana 1997; Liu et al. 2019, MT-DNN).

    ``num_labels`` maps each task to its number of classes (``{"severity": 3, ...}``; see
    :func:`num_labels_for`). ``forward(input_ids, attention_mask, token_type_ids=None)`` with
    LongTensors (B, T) returns ``{task: logits (B, C_task)}`` in the order of ``num_labels``.
    Every head reads the same sentence vector: the final hidden state of [CLS] (``pooling="cls"``,
    as :class:`bertlab.train.SequenceClassifier`) or the encoder's pooler output (``"pooler"``:
    tanh(dense([CLS])), the vector BERT's NSP head was trained on). The heads sit in the
    ModuleDict ``classifier``, so ``TrainConfig.head_lr`` gives all of them the head's
    learning rate. ``encoder`` is a ``transformers`` BertModel or ``bertlab.model.BertModel``.
    Raises ValueError naming the argument for an empty ``num_labels``, a task name that is not
    a plain identifier, fewer than 2 classes, or an unknown ``pooling``.
    """

    def __init__(self, encoder: nn.Module, num_labels: Mapping[str, int], dropout: float = 0.1, *,
                 hidden_size: int | None = None, pooling: str = "cls"):
        super().__init__()
        if not isinstance(num_labels, Mapping) or not num_labels:
            raise ValueError(f"num_labels must be a non-empty dict {{task: number of classes}}, got {num_labels!r}")
        args.one_of("pooling", pooling, POOLING)
        args.number("dropout", dropout, 0, 1, high_open=True)
        self.encoder = encoder
        self.tasks = tuple(num_labels)
        self.num_labels = dict(num_labels)
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = frozen.classifier_heads(hidden_size or encoder.config.hidden_size, num_labels)  # {task: Linear}

    def features(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """The shared sentence vector (B, H) every head reads."""
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.encoder(input_ids, **kwargs)
        if self.pooling == "pooler":
            return out[1]  # (B, H): tanh(dense(h_[CLS]))
        return out[0][:, 0]  # (B, T, H) -> (B, H): the [CLS] vector

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> dict[str, torch.Tensor]:
        h = self.dropout(self.features(input_ids, attention_mask, token_type_ids))  # (B, H)
        return {t: self.classifier[t](h) for t in self.tasks}  # {task: (B, C_task)}


def split_labels(labels: torch.Tensor, tasks: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{task: (B,)}`` from the label columns (B, K) of a :class:`MultiTaskDataset` batch."""
    if labels.dim() != 2 or labels.shape[1] != len(tasks):
        raise ValueError(f"labels must be (B, {len(tasks)}) with one column per task {list(tasks)}, got {tuple(labels.shape)}")
    return {t: labels[:, k] for k, t in enumerate(tasks)}


# ---------------------------------------------------------------- the loss


def check_weights(weights: Mapping[str, float] | None, tasks: Sequence[str]) -> dict[str, float]:
    """``{task: weight}`` for every task: the given weights, 1.0 for tasks ``weights`` leaves out.

    Raises ValueError naming ``weights`` for a task not in ``tasks`` or a weight that is not a
    finite number >= 0 (0 switches a task off).
    """
    if weights is None:
        return {t: 1.0 for t in tasks}
    if not isinstance(weights, Mapping):
        raise ValueError(f"weights must be None or a dict {{task: weight}}, got {type(weights).__name__}")
    unknown = [t for t in weights if t not in tasks]
    if unknown:
        raise ValueError(f"weights has tasks {unknown} that the model has no head for; tasks: {list(tasks)}")
    for t, w in weights.items():
        args.number(f"weights[{t!r}]", w, low=0)
    return {t: float(weights.get(t, 1.0)) for t in tasks}


def multitask_loss(logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor],
                   weights: Mapping[str, float] | None = None, *,
                   check: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted multi-task loss ``sum_t w_t * L_t`` and the per-task losses ``{t: L_t}``.

    ``logits[t]`` is (B, C_t), ``labels[t]`` (B,) class ids, ``IGNORE_INDEX`` (-100) where the
    report has no label for t. ``L_t`` is the cross-entropy averaged over the labelled reports
    only: ``sum_i -log p(y_i) / n_t`` with ``n_t`` the number of labels != -100. A missing label
    is neither right nor wrong, and a task with ``n_t = 0`` in the batch gives ``L_t = 0`` (not
    NaN, which ``F.cross_entropy``'s mean gives then) and no gradient. ``weights`` default to 1;
    a task they leave out gets 1. Every logits key needs a labels key and vice versa.
    Raises ValueError naming the argument for an unknown or missing task, shapes that do not
    fit, a label out of range or a bad weight. ``check=False`` skips the label range check, which
    reads the labels back from the device (the loop's path: its dataset checked them once).
    """
    if not isinstance(logits, Mapping) or not logits:
        raise ValueError(f"logits must be a non-empty dict {{task: (B, C) tensor}}, got {type(logits).__name__}")
    if not isinstance(labels, Mapping):
        raise ValueError(f"labels must be a dict {{task: (B,) tensor of class ids}}, got {type(labels).__name__}")
    tasks = list(logits)
    unknown = [t for t in labels if t not in logits]
    if unknown:
        raise ValueError(f"labels has tasks {unknown} that logits has no head for; tasks: {tasks}")
    absent = [t for t in tasks if t not in labels]
    if absent:
        raise ValueError(f"labels has no entry for tasks {absent}; give -100 for reports without a label")
    w = check_weights(weights, tasks)
    B = None
    per_task, total = {}, None
    for t in tasks:
        z, y = logits[t], labels[t]
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or not z.dtype.is_floating_point:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"logits[{t!r}] must be a float tensor (B, C), got {got}")
        B = z.shape[0] if B is None else B
        if z.shape[0] != B:
            raise ValueError(f"logits[{t!r}] has {z.shape[0]} rows, but the other tasks have {B}")
        if not isinstance(y, torch.Tensor) or y.shape != (B,) or y.dtype.is_floating_point or y.dtype == torch.bool:
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"labels[{t!r}] must be an integer tensor of shape ({B},), got {got}")
        C = z.shape[1]
        if check:
            bad = (y != IGNORE_INDEX) & ((y < 0) | (y >= C))
            if bad.any():
                raise ValueError(f"labels[{t!r}] holds {int(y[bad][0])}, out of range: class ids must be 0..{C - 1} "
                                 f"for {C} classes, or {IGNORE_INDEX} for a report without a label")
        n = (y != IGNORE_INDEX).sum()  # a tensor: its value stays on the device
        # Sum over the labelled reports, then divide by their count: the mean over the labelled ones only.
        loss = F.cross_entropy(z, y, ignore_index=IGNORE_INDEX, reduction="sum") / n.clamp(min=1)  # 0 when n == 0
        per_task[t] = loss
        total = w[t] * loss if total is None else total + w[t] * loss
    return total, per_task


def batch_loss(outputs: Mapping[str, torch.Tensor], batch: dict, weights: Mapping[str, float] | None = None) -> dict:
    """``loss_fn`` for :func:`bertlab.train.fit`: :func:`multitask_loss` of a model's ``{task: logits}`` against
    the batch's label columns (B, K), in the order of ``outputs``; the per-task losses are logged as parts."""
    # check=False: no read-back per step; the labels were checked when the dataset was built
    total, per_task = multitask_loss(outputs, split_labels(batch["labels"], list(outputs)), weights, check=False)
    return {"loss": total, **{f"{t}_loss": loss for t, loss in per_task.items()}}


# ---------------------------------------------------------------- data


def report_labels(reports, tasks: Sequence[str] = TASKS, *, missing: Mapping[str, float] | None = None,
                  seed: int = 0) -> dict[str, list[int]]:
    """``{task: class ids}`` of ``reports`` (FailureReports or their ``to_records`` dicts).

    A label that is None or "" counts as missing (-100). ``missing`` hides a fraction of each
    task's labels at random (``{"root_cause": 0.5}``: half the reports get -100 for root cause),
    to simulate reports whose cause or action was never recorded; deterministic for ``seed``.
    Raises ValueError naming the argument for an unknown task or a fraction outside [0, 1].
    """
    tasks = _check_tasks(tasks, "tasks")
    missing = dict(missing or {})
    unknown = [t for t in missing if t not in tasks]
    if unknown:
        raise ValueError(f"missing has tasks {unknown} that are not among tasks {list(tasks)}")
    for t, f in missing.items():
        args.probability(f"missing[{t!r}]", f)
    reports = list(reports)
    rng = random.Random(seed)
    out = {}
    for t in tasks:
        ids = {name: i for i, name in enumerate(LABELS[t])}
        ys = []
        for i, r in enumerate(reports):
            name = r.get(t) if isinstance(r, Mapping) else getattr(r, t)
            if name is None or name == "":
                ys.append(IGNORE_INDEX)
            elif name not in ids:
                raise ValueError(f"reports[{i}] has {t}={name!r}, not one of {list(LABELS[t])}")
            else:
                ys.append(ids[name])
        if missing.get(t):
            for i in rng.sample(range(len(ys)), round(missing[t] * len(ys))):
                ys[i] = IGNORE_INDEX
        out[t] = ys
    return out


class MultiTaskDataset(train.TextDataset):
    """A :class:`bertlab.train.TextDataset` whose label is one class id per task (-100: missing).

    ``tasks`` names the columns; batches carry ``labels`` (B, K) with column k for ``tasks[k]``.
    """

    def __init__(self, input_ids, labels, tasks: Sequence[str], pad_id: int = 0, pad_to: int | None = None, *,
                 token_type_ids=None, fields=None):
        super().__init__(input_ids, labels, pad_id, pad_to, token_type_ids=token_type_ids, fields=fields)
        self.tasks = tuple(tasks)
        if self.labels is not None and any(len(row) != len(self.tasks) for row in self.labels):
            raise ValueError(f"labels must hold one class id per task {list(self.tasks)} for each text")

    def _new(self, input_ids, labels, token_type_ids, fields, pad_to) -> "MultiTaskDataset":
        return MultiTaskDataset(input_ids, labels, self.tasks, self.pad_id, pad_to, token_type_ids=token_type_ids,
                                fields=fields)

    def collate(self, items: list[dict]) -> dict:
        # A row of labels is one per task, not one per token: TextDataset would pad it to the text's length.
        batch = super().collate([{k: v for k, v in it.items() if k != "labels"} for it in items])
        if "labels" in items[0]:
            batch["labels"] = torch.tensor([it["labels"] for it in items])  # (B, K)
        return batch

    def task_labels(self, task: str) -> list[int]:
        """The class ids of ``task`` (-100 where missing)."""
        if task not in self.tasks:
            raise ValueError(f"task must be one of {list(self.tasks)}, got {task!r}")
        k = self.tasks.index(task)
        return [row[k] for row in self.labels]


def encode_multitask(tokenizer, texts: Sequence[str], labels: Mapping[str, Sequence], *, max_length: int = 128,
                     num_labels: Mapping[str, int] | None = None) -> MultiTaskDataset:
    """Tokenize ``texts`` (as :func:`bertlab.train.encode`) with a label per task: a :class:`MultiTaskDataset`.

    ``labels[t]`` holds one entry per text: a class id, a class name of ``LABELS[t]``, or
    None / -100 for a report without a label. ``num_labels`` gives each task's number of
    classes (default: ``len(LABELS[t])``; needed for a task that is not in ``LABELS``).
    Raises ValueError naming the argument for an unknown task, a length mismatch or a label
    out of range.
    """
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError(f"labels must be a non-empty dict {{task: one label per text}}, got {type(labels).__name__}")
    num_labels = dict(num_labels or {})
    extra = [t for t in num_labels if t not in labels]
    if extra:
        raise ValueError(f"num_labels has tasks {extra} that labels does not; tasks: {list(labels)}")
    texts = list(texts) if not isinstance(texts, str) else texts
    columns = []
    for t, ys in labels.items():
        if t not in num_labels and t not in LABELS:
            raise ValueError(f"labels: unknown task {t!r}; known tasks: {list(LABELS)} (or give num_labels[{t!r}])")
        C = num_labels.get(t, len(LABELS.get(t, ())))
        names = {name: i for i, name in enumerate(LABELS.get(t, ()))}
        ys = list(ys)
        if not isinstance(texts, str) and len(ys) != len(texts):
            raise ValueError(f"labels[{t!r}] has {len(ys)} entries but texts has {len(texts)}; give one per text")
        col = []
        for i, y in enumerate(ys):
            if y is None:
                col.append(IGNORE_INDEX)
            elif isinstance(y, str):
                if y not in names:
                    raise ValueError(f"labels[{t!r}][{i}] is {y!r}, not a class of {t}: {list(names)}")
                col.append(names[y])
            elif isinstance(y, bool) or int(y) != y or not (int(y) == IGNORE_INDEX or 0 <= int(y) < C):
                raise ValueError(f"labels[{t!r}][{i}] is {y!r}, out of range: class ids must be 0..{C - 1} "
                                 f"for {C} classes, or {IGNORE_INDEX} (or None) when missing")
            else:
                col.append(int(y))
        columns.append(col)
    base = train.encode(tokenizer, texts, max_length=max_length)
    rows = [list(r) for r in zip(*columns)]
    return MultiTaskDataset(base.input_ids, rows, tuple(labels), pad_id=base.pad_id)


# ---------------------------------------------------------------- evaluation


def task_metrics(logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]) -> dict[str, dict]:
    """``{task: {"accuracy", "macro_f1", "n"}}`` over the reports that have a label (labels != -100).

    Scored by :func:`bertlab.train.classification_metrics` (scikit-learn's macro-F1 over the
    classes present). A task without any label gets NaN scores and ``n = 0``.
    """
    unknown = [t for t in labels if t not in logits]
    if unknown:
        raise ValueError(f"labels has tasks {unknown} that logits has no head for; tasks: {list(logits)}")
    out = {}
    for t, y in labels.items():
        keep = y != IGNORE_INDEX
        n = int(keep.sum())
        if n == 0:
            out[t] = {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 0}
        else:
            out[t] = {**train.classification_metrics(logits[t][keep], {"labels": y[keep]}), "n": n}
    return out


def batch_metrics(outputs: Mapping[str, torch.Tensor], batch: dict) -> dict[str, float]:
    """``metrics_fn`` for :func:`bertlab.train.fit`: per-task scores (``<task>_accuracy``, ``<task>_macro_f1``)
    and their means over the tasks with labels (``accuracy``, ``macro_f1``: what early stopping reads)."""
    scores = task_metrics(outputs, split_labels(batch["labels"], list(outputs)))
    out = {f"{t}_{k}": v for t, s in scores.items() for k, v in s.items() if k != "n"}
    scored = [s for s in scores.values() if s["n"]]
    for k in ("accuracy", "macro_f1"):
        out[k] = sum(s[k] for s in scored) / len(scored) if scored else float("nan")
    return out


def collect_multitask_logits(model: "MultiTaskModel | frozen.TopLayers", data, *, batch_size: int = 64):
    """``({task: logits (N, C_t)}, {task: labels (N,)} or None)`` for every item of ``data``, in its order, on the CPU."""
    outputs, batch = train.collect_outputs(model, data, batch_size=batch_size)
    labels = batch.get("labels")
    return outputs, None if labels is None else split_labels(labels, getattr(data, "tasks", None) or model.tasks)


def evaluate_multitask(model: "MultiTaskModel | frozen.TopLayers", data, *, batch_size: int = 64) -> dict[str, dict]:
    """``{task: {"loss", "accuracy", "macro_f1", "n"}}`` on ``data``, missing labels skipped."""
    _check_dataset_tasks("data", data, model)
    logits, labels = collect_multitask_logits(model, data, batch_size=batch_size)
    _, losses = multitask_loss(logits, labels)
    scores = task_metrics(logits, labels)
    return {t: {"loss": float(losses[t]) if scores[t]["n"] else float("nan"), **scores[t]} for t in model.tasks}


# ---------------------------------------------------------------- training


def fit_multitask(model: "MultiTaskModel | frozen.TopLayers", train_data, validation=None,
                  config: train.TrainConfig | None = None, *, weights: Mapping[str, float] | None = None,
                  checkpoint=None, progress: bool = True) -> train.TrainResult:
    """Train ``model`` on all its tasks with :func:`bertlab.train.fit` and :func:`multitask_loss`.

    Everything is ``fit``'s: AdamW groups (``config.head_lr`` for all heads), warm-up and
    decay, clipping, a progress bar, early stopping on ``config.metric`` averaged over the
    tasks (``macro_f1``: the mean of the per-task macro-F1). The history also holds
    ``train_<task>_loss``, ``val_<task>_accuracy`` and ``val_<task>_macro_f1`` per validation.
    ``weights`` as in :func:`multitask_loss` (a weight of 0 trains without that task). The
    datasets' ``tasks`` must be the model's, in its order: a :class:`MultiTaskDataset` for a
    :class:`MultiTaskModel`, ``bertlab.frozen.HiddenStates`` with tasks for a ``frozen.TopLayers``
    with a ``{task: classes}`` mapping. Returns fit's :class:`~bertlab.train.TrainResult`;
    ``model`` ends in eval mode with the best weights.
    """
    _check_model(model)
    _check_dataset_tasks("train_data", train_data, model)
    if validation is not None:
        _check_dataset_tasks("validation", validation, model)
    weights = check_weights(weights, model.tasks)
    return train.fit(model, train_data, validation, config, loss_fn=partial(batch_loss, weights=weights),
                     metrics_fn=batch_metrics, checkpoint=checkpoint, progress=progress)


def _check_model(model) -> None:
    if not (isinstance(model, MultiTaskModel) or (isinstance(model, frozen.TopLayers) and model.tasks)):
        raise TypeError("model must be a bertlab.multitask.MultiTaskModel or a bertlab.frozen.TopLayers with a "
                        f"{{task: classes}} num_labels, got {type(model).__name__}")


def _check_dataset_tasks(name: str, data, model) -> None:
    tasks = getattr(data, "tasks", None)
    if tasks is None:
        raise ValueError(f"{name} must be a MultiTaskDataset (from bertlab.multitask.encode_multitask)"
                         " or bertlab.frozen.HiddenStates with tasks (frozen_states of a MultiTaskDataset)")
    if isinstance(model, frozen.TopLayers) != isinstance(data, frozen.HiddenStates):
        raise ValueError(f"{name}: a frozen.TopLayers reads frozen.HiddenStates (frozen.frozen_states), "
                         f"a MultiTaskModel a MultiTaskDataset (encode_multitask); got {type(data).__name__}")
    if tuple(tasks) != tuple(model.tasks):
        raise ValueError(f"{name}.tasks {list(tasks)} must be the model's tasks {list(model.tasks)}, in that order")


def _check_tasks(tasks, name: str) -> tuple[str, ...]:
    if isinstance(tasks, str):
        tasks = (tasks,)
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in LABELS]
    if not tasks or unknown:
        raise ValueError(f"{name} must name tasks of bertlab.data.LABELS {list(LABELS)}, got {list(tasks)}")
    return tasks
