"""The training loop every notebook from 04 on uses (notebook 04 explains each part).

- :func:`encode`, :class:`TextDataset`: token ids of each report, unpadded; a batch is
  padded to its own longest report (dynamic padding) or to a fixed length.
- :class:`SequenceClassifier`: an encoder and a linear head on the [CLS] vector.
- :func:`param_groups`: AdamW's groups; biases and LayerNorm weights get no weight decay.
- :func:`warmup_linear`, :func:`linear_warmup_scheduler`: the learning-rate multiplier,
  0 -> 1 over the warm-up steps, then linearly down to 0 (as transformers'
  ``get_linear_schedule_with_warmup``).
- :func:`train_step`: forward, loss, backward, clip, step, schedule, zero the gradients.
- :func:`evaluate`, :func:`classification_metrics`: loss, accuracy and macro-F1.
- :func:`only_used_rows_trainable`: train only the rows of the word-embedding table the
  training reports use (the same updates, without a dense gradient of all 30,522 rows each step).
- :class:`EarlyStopping`, :func:`fit`: epochs, validation each epoch, early stopping, the
  best weights restored (and saved as safetensors when asked), a history for plots.
- :func:`finetuned_classifier`: the course's shared fine-tuned model, from the cache or
  trained when missing.

Device placement and mixed precision go through ``accelerate``: the same :func:`fit`
runs on a CPU, one GPU, or several GPUs under ``accelerate launch``.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

METRICS = {"macro_f1": "max", "accuracy": "max", "loss": "min"}  # validation metric -> better direction
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")


# ---------------------------------------------------------------- data


class TextDataset(Dataset):
    """Token ids of each text (unpadded, each list at most ``max_length`` long) and labels.

    ``collate`` pads a list of items into a batch: to the longest item of that batch
    (dynamic padding, ``pad_to=None``) or to ``pad_to`` tokens. A batch is a dict of
    LongTensors ``input_ids`` (B, T), ``attention_mask`` (B, T), ``labels`` (B,) when the
    dataset has labels, and ``index`` (B,): each item's position in the dataset.
    """

    def __init__(self, input_ids: Sequence[Sequence[int]], labels: Sequence | None = None,
                 pad_id: int = 0, pad_to: int | None = None):
        if labels is not None and len(labels) != len(input_ids):
            raise ValueError(f"labels has {len(labels)} entries but input_ids has {len(input_ids)}; give one label per text")
        if pad_to is not None and (not isinstance(pad_to, int) or pad_to < 1):
            raise ValueError(f"pad_to must be None (pad to the longest in each batch) or a positive int, got {pad_to!r}")
        if pad_to is not None and input_ids and max(map(len, input_ids)) > pad_to:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest text ({max(map(len, input_ids))} tokens)")
        self.input_ids = [list(ids) for ids in input_ids]
        self.labels = None if labels is None else list(labels)
        self.pad_id = pad_id
        self.pad_to = pad_to

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.input_ids[i], "index": i}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def with_padding(self, pad_to: int | None) -> "TextDataset":
        """The same texts, padded to ``pad_to`` tokens per batch (None: dynamic padding)."""
        return TextDataset(self.input_ids, self.labels, self.pad_id, pad_to)

    def subset(self, indices: Sequence[int]) -> "TextDataset":
        """The items at ``indices`` (e.g. a label budget), in that order."""
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        return TextDataset([self.input_ids[i] for i in indices], labels, self.pad_id, self.pad_to)

    def collate(self, items: list[dict]) -> dict:
        T = self.pad_to or max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), T), dtype=torch.long)
        for b, it in enumerate(items):
            n = len(it["input_ids"])
            ids[b, :n] = torch.as_tensor(it["input_ids"], dtype=torch.long)
            mask[b, :n] = 1
        batch = {"input_ids": ids, "attention_mask": mask,  # (B, T)
                 "index": torch.tensor([it["index"] for it in items])}
        if "labels" in items[0]:
            batch["labels"] = torch.tensor([it["labels"] for it in items])
        return batch


def encode(tokenizer, texts: Sequence[str], labels: Sequence[int] | None = None, *,
           max_length: int = 128, num_labels: int | None = None) -> TextDataset:
    """Tokenize ``texts`` (truncated to ``max_length`` tokens, [CLS] and [SEP] included), unpadded.

    ``labels`` are class ids; with ``num_labels`` each must lie in ``0..num_labels-1``.
    Raises ValueError naming the argument for an empty ``texts``, a non-string text, a
    length mismatch or a label out of range.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got a single str; wrap it in a list")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give at least one text to encode")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"texts[{bad}] must be a str, got {type(texts[bad]).__name__}")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2 (room for [CLS] and [SEP]), got {max_length!r}")
    if labels is not None:
        labels = [int(y) for y in labels]
        if len(labels) != len(texts):
            raise ValueError(f"labels has {len(labels)} entries but texts has {len(texts)}; give one label per text")
        check_labels(labels, num_labels, "labels")
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return TextDataset(ids, labels, pad_id=tokenizer.pad_token_id or 0)


