"""BERT with its lower layers frozen: their output computed once per report, only the top trained (notebooks 05-07).

When the embeddings and the first ``k`` layers do not train, they compute the same thing at
every epoch (in eval mode: no dropout), so their output is computed once and each training
step runs only the layers above ``k`` and the head. That makes many runs (seeds, label
budgets, tasks, ``k``) affordable on a CPU.

- :class:`HiddenStates`: the hidden states (T_i, H) of each report after the frozen layers,
  with one class id per report, or one per task (``tasks``, :meth:`HiddenStates.select`).
- :func:`layer_states`: those states after ``k`` layers for several ``k``, from one pass;
  :func:`frozen_states`: for one ``k``.
- :func:`top_layer_at_cls`: the last layer computed at [CLS] only, the one position the heads read.
- :class:`TopLayers`: copies of the layers above ``k`` and one head (logits (B, C)) or one
  head per task (``{task: logits (B, C_task)}``), from :func:`classifier_heads` (which
  ``bertlab.multitask.MultiTaskModel`` uses too).

Shapes: B batch, T longest report of the batch, T_i report i's length, H hidden size,
C classes, K tasks.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from bertlab import args
from bertlab.evaluation import eval_mode
from bertlab.model import BertModel, extended_attention_mask, scaled_dot_product_attention
from bertlab.train import make_loader

# ---------------------------------------------------------------- the states of the frozen layers


class HiddenStates(Dataset):
    """Hidden states (T_i, H) of each report after the frozen layers, with labels; ``collate`` pads a batch.

    ``labels`` hold one class id per report or, with ``tasks``, one row per report with a
    class id per task (column k for ``tasks[k]``, -100 where a report has no label). A batch
    is ``hidden_states`` (B, T, H) (zeros after a report's end), ``attention_mask`` (B, T),
    ``labels`` (B,) or (B, K), and ``index`` (B,) (each item's position in the dataset).
    Raises ValueError naming ``labels`` when they do not fit the states or the tasks.
    """

    def __init__(self, states: Sequence[torch.Tensor], labels: Sequence | None = None,
                 tasks: Sequence[str] | None = None):
        self.states = list(states)
        self.tasks = None if tasks is None else tuple(tasks)
        self.labels = None if labels is None else [list(y) if self.tasks else y for y in labels]
        if self.labels is not None and len(self.labels) != len(self.states):
            raise ValueError(f"labels has {len(self.labels)} entries for {len(self.states)} states; give one per report")
        if self.tasks is not None and self.labels is not None and any(len(y) != len(self.tasks) for y in self.labels):
            raise ValueError(f"labels must hold one row of {len(self.tasks)} class ids (tasks {list(self.tasks)}) per report")

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, i: int) -> dict:
        item = {"hidden_states": self.states[i], "index": i}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item

    def lengths(self) -> list[int]:
        return [len(s) for s in self.states]

    def subset(self, indices: Sequence[int]) -> "HiddenStates":
        """The reports at ``indices`` (e.g. a label budget), in that order."""
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        return HiddenStates([self.states[i] for i in indices], labels, self.tasks)

    def select(self, tasks: str | Sequence[str]) -> "HiddenStates":
        """The same states with the label columns of ``tasks`` only, in that order (e.g. a single-task run)."""
        tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
        if self.tasks is None:
            raise ValueError("select needs states with tasks: these have one class id per report")
        unknown = [t for t in tasks if t not in self.tasks]
        if not tasks or unknown:
            raise ValueError(f"tasks must be some of {list(self.tasks)}, got {list(tasks)}")
        cols = [self.tasks.index(t) for t in tasks]
        labels = None if self.labels is None else [[row[k] for k in cols] for row in self.labels]
        return HiddenStates(self.states, labels, tasks)

    def task_labels(self, task: str) -> list[int]:
        """The class ids of ``task`` (-100 where missing)."""
        return [row[0] for row in self.select(task).labels]

    def collate(self, items: list[dict]) -> dict:
        h = nn.utils.rnn.pad_sequence([it["hidden_states"] for it in items], batch_first=True)  # (B, T, H)
        lengths = torch.tensor([len(it["hidden_states"]) for it in items])  # (B,)
        batch = {"hidden_states": h,
                 "attention_mask": (torch.arange(h.shape[1]) < lengths[:, None]).long(),  # (B, T): 1 on real tokens
                 "index": torch.tensor([it["index"] for it in items])}
        if "labels" in items[0]:
            batch["labels"] = torch.tensor([it["labels"] for it in items])  # (B,) or (B, K)
        return batch


@torch.no_grad()
def layer_states(bert: BertModel, data, ks: Sequence[int], batch_size: int = 64, *,
                 top_keys_values: bool = False, progress: bool = True) -> dict[int, HiddenStates]:
    """``{k: HiddenStates}``: each report's hidden states after the embeddings and the first ``k``
    layers of ``bert``, for every ``k`` in ``ks``, from one pass over ``data``.

    ``k = 0`` is the embeddings' output, ``k = num_layers`` the last layer's: ``TopLayers(bert,
    k, ...)`` trains what sits above ``k``. The frozen part runs in eval mode (no dropout: it
    computes the same thing every epoch) and ``bert`` goes back to the mode it was in.
    ``bert`` is a ``bertlab.model.BertModel`` (``bertlab.domain.course_encoder`` converts a
    ``transformers`` one); ``data`` a ``bertlab.train.TextDataset`` (a
    ``bertlab.multitask.MultiTaskDataset`` gives states with its ``tasks``). With
    ``top_keys_values`` each state is (T_i, 3H): that output x, then the keys and values the
    next layer (``bert.encoder.layer[k]``) computes from it, side by side, for ``TopLayers(...,
    train_keys_values=False)``. ``progress`` shows a bar when it takes more than a second.
    Raises ValueError naming ``ks`` for a k outside ``0..num_layers`` (``num_layers - 1``
    with ``top_keys_values``), TypeError for another model.
    """
    from tqdm.auto import tqdm

    if not isinstance(bert, BertModel):
        raise TypeError(f"bert must be a bertlab.model.BertModel (see bertlab.domain.course_encoder), got {type(bert).__name__}")
    n = len(bert.encoder.layer)
    top = n - 1 if top_keys_values else n  # keys and values come from the layer above k
    ks = list(ks)
    if not ks:
        raise ValueError("ks is empty: give the numbers of frozen layers, e.g. [4, 5]")
    for i, k in enumerate(ks):
        args.integer(f"ks[{i}]" + (" (with top_keys_values)" if top_keys_values else ""), k, 0, top)
    args.positive_int("batch_size", batch_size)
    device = next(bert.parameters()).device
    lengths = data.lengths()
    order = sorted(range(len(data)), key=lengths.__getitem__)  # similar lengths per batch: little padding
    states = {k: [None] * len(data) for k in ks}
    loader = make_loader(data, batch_size, order=order)
    # delay: a call that takes under a second prints nothing
    with eval_mode(bert):
        _record_states(bert, tqdm(loader, desc="frozen states", unit="batch", disable=not progress, delay=1.0),
                       states, ks, top_keys_values, lengths, device)
    tasks = getattr(data, "tasks", None)
    return {k: HiddenStates(s, getattr(data, "labels", None), tasks) for k, s in states.items()}


def _record_states(bert, batches, states: dict, ks, top_keys_values: bool, lengths, device) -> None:
    """Fill ``states[k][i]`` with layer k's output (T_i, H) for every report i of ``batches``."""
    for batch in batches:
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)  # (B, T)
        segments = batch["token_type_ids"].to(device) if "token_type_ids" in batch else torch.zeros_like(ids)
        x = bert.embeddings(ids, segments)  # (B, T, H)
        ext = extended_attention_mask(mask, x.dtype)  # (B, 1, 1, T)
        for k in range(max(ks) + 1):
            if k > 0:
                x = bert.encoder.layer[k - 1](x, ext)  # (B, T, H)
            if k not in states:
                continue
            out = x
            if top_keys_values:
                att = bert.encoder.layer[k].attention.self
                out = torch.cat([x, att.key(x), att.value(x)], dim=-1)  # (B, T, 3H)
            out = out.cpu()  # one copy per batch, then one slice per report
            for b, i in enumerate(batch["index"].tolist()):
                states[k][i] = out[b, :lengths[i]].clone()  # (T_i, H) or (T_i, 3H)


def frozen_states(bert: BertModel, data, n_frozen: int, batch_size: int = 64, *,
                  top_keys_values: bool = False, progress: bool = True) -> HiddenStates:
    """The states after the first ``n_frozen`` layers (:func:`layer_states` for one k), what ``TopLayers(bert, n_frozen, ...)``
    reads. Raises ValueError naming ``n_frozen`` outside ``0..num_layers`` (``num_layers - 1`` with ``top_keys_values``).
    """
    if isinstance(bert, BertModel):  # else layer_states raises the TypeError
        n = len(bert.encoder.layer)
        args.integer("n_frozen", n_frozen, 0, n - 1 if top_keys_values else n)
    return layer_states(bert, data, [n_frozen], batch_size, top_keys_values=top_keys_values, progress=progress)[n_frozen]


# ---------------------------------------------------------------- the trained top


def top_layer_at_cls(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None, *,
                     keys: torch.Tensor | None = None, values: torch.Tensor | None = None) -> torch.Tensor:
    """``layer(x, mask)[:, :1]`` for a ``bertlab.model.BertLayer``, computed at [CLS] only: (B, 1, H).

    The heads read only the last layer's [CLS] vector, so the last layer needs one query, not T:
    keys and values still come from every token (B, T, H), but the query, the attention output,
    its Add & Norm and the feed-forward block run on one position, about a sixth of the
    layer's arithmetic for reports of ~100 tokens. The result (and its gradients) are the
    whole layer's at [CLS]; in training mode its dropout masks are drawn for [CLS] only, so
    they differ from the whole layer's draws but not in distribution. ``mask`` is additive
    (B, 1, 1, T), from ``bertlab.model.extended_attention_mask``. ``keys`` and ``values``
    (B, T, H), when given, replace ``layer``'s key and value projections of ``x`` (computed
    once with frozen weights: :func:`layer_states` with ``top_keys_values``).
    """
    att = layer.attention.self
    B, T, H = x.shape
    cls = x[:, :1]  # (B, 1, H)
    q = att.split_heads(att.query(cls))  # (B, nh, 1, hs)
    k = att.split_heads(att.key(x) if keys is None else keys)  # (B, nh, T, hs)
    v = att.split_heads(att.value(x) if values is None else values)  # (B, nh, T, hs)
    y = scaled_dot_product_attention(q, k, v, mask, att.dropout)  # (B, nh, 1, hs)
    h = layer.attention.output(y.transpose(1, 2).reshape(B, 1, H), cls)  # (B, 1, H): Add & Norm
    return layer.output(layer.intermediate(h), h)  # (B, 1, H): FFN, Add & Norm


def classifier_heads(hidden_size: int, num_labels: int | Mapping[str, int]) -> nn.Module:
    """One linear head ``nn.Linear(H, C)`` for an int ``num_labels``, or an ``nn.ModuleDict`` of one per task
    for a ``{task: C_task}`` mapping; weights ~ N(0, 0.02^2) (BERT's initializer), biases 0.

    Raises ValueError naming ``num_labels`` for fewer than 2 classes, an empty mapping or a
    task name that is not an identifier (it becomes a module name).
    """
    if not isinstance(num_labels, Mapping):
        heads = [nn.Linear(hidden_size, args.integer("num_labels", num_labels, low=2))]
        out = heads[0]
    else:
        if not num_labels:
            raise ValueError("num_labels must be an int >= 2 or a non-empty dict {task: number of classes}, got {}")
        for task, c in num_labels.items():
            if not isinstance(task, str) or not task.isidentifier():
                raise ValueError(f"num_labels: task names must be identifiers like 'severity', got {task!r}")
            args.integer(f"num_labels[{task!r}]", c, low=2)
        out = nn.ModuleDict({t: nn.Linear(hidden_size, c) for t, c in num_labels.items()})
        heads = list(out.values())
    for head in heads:
        nn.init.normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
    return out


class TopLayers(nn.Module):
    """Copies of the layers of ``bert`` above the first ``n_frozen``, and a head on their [CLS] vector.

    ``forward(hidden_states, attention_mask)`` takes the frozen layers' output (B, T, H)
    (:func:`frozen_states`) and returns logits (B, C) for an int ``num_labels``, or
    ``{task: logits (B, C_task)}`` in the order of a ``{task: C_task}`` mapping (one head per
    task, all reading the same [CLS] vector). The last layer runs at [CLS] only
    (:func:`top_layer_at_cls`); ``n_frozen = num_layers`` trains the head alone. The head(s)
    sit in ``classifier`` (``TrainConfig.head_lr`` reaches them). ``bert`` is a
    ``bertlab.model.BertModel`` and is left unchanged by training.

    ``train_keys_values=False`` (one trained layer only) freezes that layer's key and value
    projections too: they are then computed once with the frozen states (``frozen_states(...,
    top_keys_values=True)``, states of width 3H), and a step runs only [CLS]'s path through the
    layer (query, attention output, feed-forward block, head). Raises ValueError naming the
    argument for a bad ``n_frozen``, ``num_labels``, ``dropout`` or ``train_keys_values``, and
    TypeError for a ``bert`` that is not a ``bertlab.model.BertModel``.
    """

    def __init__(self, bert: BertModel, n_frozen: int, num_labels: int | Mapping[str, int], dropout: float = 0.1, *,
                 train_keys_values: bool = True):
        super().__init__()
        if not isinstance(bert, BertModel):
            raise TypeError(f"bert must be a bertlab.model.BertModel (see domain.course_encoder), got {type(bert).__name__}")
        n_layers = len(bert.encoder.layer)
        args.integer("n_frozen", n_frozen, 0, n_layers)
        args.number("dropout", dropout, 0, 1, high_open=True)
        if not train_keys_values and n_layers - n_frozen != 1:
            raise ValueError(f"train_keys_values=False needs exactly one trained layer: n_frozen must be {n_layers - 1}, "
                             f"got {n_frozen}")
        self.hidden_size = bert.config.hidden_size
        self.layers = nn.ModuleList(copy.deepcopy(layer) for layer in bert.encoder.layer[n_frozen:])
        self.dropout = nn.Dropout(dropout)
        self.classifier = classifier_heads(self.hidden_size, num_labels)
        self.num_labels = dict(num_labels) if isinstance(num_labels, Mapping) else num_labels
        self.tasks = tuple(num_labels) if isinstance(num_labels, Mapping) else None
        self.train_keys_values = bool(train_keys_values)
        if not self.train_keys_values:
            att = self.layers[-1].attention.self
            for p in [*att.key.parameters(), *att.value.parameters()]:
                p.requires_grad_(False)

    def features(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The [CLS] vector (B, H) after the trained layers."""
        mask = extended_attention_mask(attention_mask, hidden_states.dtype)  # (B, 1, 1, T)
        if not self.train_keys_values:
            if hidden_states.shape[-1] != 3 * self.hidden_size:
                raise ValueError("train_keys_values=False reads states of width 3H (x, keys, values) from "
                                 f"frozen_states(..., top_keys_values=True), got width {hidden_states.shape[-1]}")
            x, k, v = hidden_states.split(self.hidden_size, dim=-1)  # 3 x (B, T, H)
            return top_layer_at_cls(self.layers[-1], x, mask, keys=k, values=v)[:, 0]  # (B, H)
        if not self.layers:  # every layer frozen: the head reads the last layer's [CLS]
            return hidden_states[:, 0]  # (B, H)
        x = hidden_states
        for layer in self.layers[:-1]:
            x = layer(x, mask)  # (B, T, H)
        return top_layer_at_cls(self.layers[-1], x, mask)[:, 0]  # (B, H)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor):
        h = self.dropout(self.features(hidden_states, attention_mask))  # (B, H)
        if self.tasks is None:
            return self.classifier(h)  # (B, C)
        return {t: self.classifier[t](h) for t in self.tasks}  # {task: (B, C_task)}
