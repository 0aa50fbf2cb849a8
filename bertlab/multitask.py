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
- :func:`task_metrics`, :func:`collect_multitask_logits`, :func:`evaluate_multitask`:
  accuracy and macro-F1 per task over the reports that have a label.
- :func:`fit_multitask`: training with :func:`bertlab.train.fit` itself (optimizer groups,
  warm-up schedule, clipping, early stopping on the mean macro-F1 over the tasks).
- :func:`top_layer_at_cls`, :class:`TopLayersMultiTask`, :class:`MultiTaskStates`,
  :func:`frozen_multitask_states`: the fast variant notebook 06 compares with on a CPU, as
  notebook 05's ``baselines.TopLayersClassifier``: the lower layers frozen and run once per
  report, only the top layer(s) and the heads trained (the last layer computed at [CLS] only).

``bertlab.train.fit`` expects a model that returns one logits tensor. :func:`fit_multitask`
therefore trains a thin view of the model (:class:`PackedLogits`: the same modules, so the
same parameters and parameter names) that concatenates the task logits into (B, sum C_t),
and a loss and metrics that split them again. A ``fit`` that accepted dict outputs (an
``output_fn`` hook in ``collect_logits``) would make the view unnecessary.
"""
from __future__ import annotations

import math
import random
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from bertlab import train
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
        for task, c in num_labels.items():
            if not isinstance(task, str) or not task.isidentifier():
                raise ValueError(f"num_labels: task names must be identifiers like 'severity', got {task!r}")
            if isinstance(c, bool) or not isinstance(c, int) or c < 2:
                raise ValueError(f"num_labels[{task!r}] must be an int >= 2, got {c!r}")
        if pooling not in POOLING:
            raise ValueError(f"pooling must be one of {POOLING}, got {pooling!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        if hidden_size is None:
            hidden_size = encoder.config.hidden_size
        self.encoder = encoder
        self.tasks = tuple(num_labels)
        self.num_labels = dict(num_labels)
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.ModuleDict({t: nn.Linear(hidden_size, c) for t, c in num_labels.items()})
        for head in self.classifier.values():
            nn.init.normal_(head.weight, std=0.02)  # BERT's initializer_range
            nn.init.zeros_(head.bias)

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


class PackedLogits(nn.Module):
    """A view of a :class:`MultiTaskModel` (or :class:`TopLayersMultiTask`) that returns its logits side by side, (B, sum C_t).

    It holds the very same modules under the same names (``encoder``, ``dropout``,
    ``classifier``), so its parameters and ``state_dict`` are the model's: training the view
    trains the model. Lets :func:`bertlab.train.fit` and ``collect_logits``, which expect one
    tensor, run a multi-task model unchanged; :func:`split_logits` undoes the packing.
    """

    def __init__(self, model: "MultiTaskModel | TopLayersMultiTask"):
        super().__init__()
        _check_model(model)
        for name, child in model.named_children():  # encoder (or layers), dropout, classifier: the same names
            setattr(self, name, child)
        object.__setattr__(self, "model", model)  # not registered: its parameters are already ours
        self.tasks, self.sizes = model.tasks, dict(model.num_labels)
        self.training = model.training  # only the flag: collect_logits restores the modules to this mode

    def forward(self, *args, **kwargs) -> torch.Tensor:
        out = self.model(*args, **kwargs)
        return torch.cat([out[t] for t in self.tasks], dim=-1)  # (B, sum C_t)


def split_logits(packed: torch.Tensor, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """``{task: (B, C_t)}`` from logits packed side by side (B, sum C_t) in the order of ``sizes``."""
    if packed.dim() != 2 or packed.shape[1] != sum(sizes.values()):
        raise ValueError(f"packed logits must be (B, {sum(sizes.values())}) for {dict(sizes)}, got {tuple(packed.shape)}")
    return dict(zip(sizes, packed.split(list(sizes.values()), dim=-1)))


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
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weights[{t!r}] must be a finite number >= 0, got {w!r}")
    return {t: float(weights.get(t, 1.0)) for t in tasks}


def multitask_loss(logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor],
                   weights: Mapping[str, float] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted multi-task loss ``sum_t w_t * L_t`` and the per-task losses ``{t: L_t}``.

    ``logits[t]`` is (B, C_t), ``labels[t]`` (B,) class ids, ``IGNORE_INDEX`` (-100) where the
    report has no label for t. ``L_t`` is the cross-entropy averaged over the labelled reports
    only: ``sum_i -log p(y_i) / n_t`` with ``n_t`` the number of labels != -100. A missing label
    is neither right nor wrong, and a task with ``n_t = 0`` in the batch gives ``L_t = 0`` (not
    NaN, which ``F.cross_entropy``'s mean gives then) and no gradient. ``weights`` default to 1;
    a task they leave out gets 1. Every logits key needs a labels key and vice versa.
    Raises ValueError naming the argument for an unknown or missing task, shapes that do not
    fit, a label out of range or a bad weight.
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
        bad = (y != IGNORE_INDEX) & ((y < 0) | (y >= C))
        if bad.any():
            raise ValueError(f"labels[{t!r}] holds {int(y[bad][0])}, out of range: class ids must be 0..{C - 1} "
                             f"for {C} classes, or {IGNORE_INDEX} for a report without a label")
        n = int((y != IGNORE_INDEX).sum())
        # Sum over the labelled reports, then divide by their count: the mean over the labelled ones only.
        loss = F.cross_entropy(z, y, ignore_index=IGNORE_INDEX, reduction="sum") / max(n, 1)  # 0 when n == 0
        per_task[t] = loss
        total = w[t] * loss if total is None else total + w[t] * loss
    return total, per_task


class PackedLoss:
    """``loss_fn`` for :func:`bertlab.train.fit`: packed logits (B, sum C_t), label columns (B, K) -> total loss."""

    def __init__(self, sizes: Mapping[str, int], weights: Mapping[str, float] | None = None):
        self.sizes = dict(sizes)
        self.weights = check_weights(weights, list(self.sizes))

    def __call__(self, packed: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return multitask_loss(split_logits(packed, self.sizes), split_labels(labels, list(self.sizes)), self.weights)[0]


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
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1:
            raise ValueError(f"missing[{t!r}] must be a fraction in [0, 1], got {f!r}")
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

    def __init__(self, input_ids, labels, tasks: Sequence[str], pad_id: int = 0, pad_to: int | None = None):
        super().__init__(input_ids, labels, pad_id, pad_to)
        self.tasks = tuple(tasks)
        if self.labels is not None and any(len(row) != len(self.tasks) for row in self.labels):
            raise ValueError(f"labels must hold one class id per task {list(self.tasks)} for each text")

    def with_padding(self, pad_to: int | None) -> "MultiTaskDataset":
        return MultiTaskDataset(self.input_ids, self.labels, self.tasks, self.pad_id, pad_to)

    def subset(self, indices: Sequence[int]) -> "MultiTaskDataset":
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        return MultiTaskDataset([self.input_ids[i] for i in indices], labels, self.tasks, self.pad_id, self.pad_to)

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
            out[t] = {**train.classification_metrics(logits[t][keep], y[keep]), "n": n}
    return out


class PackedMetrics:
    """``metrics_fn`` for :func:`bertlab.train.fit`: per-task scores (``<task>_accuracy``, ``<task>_macro_f1``)
    and their means over the tasks with labels (``accuracy``, ``macro_f1``: what early stopping reads)."""

    def __init__(self, sizes: Mapping[str, int]):
        self.sizes = dict(sizes)

    def __call__(self, packed: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        scores = task_metrics(split_logits(packed, self.sizes), split_labels(labels, list(self.sizes)))
        out = {f"{t}_{k}": v for t, s in scores.items() for k, v in s.items() if k != "n"}
        scored = [s for s in scores.values() if s["n"]]
        for k in ("accuracy", "macro_f1"):
            out[k] = sum(s[k] for s in scored) / len(scored) if scored else float("nan")
        return out


@torch.no_grad()
def collect_multitask_logits(model: MultiTaskModel, data: train.TextDataset, *, batch_size: int = 64):
    """``({task: logits (N, C_t)}, {task: labels (N,)} or None)`` for every item of ``data``, in its order, on the CPU."""
    packed, labels = train.collect_logits(PackedLogits(model), data, batch_size=batch_size)
    logits = split_logits(packed, model.num_labels)
    if labels is None:
        return logits, None
    return logits, split_labels(labels, getattr(data, "tasks", model.tasks))


def evaluate_multitask(model: MultiTaskModel, data: MultiTaskDataset, *, batch_size: int = 64) -> dict[str, dict]:
    """``{task: {"loss", "accuracy", "macro_f1", "n"}}`` on ``data``, missing labels skipped."""
    _check_dataset_tasks("data", data, model)
    logits, labels = collect_multitask_logits(model, data, batch_size=batch_size)
    _, losses = multitask_loss(logits, labels)
    scores = task_metrics(logits, labels)
    return {t: {"loss": float(losses[t]) if scores[t]["n"] else float("nan"), **scores[t]} for t in model.tasks}


# ---------------------------------------------------------------- the fast variant: frozen lower layers


def top_layer_at_cls(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None, *,
                     keys: torch.Tensor | None = None, values: torch.Tensor | None = None) -> torch.Tensor:
    """``layer(x, mask)[:, :1]`` for a ``bertlab.model.BertLayer``, computed at [CLS] only: (B, 1, H).

    The heads read only the last layer's [CLS] vector, so the last layer needs one query, not T:
    keys and values still come from every token (B, T, H), but the query, the attention output,
    its Add & Norm and the feed-forward block run on one position. That is about a sixth of the
    layer's arithmetic for reports of ~100 tokens, and the same result (and gradients) as the
    whole layer. ``mask`` is additive (B, 1, 1, T), from ``bertlab.model.extended_attention_mask``.
    ``keys`` and ``values`` (B, T, H), when given, replace ``layer``'s key and value projections of
    ``x`` (e.g. computed once with frozen weights, :func:`frozen_multitask_states`).
    """
    from bertlab.model import scaled_dot_product_attention

    att = layer.attention.self
    B, T, H = x.shape
    cls = x[:, :1]  # (B, 1, H)
    q = att.split_heads(att.query(cls))  # (B, nh, 1, hs)
    k = att.split_heads(att.key(x) if keys is None else keys)  # (B, nh, T, hs)
    v = att.split_heads(att.value(x) if values is None else values)  # (B, nh, T, hs)
    y = scaled_dot_product_attention(q, k, v, mask, att.dropout)  # (B, nh, 1, hs)
    h = layer.attention.output(y.transpose(1, 2).reshape(B, 1, H), cls)  # (B, 1, H): Add & Norm
    return layer.output(layer.intermediate(h), h)  # (B, 1, H): FFN, Add & Norm


class TopLayersMultiTask(nn.Module):
    """The top ``len(bert.encoder.layer) - n_frozen`` layers of ``bert`` (copied) shared by one linear head per task.

    The multi-task form of ``bertlab.baselines.TopLayersClassifier``: ``forward(hidden_states,
    attention_mask)`` takes the frozen layers' output (B, T, H) (:func:`frozen_multitask_states`)
    and returns ``{task: logits (B, C_task)}`` in the order of ``num_labels``, every head reading
    the [CLS] vector of the last layer (computed at [CLS] only, :func:`top_layer_at_cls`). With
    one task it is the single-task model, trained by the very same code. ``bert`` is a
    ``bertlab.model.BertModel``. The heads sit in the ModuleDict ``classifier`` (``head_lr``
    reaches them), initialised as :class:`MultiTaskModel`'s.

    ``train_keys_values=False`` (one trained layer only) freezes the top layer's key and value
    projections too: they are then computed once per report with the pretrained weights
    (``frozen_multitask_states(..., top_keys_values=True)``, states of width 3H: x, keys, values
    side by side), and a training step runs only [CLS]'s path through the top layer (query,
    attention output, feed-forward block, heads), which costs almost nothing next to the frozen
    part. Raises ValueError naming the argument for a bad ``num_labels``, ``n_frozen`` or ``dropout``.
    """

    def __init__(self, bert, n_frozen: int, num_labels: Mapping[str, int], dropout: float = 0.1, *,
                 train_keys_values: bool = True):
        super().__init__()
        import copy

        n_layers = len(bert.encoder.layer)
        if isinstance(n_frozen, bool) or not isinstance(n_frozen, int) or not 0 <= n_frozen < n_layers:
            raise ValueError(f"n_frozen must be an int in 0..{n_layers - 1} (at least one layer left to train), got {n_frozen!r}")
        # The heads and their checks are MultiTaskModel's; only the encoder differs.
        heads = MultiTaskModel(nn.Identity(), num_labels, dropout, hidden_size=bert.config.hidden_size)
        self.tasks, self.num_labels = heads.tasks, heads.num_labels
        if not train_keys_values and n_layers - n_frozen != 1:
            raise ValueError(f"train_keys_values=False needs exactly one trained layer: n_frozen must be {n_layers - 1}, got {n_frozen}")
        self.layers = nn.ModuleList(copy.deepcopy(layer) for layer in bert.encoder.layer[n_frozen:])
        self.dropout, self.classifier = heads.dropout, heads.classifier
        self.train_keys_values = bool(train_keys_values)
        if not self.train_keys_values:
            att = self.layers[-1].attention.self
            for p in [*att.key.parameters(), *att.value.parameters()]:
                p.requires_grad_(False)

    def features(self, hidden_states, attention_mask) -> torch.Tensor:
        """The shared [CLS] vector (B, H) after the trained layers."""
        from bertlab.model import extended_attention_mask

        mask = extended_attention_mask(attention_mask, hidden_states.dtype)  # (B, 1, 1, T)
        if not self.train_keys_values:
            H = hidden_states.shape[-1] // 3
            if hidden_states.shape[-1] != 3 * H:
                raise ValueError("train_keys_values=False reads states of width 3H (x, keys, values) from "
                                 f"frozen_multitask_states(..., top_keys_values=True), got width {hidden_states.shape[-1]}")
            x, k, v = hidden_states.split(H, dim=-1)  # 3 x (B, T, H)
            return top_layer_at_cls(self.layers[-1], x, mask, keys=k, values=v)[:, 0]  # (B, H)
        x = hidden_states
        for layer in self.layers[:-1]:
            x = layer(x, mask)  # (B, T, H)
        return top_layer_at_cls(self.layers[-1], x, mask)[:, 0]  # (B, H)

    def forward(self, hidden_states, attention_mask) -> dict[str, torch.Tensor]:
        h = self.dropout(self.features(hidden_states, attention_mask))  # (B, H)
        return {t: self.classifier[t](h) for t in self.tasks}  # {task: (B, C_task)}


class MultiTaskStates(Dataset):
    """Frozen hidden states (T_i, H) of each report with one class id per task (-100: missing).

    ``bertlab.baselines.HiddenStates`` with named label columns: batches carry
    ``hidden_states`` (B, T, H), ``attention_mask`` (B, T), ``labels`` (B, K) with column k for
    ``tasks[k]``, and ``index`` (B,). :meth:`select` keeps some columns (a single-task run).
    """

    def __init__(self, states: Sequence[torch.Tensor], labels: Sequence[Sequence[int]], tasks: Sequence[str]):
        from bertlab.baselines import HiddenStates

        self.tasks = tuple(tasks)
        labels = [list(row) for row in labels]
        if len(labels) != len(states) or any(len(row) != len(self.tasks) for row in labels):
            raise ValueError(f"labels must hold one row of {len(self.tasks)} class ids (tasks {list(self.tasks)}) per state")
        self._states = HiddenStates(list(states), labels)
        self.states, self.labels = self._states.states, self._states.labels

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, i: int) -> dict:
        return self._states[i]

    def lengths(self) -> list[int]:
        return self._states.lengths()

    def collate(self, items: list[dict]) -> dict:
        return self._states.collate(items)

    def subset(self, indices: Sequence[int]) -> "MultiTaskStates":
        return MultiTaskStates([self.states[i] for i in indices], [self.labels[i] for i in indices], self.tasks)

    def select(self, tasks: Sequence[str]) -> "MultiTaskStates":
        """The same states with the label columns of ``tasks`` only, in that order."""
        tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
        unknown = [t for t in tasks if t not in self.tasks]
        if not tasks or unknown:
            raise ValueError(f"tasks must be some of {list(self.tasks)}, got {list(tasks)}")
        cols = [self.tasks.index(t) for t in tasks]
        return MultiTaskStates(self.states, [[row[k] for k in cols] for row in self.labels], tasks)

    def task_labels(self, task: str) -> list[int]:
        """The class ids of ``task`` (-100 where missing)."""
        return [row[0] for row in self.select(task).labels]


def frozen_multitask_states(bert, data: MultiTaskDataset, n_frozen: int, batch_size: int = 64, *,
                            top_keys_values: bool = False) -> MultiTaskStates:
    """The output of ``bert``'s embeddings and first ``n_frozen`` layers for every report of ``data``, once.

    ``bertlab.baselines.frozen_states`` (eval mode, no gradients) keeping ``data``'s label columns.
    With ``top_keys_values``, each state is (T_i, 3H): that output x, then the keys and values
    that layer ``n_frozen`` computes from it with its pretrained weights, side by side (for
    ``TopLayersMultiTask(..., train_keys_values=False)``).
    """
    from bertlab.baselines import frozen_states

    if not isinstance(data, MultiTaskDataset):
        raise ValueError(f"data must be a MultiTaskDataset (from encode_multitask), got {type(data).__name__}")
    hidden = frozen_states(bert, data, n_frozen, batch_size=batch_size)
    states = hidden.states
    if top_keys_values:
        att = bert.encoder.layer[n_frozen].attention.self
        device = next(bert.parameters()).device
        with torch.no_grad():
            states = [torch.cat([x, att.key(x.to(device)).cpu(), att.value(x.to(device)).cpu()], dim=-1) for x in states]
    return MultiTaskStates(states, data.labels, data.tasks)


# ---------------------------------------------------------------- training


def fit_multitask(model: MultiTaskModel, train_data: MultiTaskDataset, validation: MultiTaskDataset | None = None,
                  config: train.TrainConfig | None = None, *, weights: Mapping[str, float] | None = None,
                  checkpoint=None, progress: bool = True) -> train.TrainResult:
    """Train ``model`` on all its tasks with :func:`bertlab.train.fit` and :func:`multitask_loss`.

    Everything is ``fit``'s: AdamW groups (``config.head_lr`` for all heads), warm-up and
    decay, clipping, a progress bar, early stopping on ``config.metric`` averaged over the
    tasks (``macro_f1``: the mean of the per-task macro-F1). The history also holds
    ``val_<task>_accuracy`` and ``val_<task>_macro_f1`` per epoch. ``weights`` as in
    :func:`multitask_loss` (a weight of 0 trains without that task). The datasets' ``tasks``
    must be the model's, in its order. A :class:`TopLayersMultiTask` trains on
    :class:`MultiTaskStates` (from :func:`frozen_multitask_states`) the same way. Returns fit's :class:`~bertlab.train.TrainResult`;
    ``model`` ends in eval mode with the best epoch's weights.
    """
    _check_model(model)
    _check_dataset_tasks("train_data", train_data, model)
    if validation is not None:
        _check_dataset_tasks("validation", validation, model)
    loss_fn = PackedLoss(model.num_labels, weights)
    view = PackedLogits(model)
    result = train.fit(view, train_data, validation, config, checkpoint=checkpoint, progress=progress,
                       loss_fn=loss_fn, metrics_fn=PackedMetrics(model.num_labels))
    model.eval()
    return result


def _check_model(model) -> None:
    if not isinstance(model, (MultiTaskModel, TopLayersMultiTask)):
        raise TypeError(f"model must be a bertlab.multitask.MultiTaskModel or TopLayersMultiTask, got {type(model).__name__}")


def _check_dataset_tasks(name: str, data, model: MultiTaskModel) -> None:
    tasks = getattr(data, "tasks", None)
    if tasks is None:
        raise ValueError(f"{name} must be a MultiTaskDataset (from bertlab.multitask.encode_multitask)"
                         " or MultiTaskStates (from frozen_multitask_states)")
    if isinstance(model, TopLayersMultiTask) != isinstance(data, MultiTaskStates):
        raise ValueError(f"{name}: a TopLayersMultiTask reads MultiTaskStates (frozen_multitask_states), "
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


# ---------------------------------------------------------------- the course's cached multi-task model

#: Settings of the course's multi-task model (notebook 06): fine-tuning's defaults, and which tasks
#: train, their loss weights, the fraction of labels hidden per task, and the sentence vector.
MULTITASK_DEFAULTS = {**train.FINETUNE_DEFAULTS, "tasks": list(TASKS), "weights": None, "missing": None,
                      "missing_seed": 0, "pooling": "cls"}
#: Overrides that train in seconds (grading mode, smoke tests).
QUICK = dict(train.QUICK)


def multitask_classifier(fab: str = "A", *, model_name: str | None = None, progress: bool = True, **overrides):
    """The encoder fine-tuned on several tasks of ``fab`` at once: ``(model, tokenizer, info)``.

    Like :func:`bertlab.train.finetuned_classifier`, with :data:`MULTITASK_DEFAULTS`:
    ``tasks`` (one head each; a single task gives the single-task baseline with the very same
    code), ``weights`` (:func:`multitask_loss`), ``missing`` (``{task: fraction}`` of the
    training and validation labels hidden with ``missing_seed``, :func:`report_labels`; the
    test reports keep every label) and ``pooling``. Loaded from ``bertlab.cache`` when the
    same configuration and data were trained before, else trained with :func:`fit_multitask`
    and cached. ``info`` holds the configuration, the label names per task, the history, the
    training time, ``splits`` (the ``make_splits`` arguments) and ``cached``. The model is in
    eval mode on ``bertlab.env.get_device()``.
    """
    from bertlab import cache, env, pretrained
    from bertlab.data import make_splits

    unknown = sorted(set(overrides) - set(MULTITASK_DEFAULTS))
    if unknown:
        raise TypeError(f"multitask_classifier got unknown settings {unknown}; known: {sorted(MULTITASK_DEFAULTS)}")
    cfg = {**MULTITASK_DEFAULTS, **overrides}
    tasks = _check_tasks(cfg["tasks"], "tasks")
    cfg["tasks"] = list(tasks)
    check_weights(cfg["weights"], tasks)
    if cfg["pooling"] not in POOLING:
        raise ValueError(f"pooling must be one of {POOLING}, got {cfg['pooling']!r}")
    splits_args = {"n_train": cfg["n_train"], "n_val": cfg["n_val"], "n_test": cfg["n_test"], "seed": cfg["data_seed"]}
    splits = make_splits(fab, **splits_args)
    report_labels(splits.train[:1], tasks, missing=cfg["missing"])  # checks missing now, not after loading a model
    target = pretrained.model_name_or_dir(model_name)
    name = pretrained.DEFAULT_NAME if pretrained.is_default(target) else str(model_name or target)
    key_config = {"fab": fab, "model": name, **cfg, "data": train.fingerprint(splits.train, splits.validation)}
    tokenizer = pretrained.load_tokenizer(model_name)
    num_labels = num_labels_for(tasks)

    def build():
        torch.manual_seed(cfg["seed"])  # the heads' initial weights
        model = MultiTaskModel(pretrained.load_encoder(model_name), num_labels, pooling=cfg["pooling"])
        data = {}
        for split, seed_offset in (("train", 0), ("validation", 1)):
            reports = getattr(splits, split)
            labels = report_labels(reports, tasks, missing=cfg["missing"], seed=cfg["missing_seed"] + seed_offset)
            data[split] = encode_multitask(tokenizer, [r.text for r in reports], labels, max_length=cfg["max_length"])
        config = train.TrainConfig(lr=cfg["lr"], head_lr=cfg["head_lr"], epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                                   weight_decay=cfg["weight_decay"], warmup_ratio=cfg["warmup_ratio"],
                                   patience=cfg["patience"], seed=cfg["seed"])
        result = fit_multitask(model, data["train"], data["validation"], config, weights=cfg["weights"], progress=progress)
        meta = {"history": result.history, "best_epoch": result.best_epoch, "train_seconds": result.seconds,
                "examples_per_second": result.examples_per_second}
        return model.state_dict(), meta

    state, meta, hit = cache.cached_state("multitask", key_config, build)
    model = MultiTaskModel(pretrained.load_encoder(model_name), num_labels, pooling=cfg["pooling"])
    model.load_state_dict(state)
    model = model.to(env.get_device()).eval()
    info = {"config": key_config, "label_names": {t: list(LABELS[t]) for t in tasks},
            "splits": {"fab": fab, **splits_args}, "cached": hit, "path": str(cache.path_for("multitask", key_config)),
            **{k: meta.get(k) for k in ("history", "best_epoch", "train_seconds", "examples_per_second")}}
    return model, tokenizer, info