def check_labels(labels: Sequence[int], num_labels: int | None, name: str = "labels") -> None:
    """Raise ValueError naming ``name`` when a label is not an int in ``0..num_labels-1``."""
    if num_labels is not None and (not isinstance(num_labels, int) or num_labels < 1):
        raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
    for i, y in enumerate(labels):
        if y < 0 or (num_labels is not None and y >= num_labels):
            upper = "" if num_labels is None else f"..{num_labels - 1}"
            raise ValueError(f"{name}[{i}] is {y}, out of range: class ids must be 0{upper}"
                             + ("" if num_labels is None else f" for {num_labels} classes"))


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Batches of indices whose items have similar lengths, in a random order (a batch sampler).

    Each epoch: shuffle all indices, cut them into chunks of ``batch_size * chunk_batches``,
    sort each chunk by length, cut it into batches, shuffle the batches. Dynamic padding
    then pads each batch to a length close to its items' own.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator, chunk_batches: int = 16):
        self.lengths, self.batch_size, self.generator, self.chunk = list(lengths), batch_size, generator, batch_size * chunk_batches

    def __len__(self) -> int:
        return sum(math.ceil(min(self.chunk, len(self.lengths) - i) / self.batch_size)
                   for i in range(0, len(self.lengths), self.chunk))

    def __iter__(self):
        perm = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches = []
        for i in range(0, len(perm), self.chunk):
            chunk = sorted(perm[i:i + self.chunk], key=self.lengths.__getitem__)
            batches += [chunk[j:j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[b]


def make_loader(data: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                group_by_length: bool = False, order: Sequence[int] | None = None) -> DataLoader:
    """A DataLoader over ``data`` with its ``collate``.

    ``shuffle``: a new random order each epoch from a generator seeded by ``seed``;
    with ``group_by_length`` too, batches of similar length (:class:`LengthGroupedBatches`).
    ``order`` fixes the order of the items instead (e.g. sorted by length for evaluation).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    collate = getattr(data, "collate", None)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    if shuffle and group_by_length:
        if not hasattr(data, "lengths"):
            raise ValueError("group_by_length needs a dataset with lengths(), e.g. from bertlab.train.encode")
        return DataLoader(data, batch_sampler=LengthGroupedBatches(data.lengths(), batch_size, generator),
                          collate_fn=collate)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      sampler=list(order) if order is not None else None, collate_fn=collate)


# ---------------------------------------------------------------- model


class SequenceClassifier(nn.Module):
    """An encoder and a classification head on its [CLS] vector (Devlin et al. 2019, section 4.1).

    ``forward(input_ids, attention_mask)`` with LongTensors (B, T) returns logits (B, C).
    ``encoder`` is any module whose output's first element is the last hidden state
    (B, T, H): a ``transformers`` BertModel or ``bertlab.model.BertModel``.
    """

    def __init__(self, encoder: nn.Module, num_labels: int, hidden_size: int | None = None, dropout: float = 0.1):
        super().__init__()
        if not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(f"num_labels must be an int >= 2, got {num_labels!r}")
        if hidden_size is None:
            hidden_size = encoder.config.hidden_size
        self.encoder = encoder
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)  # BERT's initializer_range
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        h = self.encoder(input_ids, **kwargs)[0]  # (B, T, H)
        return self.classifier(self.dropout(h[:, 0]))  # (B, C): from the [CLS] vector


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------- optimisation


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters that get no weight decay: every bias and every LayerNorm weight.

    Decaying them pulls a LayerNorm's gain towards 0 and a bias towards 0, which is a
    constraint on the scale of activations rather than a penalty on complexity.
    """
    names = set()
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if name == "bias" or isinstance(module, nn.LayerNorm):
                names.add(full)
    return names


def param_groups(model: nn.Module, weight_decay: float = 0.01, *, head_lr: float | None = None,
                 head: str = "classifier") -> list[dict]:
    """AdamW parameter groups: ``[{decayed, weight_decay}, {biases and LayerNorm weights, 0.0}]``.

    With ``head_lr``, the parameters of the submodule ``head`` (names starting ``head.``)
    form two more groups with ``lr=head_lr``: a new, randomly initialised head needs
    larger steps than the pretrained encoder (the other groups take the optimizer's lr).
    Frozen parameters (``requires_grad`` False) are left out.
    """
    if not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a float >= 0, got {weight_decay!r}")
    if head_lr is not None and not (isinstance(head_lr, (int, float)) and head_lr > 0):
        raise ValueError(f"head_lr must be None or a number > 0, got {head_lr!r}")
    skip = no_decay_names(model)
    groups = {(h, nd): [] for h in (False, True) for nd in (False, True)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            is_head = head_lr is not None and name.startswith(head + ".")
            groups[(is_head, name in skip)].append(p)
    if head_lr is not None and not groups[(True, False)] + groups[(True, True)]:
        raise ValueError(f"head_lr is set but the model has no trainable parameters under {head!r}")
    out = [{"params": groups[(False, False)], "weight_decay": float(weight_decay)},
           {"params": groups[(False, True)], "weight_decay": 0.0}]
    if head_lr is not None:
        out += [{"params": groups[(True, False)], "weight_decay": float(weight_decay), "lr": float(head_lr)},
                {"params": groups[(True, True)], "weight_decay": 0.0, "lr": float(head_lr)}]
    return out


def warmup_linear(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier: ``step / warmup_steps`` during warm-up, then linear down to 0 at ``total_steps``."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def linear_warmup_scheduler(optimizer, warmup_steps: int, total_steps: int):
    """``LambdaLR`` with :func:`warmup_linear`; call ``step()`` once after each optimizer step."""
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    if not isinstance(warmup_steps, int) or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be an int in 0..total_steps ({total_steps}), got {warmup_steps!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(warmup_linear, warmup_steps=warmup_steps,
                                                                total_steps=total_steps))


def _split_batch(batch: dict) -> tuple[dict, torch.Tensor | None]:
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "index")}
    return inputs, batch.get("labels")


def _check_logits_labels(logits, labels) -> None:
    if isinstance(logits, torch.Tensor) and logits.dim() == 2 and labels.dim() == 1 and not labels.is_floating_point():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= logits.shape[1]:
            bad = lo if lo < 0 else hi
            raise ValueError(f"labels holds class id {bad}, but the model outputs {logits.shape[1]} classes "
                             f"(class ids must be 0..{logits.shape[1] - 1})")


def train_step(model, batch: dict, optimizer, scheduler, *, max_grad_norm: float | None = 1.0,
               loss_fn: Callable = F.cross_entropy, accelerator=None) -> float:
    """One optimisation step on ``batch``; returns the loss (a float) before the update.

    forward -> ``loss_fn(logits, batch['labels'])`` -> backward -> clip the gradient norm
    to ``max_grad_norm`` (None: no clipping) -> optimizer step -> scheduler step -> zero
    the gradients. With an ``accelerate.Accelerator`` the backward pass and the clipping
    go through it (mixed precision, several GPUs).
    """
    model.train()
    inputs, labels = _split_batch(batch)
    logits = model(**inputs)
    _check_logits_labels(logits, labels)
    loss = loss_fn(logits, labels)
    if accelerator is None:
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    else:
        accelerator.backward(loss)
        if max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


# ---------------------------------------------------------------- evaluation


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 (scikit-learn's, over the classes present) of ``argmax(logits)``."""
    from sklearn.metrics import accuracy_score, f1_score

    pred = logits.argmax(-1).cpu().numpy()
    true = labels.cpu().numpy()
    return {"accuracy": float(accuracy_score(true, pred)),
            "macro_f1": float(f1_score(true, pred, average="macro", zero_division=0))}


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def collect_logits(model, data: Dataset, *, batch_size: int = 64, accelerator=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (N, C) and labels (N,) (None without labels) for every item of ``data``, in its order, on the CPU.

    Items are batched shortest first, so little padding is computed; the result is put
    back in the dataset's order.
    """
    if len(data) == 0:
        raise ValueError("data is empty: nothing to evaluate")
    was_training = model.training
    model.eval()
    order = sorted(range(len(data)), key=data.lengths().__getitem__) if hasattr(data, "lengths") else None
    loader = make_loader(data, batch_size, order=order)
    if accelerator is not None:
        loader = accelerator.prepare(loader)
    device = _model_device(model)
    logits, labels, index = [], [], []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        inputs, y = _split_batch(batch)
        out = model(**inputs)
        i = batch["index"]
        if accelerator is not None:
            out, i = accelerator.gather_for_metrics((out, i))
            y = None if y is None else accelerator.gather_for_metrics(y)
        logits.append(out.float().cpu())
        index.append(i.cpu())
        if y is not None:
            labels.append(y.cpu())
    model.train(was_training)
    logits, index = torch.cat(logits), torch.cat(index)
    inverse = torch.empty_like(index)
    inverse[index] = torch.arange(len(index))
    return logits[inverse], (torch.cat(labels)[inverse] if labels else None)


def evaluate(model, data: Dataset, *, batch_size: int = 64, loss_fn: Callable = F.cross_entropy,
             metrics_fn: Callable = classification_metrics, accelerator=None) -> dict[str, float]:
    """``{'loss', 'accuracy', 'macro_f1'}`` of ``model`` on ``data`` (the loss averaged over all items)."""
    logits, labels = collect_logits(model, data, batch_size=batch_size, accelerator=accelerator)
    if labels is None:
        raise ValueError("data has no labels: evaluate needs them (use collect_logits for predictions)")
    return {"loss": float(loss_fn(logits, labels)), **metrics_fn(logits, labels)}


def predict_proba(model, tokenizer, texts: Sequence[str], *, max_length: int = 128, batch_size: int = 64) -> torch.Tensor:
    """Class probabilities (N, C) for raw ``texts``, on the CPU."""
    logits, _ = collect_logits(model, encode(tokenizer, texts, max_length=max_length), batch_size=batch_size)
    return logits.softmax(-1)


# ---------------------------------------------------------------- the loop


@dataclass
class TrainConfig:
    """Settings of :func:`fit`. Bad values raise ValueError naming the field at construction."""

    lr: float = 5e-5
    head_lr: float | None = None       # learning rate of model.classifier (a new head); None: lr
    epochs: int = 2
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1          # fraction of all steps spent warming up
    max_grad_norm: float | None = 1.0  # None: no clipping
    patience: int | None = 2           # epochs without improvement before stopping; None: never stop early
    metric: str = "macro_f1"           # validation metric that picks the best epoch: macro_f1, accuracy or loss
    seed: int = 0
    mixed_precision: str = "auto"      # auto: bf16 (or fp16) on a GPU, none on a CPU
    eval_batch_size: int = 64
    group_by_length: bool = True       # batches of similar length: dynamic padding then pads little
    used_embedding_rows_only: bool = True  # train only the word-embedding rows the data use: same updates, faster

    def __post_init__(self):
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")

        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            positive_int(name)
        if self.patience is not None:
            positive_int("patience")
        if self.head_lr is not None and (isinstance(self.head_lr, bool) or not isinstance(self.head_lr, (int, float))
                                         or not self.head_lr > 0 or not math.isfinite(self.head_lr)):
            raise ValueError(f"head_lr must be None or a finite number > 0, got {self.head_lr!r}")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not isinstance(self.warmup_ratio, (int, float)) or not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.max_grad_norm is not None and not (isinstance(self.max_grad_norm, (int, float)) and self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be None or > 0, got {self.max_grad_norm!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {sorted(METRICS)}, got {self.metric!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")


class EarlyStopping:
    """Tracks the validation metric: ``update(value)`` says whether it improved; ``stop`` when it has not for ``patience`` epochs."""

    def __init__(self, patience: int | None = 2, mode: str = "max", min_delta: float = 0.0):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if patience is not None and (not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience must be None or a positive int, got {patience!r}")
        self.patience, self.mode, self.min_delta = patience, mode, min_delta
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.epoch = 0

    def update(self, value: float) -> bool:
        """Record one epoch's metric; True when it is the best so far."""
        self.epoch += 1
        better = self.best is None or (value > self.best + self.min_delta if self.mode == "max"
                                       else value < self.best - self.min_delta)
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, self.epoch, 0
        else:
            self.bad_epochs += 1
        return better

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience


@dataclass
class TrainResult:
    """What :func:`fit` measured: one row per epoch, one per step, the best epoch, the time."""

    history: list[dict] = field(default_factory=list)  # epoch, train_loss, val_loss, val_accuracy, val_macro_f1, lr, seconds
    steps: list[dict] = field(default_factory=list)    # step, epoch, loss, lr
    best_epoch: int | None = None
    best_score: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0                 # training time, evaluation excluded
    examples_per_second: float = 0.0     # training examples per second of training time

    def to_dict(self) -> dict:
        return asdict(self)


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def make_accelerator(mixed_precision: str = "auto", device=None):
    """An ``accelerate.Accelerator`` on ``device`` (default: ``bertlab.env.get_device()``).

    Under ``accelerate launch`` it runs one process per GPU. accelerate allows one
    mixed-precision setting per process.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from bertlab import env

    device = torch.device(device) if device is not None else env.get_device()
    # The [CLS] head leaves the encoder's pooler unused; DDP must be told, or it waits for its gradients.
    return Accelerator(mixed_precision=_mixed_precision(mixed_precision), cpu=device.type == "cpu",
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def _check_dataset(name: str, data, model) -> None:
    if data is None:
        return
    if not isinstance(data, Dataset) and not hasattr(data, "__getitem__"):
        raise TypeError(f"{name} must be a torch Dataset (e.g. from bertlab.train.encode), got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError(f"{name} is empty: fit needs at least one example")
    labels = getattr(data, "labels", None)
    if labels is None:
        raise ValueError(f"{name} has no labels: encode it with labels=...")
    num_labels = getattr(model, "num_labels", None)
    if isinstance(num_labels, int) and labels and isinstance(labels[0], int):
        check_labels(labels, num_labels, f"{name}.labels")


def fit(model: nn.Module, train: Dataset, validation: Dataset | None = None, config: TrainConfig | None = None, *,
        checkpoint: str | Path | None = None, progress: bool = True, loss_fn: Callable = F.cross_entropy,
        metrics_fn: Callable = classification_metrics, accelerator=None) -> TrainResult:
    """Train ``model`` on ``train``; evaluate on ``validation`` after each epoch.

    AdamW (no decay on biases and LayerNorm weights), linear warm-up then linear decay,
    gradient clipping, shuffled batches with dynamic padding. With ``validation``: the
    epoch with the best ``config.metric`` is kept, training stops after
    ``config.patience`` epochs without improvement, the best weights are loaded back into
    ``model`` at the end, and saved as safetensors to ``checkpoint`` when given. Without
    it, the last epoch's weights are kept. Deterministic for ``config.seed`` on a CPU.

    ``model(**batch)`` (the batch without ``labels`` and ``index``: e.g. ``input_ids`` and
    ``attention_mask``) must return logits; ``loss_fn(logits, labels)`` and
    ``metrics_fn(logits, labels) -> dict`` may be replaced (e.g. for several heads). Returns a :class:`TrainResult`. Raises ValueError naming the argument
    for an empty dataset, labels out of range or a bad setting.

    With ``config.used_embedding_rows_only`` (the default), a model with a trainable
    ``encoder.embeddings.word_embeddings`` trains only the rows of the token ids in
    ``train`` (:func:`only_used_rows_trainable`): the same updates as the whole table, except
    that rows no training report uses are not weight-decayed, without a dense gradient of
    every row at each step.
    """
    from accelerate.utils import set_seed

    from bertlab import cache

    config = config or TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a bertlab.train.TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_dataset("train", train, model)
    _check_dataset("validation", validation, model)

    set_seed(config.seed)  # dropout masks and any other torch/numpy/python randomness
    own_accelerator = accelerator is None
    accelerator = accelerator or make_accelerator(config.mixed_precision)
    loader = make_loader(train, config.batch_size, shuffle=True, seed=config.seed,
                         group_by_length=config.group_by_length and hasattr(train, "lengths"))
    total_steps = config.epochs * len(loader)
    warmup_steps = round(config.warmup_ratio * total_steps)
    rows_only = config.used_embedding_rows_only and _has_word_embeddings(model) and isinstance(train, TextDataset)
    with only_used_rows_trainable(model, train) if rows_only else nullcontext():
        result, best_state = _fit_loop(model, train, validation, config, accelerator, loader, total_steps, warmup_steps,
                                       checkpoint=checkpoint, progress=progress, loss_fn=loss_fn, metrics_fn=metrics_fn,
                                       fold_rows=rows_only)
    model = accelerator.unwrap_model(model)
    if best_state is not None:
        model.load_state_dict(best_state)
    elif checkpoint is not None and accelerator.is_main_process:
        cache.save_state(model.state_dict(), Path(checkpoint), {"epoch": result.history[-1]["epoch"], "config": asdict(config)})
    if own_accelerator and accelerator.device.type == "cuda":
        accelerator.free_memory()  # drop its references so GPU memory is released (on a CPU: a slow gc.collect)
    model.eval()
    return result


def _has_word_embeddings(model: nn.Module) -> bool:
    embeddings = getattr(getattr(model, "encoder", None), "embeddings", None)
    return isinstance(getattr(embeddings, "word_embeddings", None), nn.Embedding)


def _plain_state_dict(model: nn.Module) -> dict:
    """``model.state_dict()`` with the names and the whole table of a plain nn.Embedding (see :class:`_UsedRows`)."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, _UsedRows):
            state.pop(f"{name}.rows")
            state[f"{name}.weight"] = module.folded()
    return state


def _fit_loop(model, train, validation, config, accelerator, loader, total_steps, warmup_steps, *, checkpoint, progress,
              loss_fn, metrics_fn, fold_rows):
    from tqdm.auto import tqdm

    from bertlab import cache

    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay, head_lr=config.head_lr), lr=config.lr)
    scheduler = linear_warmup_scheduler(optimizer, warmup_steps, total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    stopper = EarlyStopping(config.patience, METRICS[config.metric])
    result = TrainResult()
    best_state = None
    bar = tqdm(total=total_steps, desc="training", unit="step", disable=not progress or not accelerator.is_main_process)
    step = 0
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        loss_sum, n_seen = 0.0, 0
        for batch in loader:
            lr = scheduler.get_last_lr()[0]
            loss = train_step(model, batch, optimizer, scheduler, max_grad_norm=config.max_grad_norm,
                              loss_fn=loss_fn, accelerator=accelerator)
            step += 1
            n = len(batch["labels"])
            loss_sum, n_seen = loss_sum + loss * n, n_seen + n
            result.steps.append({"step": step, "epoch": epoch, "loss": loss, "lr": lr})
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}", lr=f"{lr:.1e}")
        seconds = time.perf_counter() - start
        result.seconds += seconds
        result.examples_per_second = len(train) * epoch / result.seconds
        row = {"epoch": epoch, "train_loss": loss_sum / n_seen, "lr": lr, "seconds": seconds}
        if validation is not None:
            scores = evaluate(model, validation, batch_size=config.eval_batch_size, loss_fn=loss_fn,
                              metrics_fn=metrics_fn, accelerator=accelerator)
            row.update({f"val_{k}": v for k, v in scores.items()})
            if stopper.update(scores[config.metric]):
                result.best_epoch, result.best_score = epoch, scores[config.metric]
                unwrapped = accelerator.unwrap_model(model)  # best weights as the model will be after fit
                state = _plain_state_dict(unwrapped) if fold_rows else unwrapped.state_dict()
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
                if checkpoint is not None and accelerator.is_main_process:
                    cache.save_state(best_state, Path(checkpoint),
                                     {"epoch": epoch, config.metric: scores[config.metric], "config": asdict(config)})
            bar.set_postfix(epoch=epoch, **{f"val_{config.metric}": f"{scores[config.metric]:.3f}"})
        result.history.append(row)
        if stopper.stop and epoch < config.epochs:
            result.stopped_early = True
            break
    bar.close()
    return result, best_state


class _UsedRows(nn.Module):
    """A word-embedding table read as usual, with only the rows ``rows`` trainable (a copy of them)."""

    def __init__(self, embedding: nn.Embedding, rows: torch.Tensor):
        super().__init__()
        weight = embedding.weight.detach()
        self.register_buffer("frozen", weight, persistent=False)  # the table itself, not copied
        local = torch.full((weight.shape[0],), -1, dtype=torch.long, device=weight.device)
        local[rows] = torch.arange(len(rows), device=weight.device)
        self.register_buffer("local", local, persistent=False)  # token id -> row of self.rows, or -1
        self.register_buffer("row_ids", rows.to(weight.device), persistent=False)
        self.rows = nn.Parameter(weight[rows].clone())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = self.local[input_ids]
        used = F.embedding(local.clamp(min=0), self.rows)
        return torch.where((local >= 0).unsqueeze(-1), used, F.embedding(input_ids, self.frozen))

    def folded(self) -> torch.Tensor:
        """The whole table with the trained rows written back."""
        return self.frozen.clone().index_copy_(0, self.row_ids, self.rows.detach().to(self.frozen.dtype))


@contextmanager
def only_used_rows_trainable(model: nn.Module, data: TextDataset):
    """Inside the block, only the word-embedding rows of token ids in ``data`` are parameters.

    Fab A's 1,000 training reports use 1,369 of BERT's 30,522 WordPieces, yet
    back-propagating into an ``nn.Embedding`` builds a dense gradient for the whole table,
    and AdamW and clipping then read and write all of it every step. Rows no training report
    uses get a zero gradient and so no Adam update: making only the used rows trainable gives
    the same training, except that the unused rows are not weight-decayed (a relative shrink
    of ``lr * weight_decay * steps``, about 1e-3 here). On 2 CPU cores notebook 08's two
    students trained in 81 and 70 s instead of 96 and 87 s, with the same test accuracy. On leaving the block (also after an error) the trained rows are
    written back into the model's own ``nn.Embedding``. A model whose table is frozen or
    tied to another module (an MLM decoder) is left as it is.
    """
    holder = getattr(getattr(model, "encoder", None), "embeddings", None)
    embedding = getattr(holder, "word_embeddings", None)
    if not isinstance(embedding, nn.Embedding):
        raise TypeError("model must have .encoder.embeddings.word_embeddings (an nn.Embedding), "
                        f"got {type(embedding).__name__}")
    if not isinstance(data, TextDataset):
        raise TypeError(f"data must be a bertlab.train.TextDataset, got {type(data).__name__}")
    tied = any(m is not embedding and getattr(m, "weight", None) is embedding.weight for m in model.modules())
    if tied or not embedding.weight.requires_grad:
        yield model
        return
    used = {int(i) for ids in data.input_ids for i in ids}
    used.discard(embedding.padding_idx)  # the padding row never gets a gradient
    if not used or max(used) >= embedding.num_embeddings or min(used) < 0:
        raise ValueError(f"data must hold token ids in 0..{embedding.num_embeddings - 1}")
    rows = _UsedRows(embedding, torch.tensor(sorted(used)))
    holder.word_embeddings = rows
    try:
        yield model
    finally:
        table = rows.folded()
        embedding.weight.data = table
        holder.word_embeddings = embedding


# ---------------------------------------------------------------- the shared fine-tuned model

#: Settings of the course's shared fine-tuned classifier (notebook 04); later notebooks reuse it.
FINETUNE_DEFAULTS = {"n_train": 1000, "n_val": 300, "n_test": 500, "data_seed": 0, "epochs": 2, "lr": 2e-4,
                     "head_lr": 1e-3, "batch_size": 16, "max_length": 128, "warmup_ratio": 0.1, "weight_decay": 0.01,
                     "patience": 2, "seed": 0}
#: Overrides that train in seconds: for grading mode (NBGRADER_EXECUTION) and smoke tests.
QUICK = {"n_train": 64, "n_val": 32, "n_test": 64, "epochs": 1}


def fingerprint(*splits) -> str:
    """A short hash of the texts and labels of the given lists of reports (part of a cache key)."""
    h = hashlib.sha256()
    for reports in splits:
        for r in reports:
            h.update(r.text.encode())
            h.update(json.dumps([r.failure_type, r.severity, r.root_cause, r.action]).encode())
    return h.hexdigest()[:16]


def finetuned_classifier(fab: str = "A", task: str = "failure_type", *, model_name: str | None = None,
                         progress: bool = True, **overrides):
    """The encoder fine-tuned on ``fab``'s ``task`` labels: ``(model, tokenizer, info)``.

    Loaded from the model cache when a model with the same configuration (including the
    data, by a fingerprint of its texts and labels) was trained before; trained with
    :func:`fit` and cached otherwise. ``overrides`` change :data:`FINETUNE_DEFAULTS`
    (e.g. ``**QUICK`` in grading mode). ``info`` holds the configuration, the label
    names, the training history and time, ``splits`` (the ``make_splits`` arguments, so
    the caller gets the very same train/validation/test reports) and ``cached``
    (True when loaded). The model is in eval mode on ``bertlab.env.get_device()``.
    """
    from bertlab import cache, env, pretrained
    from bertlab.data import LABELS, make_splits

    unknown = sorted(set(overrides) - set(FINETUNE_DEFAULTS))
    if unknown:
        raise TypeError(f"finetuned_classifier got unknown settings {unknown}; known: {sorted(FINETUNE_DEFAULTS)}")
    if task not in LABELS:
        raise ValueError(f"task must be one of {sorted(LABELS)}, got {task!r}")
    cfg = {**FINETUNE_DEFAULTS, **overrides}
    splits_args = {"n_train": cfg["n_train"], "n_val": cfg["n_val"], "n_test": cfg["n_test"], "seed": cfg["data_seed"]}
    splits = make_splits(fab, **splits_args)
    label_names = list(LABELS[task])
    target = pretrained.model_name_or_dir(model_name)
    name = pretrained.DEFAULT_NAME if pretrained.is_default(target) else str(model_name or target)
    key_config = {"fab": fab, "task": task, "model": name, **cfg,
                  "data": fingerprint(splits.train, splits.validation)}
    tokenizer = pretrained.load_tokenizer(model_name)

    def build():
        torch.manual_seed(cfg["seed"])  # the head's initial weights
        model = SequenceClassifier(pretrained.load_encoder(model_name), len(label_names))
        ids = {n: i for i, n in enumerate(label_names)}
        train = encode(tokenizer, [r.text for r in splits.train], [ids[getattr(r, task)] for r in splits.train],
                       max_length=cfg["max_length"], num_labels=len(label_names))
        val = encode(tokenizer, [r.text for r in splits.validation], [ids[getattr(r, task)] for r in splits.validation],
                     max_length=cfg["max_length"], num_labels=len(label_names))
        config = TrainConfig(lr=cfg["lr"], head_lr=cfg["head_lr"], epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                             weight_decay=cfg["weight_decay"], warmup_ratio=cfg["warmup_ratio"],
                             patience=cfg["patience"], seed=cfg["seed"])
        result = fit(model, train, val, config, progress=progress)
        meta = {"history": result.history, "steps": result.steps, "best_epoch": result.best_epoch, "train_seconds": result.seconds,
                "examples_per_second": result.examples_per_second, "device": str(_model_device(model))}
        return model.state_dict(), meta

    state, meta, hit = cache.cached_state(f"finetuned-{task}", key_config, build)
    model = SequenceClassifier(pretrained.load_encoder(model_name), len(label_names))
    model.load_state_dict(state)
    model = model.to(env.get_device()).eval()
    info = {"config": key_config, "label_names": label_names, "splits": {"fab": fab, **splits_args},
            "cached": hit, "path": str(cache.path_for(f"finetuned-{task}", key_config)),
            **{k: meta.get(k) for k in ("history", "steps", "best_epoch", "train_seconds", "examples_per_second", "device")}}
    return model, tokenizer, info
