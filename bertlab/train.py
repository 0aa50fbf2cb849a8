"""The one training loop of the course (notebook 04 builds each part; every later notebook uses it).

- :class:`SequenceClassifier`: an encoder and a linear head on the [CLS] vector.
- :func:`param_groups`, :func:`warmup_linear`: AdamW without decay on biases and LayerNorm
  weights; the learning rate warms up linearly, then decays linearly to 0.
- :func:`train_step`: forward, loss, backward, clip, step, schedule, zero the gradients.
- :func:`fit`: the loop, with its settings in :class:`TrainConfig`. Models return their
  outputs (a tensor of logits, a dict, or a ``transformers`` ModelOutput); a loss function
  of ``(outputs, batch)`` turns them into the loss (``bertlab.outputs``), so one loop trains
  a classifier, a multi-task model, a distilled student, a token tagger or a pre-training model.

The pieces it is made of are importable from here too, as notebooks use them:
``bertlab.batches`` (``encode``, ``TextDataset``, ``make_loader``: reports into padded
batches), ``bertlab.outputs`` (``cross_entropy``, the default loss) and ``bertlab.evaluation``
(``evaluate``, ``collect_logits``, ``classification_metrics``). Device placement and mixed
precision go through ``accelerate``: the same :func:`fit` runs on a CPU, one GPU, or several
GPUs under ``accelerate launch``.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from bertlab import args
from bertlab.batches import IGNORE_INDEX, LengthGroupedBatches, TextDataset, check_labels, encode, make_loader  # noqa: F401
from bertlab.env import make_accelerator  # noqa: F401  (notebook 12 calls train.make_accelerator)
from bertlab.evaluation import classification_metrics, collect_logits, collect_outputs, evaluate, predict_proba  # noqa: F401
from bertlab.outputs import cross_entropy, forward_keys, logits_of, model_inputs  # noqa: F401

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")


# ---------------------------------------------------------------- model


class SequenceClassifier(nn.Module):
    """An encoder and a classification head on its [CLS] vector (Devlin et al. 2019, section 4.1).

    ``forward(input_ids, attention_mask, token_type_ids=None)`` with LongTensors (B, T)
    returns logits (B, C). ``encoder`` is any module whose output's first element is the
    last hidden state (B, T, H): a ``transformers`` BertModel or ``bertlab.model.BertModel``.
    """

    def __init__(self, encoder: nn.Module, num_labels: int, hidden_size: int | None = None, dropout: float = 0.1):
        super().__init__()
        args.integer("num_labels", num_labels, low=2)
        self.encoder = encoder
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size or encoder.config.hidden_size, num_labels)
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
            if name == "bias" or isinstance(module, nn.LayerNorm):
                names.add(f"{module_name}.{name}" if module_name else name)
    return names


def param_groups(model: nn.Module, weight_decay: float = 0.01, *, head_lr: float | None = None,
                 head: str = "classifier") -> list[dict]:
    """AdamW parameter groups: ``[{decayed, weight_decay}, {biases and LayerNorm weights, 0.0}]``.

    With ``head_lr``, the parameters of the submodule ``head`` (names starting ``head.``)
    form two more groups with ``lr=head_lr``: a new, randomly initialised head needs
    larger steps than the pretrained encoder (the other groups take the optimizer's lr).
    Frozen parameters (``requires_grad`` False) are left out.
    """
    args.number("weight_decay", weight_decay, low=0)
    args.optional(args.number, "head_lr", head_lr, low=0, low_open=True)
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
    args.positive_int("total_steps", total_steps)
    args.integer("warmup_steps", warmup_steps, 0, total_steps)  # 0..total_steps
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(warmup_linear, warmup_steps=warmup_steps,
                                                                total_steps=total_steps))


# ---------------------------------------------------------------- outputs, losses and metrics


def train_step(model, batch: dict, optimizer, scheduler, *, loss_fn: Callable = cross_entropy,
               max_grad_norm: float | None = 1.0, accelerator=None, keys: set[str] | None = None) -> dict[str, torch.Tensor]:
    """One optimisation step on ``batch``; returns the loss (and any parts ``loss_fn`` reports) before the update.

    forward -> ``loss_fn(outputs, batch)`` -> backward -> clip the gradient norm to
    ``max_grad_norm`` (None: no clipping) -> optimizer step -> scheduler step -> zero the
    gradients. ``loss_fn`` returns the loss, or a dict with ``"loss"`` and parts to log
    (e.g. ``mlm_loss``, ``nsp_loss``). With an ``accelerate.Accelerator`` the backward pass
    and the clipping go through it (mixed precision, several GPUs). The losses come back as
    0-dim tensors on the model's device, detached: nothing waits for the device here
    (``float(out["loss"])`` reads one back; :func:`fit` reads them once per ``log_every`` steps).
    """
    model.train()
    out = loss_fn(model(**model_inputs(batch, keys if keys is not None else forward_keys(model))), batch)
    loss = out["loss"] if isinstance(out, Mapping) else out
    backward = accelerator.backward if accelerator is not None else torch.Tensor.backward
    backward(loss)
    if max_grad_norm:
        clip = accelerator.clip_grad_norm_ if accelerator is not None else nn.utils.clip_grad_norm_
        clip(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    parts = out.items() if isinstance(out, Mapping) else [("loss", loss)]
    return {k: v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v)) for k, v in parts}


# ---------------------------------------------------------------- the loop


@dataclass
class TrainConfig:
    """Settings of :func:`fit`. Bad values raise ValueError naming the field at construction."""

    lr: float = 5e-5
    head_lr: float | None = None       # learning rate of model.classifier (a new head); None: lr
    epochs: int = 2
    max_steps: int | None = None       # stop after this many steps (cycling through the data); None: epochs decide
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1          # fraction of all steps spent warming up
    max_grad_norm: float | None = 1.0  # None: no clipping
    eval_every: int | None = None      # validate every this many steps; None: after each epoch
    patience: int | None = 2           # validations without improvement before stopping; None: never stop early
    metric: str = "macro_f1"           # validation score that picks the best weights: lower is better for *loss, else higher
    seed: int = 0
    mixed_precision: str = "auto"      # auto: bf16 (or fp16) on a GPU, none on a CPU
    eval_batch_size: int = 64
    log_every: int = 10                # read the step losses back from the device (bar, result.steps) every this many steps
    group_by_length: bool = True       # batches of similar length: dynamic padding then pads little
    # Speed-up, opt-in: train only the word-embedding rows the training texts use (bertlab.vocab).
    # The same updates (unused rows are only spared weight decay) without the dense gradient,
    # Adam state and clipping of all 30,522 rows at every step: worth it for small models, where
    # that table is a large part of the step (measured in benchmarks/finetune.py).
    used_embedding_rows_only: bool = False

    def __post_init__(self):
        args.number("lr", self.lr, low=0, low_open=True)
        args.optional(args.number, "head_lr", self.head_lr, low=0, low_open=True)
        for name in ("epochs", "batch_size", "eval_batch_size", "log_every"):
            args.positive_int(name, getattr(self, name))
        for name in ("max_steps", "eval_every", "patience"):
            args.optional(args.positive_int, name, getattr(self, name))
        args.number("weight_decay", self.weight_decay, low=0)
        args.number("warmup_ratio", self.warmup_ratio, 0, 1, high_open=True)
        args.optional(args.number, "max_grad_norm", self.max_grad_norm, low=0, low_open=True)
        args.integer("seed", self.seed, low=0)
        args.one_of("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"metric must be the name of a validation score, e.g. 'macro_f1' or 'loss', got {self.metric!r}")


class EarlyStopping:
    """Tracks the validation metric: ``update(value)`` says whether it improved; ``stop`` after ``patience`` without."""

    def __init__(self, patience: int | None = 2, mode: str = "max", min_delta: float = 0.0):
        args.one_of("mode", mode, ("max", "min"))
        args.optional(args.positive_int, "patience", patience)
        self.patience, self.mode, self.min_delta = patience, mode, min_delta
        self.best: float | None = None
        self.best_epoch: int | None = None  # which update (validation) was the best, counted from 1
        self.bad_epochs = 0
        self.epoch = 0

    def update(self, value: float) -> bool:
        """Record one validation's metric; True when it is the best so far."""
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
    """What :func:`fit` measured: one row per validation (or epoch), one per step, the best one, the time."""

    history: list[dict] = field(default_factory=list)  # epoch, step, train_loss, val_<score>..., lr, seconds
    steps: list[dict] = field(default_factory=list)    # step, epoch, loss (and the loss's parts), lr
    best_epoch: int | None = None
    best_score: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0                 # training time, evaluation excluded
    examples_per_second: float = 0.0     # training examples per second of training time

    @property
    def steps_per_second(self) -> float:
        return len(self.steps) / self.seconds if self.seconds else float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


class _Validation:
    """Scores the model at each validation point, keeps the best weights, says when to stop early."""

    def __init__(self, validation, config: TrainConfig, loss_fn, metrics_fn, checkpoint, accelerator):
        self.validation, self.config, self.checkpoint, self.accelerator = validation, config, checkpoint, accelerator
        self.loss_fn, self.metrics_fn = loss_fn, metrics_fn
        self.stopper = EarlyStopping(config.patience, "min" if config.metric.endswith("loss") else "max")
        self.best_state = None

    def scores(self, model) -> dict:
        if callable(self.validation) and not isinstance(self.validation, Dataset):
            return self.validation(model)
        return evaluate(model, self.validation, batch_size=self.config.eval_batch_size, loss_fn=self.loss_fn,
                        metrics_fn=self.metrics_fn, accelerator=self.accelerator)

    def __call__(self, model, result: TrainResult, row: dict) -> None:
        """Add the validation scores to ``row``; when they are the best so far, keep (and save) the weights."""
        from bertlab import cache, vocab

        metric = self.config.metric
        scores = self.scores(model)
        if metric not in scores:
            raise ValueError(f"config.metric {metric!r} is not among the validation scores {sorted(scores)}")
        row.update({f"val_{k}": v for k, v in scores.items()})
        if not self.stopper.update(scores[metric]):
            return
        result.best_epoch, result.best_score = row["epoch"], scores[metric]
        unwrapped = self.accelerator.unwrap_model(model)  # the weights as the model will hold them after fit
        state = vocab.plain_state_dict(unwrapped) if self.config.used_embedding_rows_only else unwrapped.state_dict()
        self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        if self.checkpoint is not None and self.accelerator.is_main_process:
            cache.save_state(self.best_state, Path(self.checkpoint), {"epoch": row["epoch"], "step": row["step"],
                                                                      metric: scores[metric], "config": asdict(self.config)})


def fit(model: nn.Module, train: Dataset | DataLoader, validation: Dataset | Callable | None = None,
        config: TrainConfig | None = None, *, loss_fn: Callable = cross_entropy,
        metrics_fn: Callable | None = classification_metrics, checkpoint: str | Path | None = None,
        on_validation: Callable | None = None, progress: bool = True, accelerator=None) -> TrainResult:
    """Train ``model`` on ``train`` with AdamW, warm-up and linear decay, clipping; keep the best weights.

    ``train``: a dataset with ``collate`` (shuffled with ``config.seed``, batches of similar
    length) or a DataLoader of dict batches (used as it is). Each step feeds the model the
    batch entries its ``forward`` takes and calls ``loss_fn(outputs, batch)`` (default:
    cross-entropy against ``batch['labels']``). ``validation``: a dataset, scored by
    :func:`evaluate` with ``loss_fn`` and ``metrics_fn(outputs, batch)``, or a function of
    the model returning a dict of scores; it runs after each epoch, or every
    ``config.eval_every`` steps. The weights with the best ``config.metric`` are kept
    (loaded back at the end, and saved as safetensors to ``checkpoint``); training stops
    after ``config.patience`` validations without improvement. ``on_validation(result)``
    is called after each (e.g. to redraw a live plot). Without ``validation`` the last
    weights are kept. Ends with ``model`` in eval mode. Deterministic for ``config.seed``
    on a CPU. Raises ValueError naming the argument for an empty dataset, labels out of
    range or a bad setting.
    """
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from bertlab import cache, vocab

    config = _check_fit(model, train, validation, config)
    set_seed(config.seed)  # dropout masks and any other torch/numpy/python randomness
    own_accelerator = accelerator is None
    accelerator = accelerator or make_accelerator(config.mixed_precision)
    grouped = config.group_by_length and hasattr(train, "lengths")
    loader = train if isinstance(train, DataLoader) else make_loader(train, config.batch_size, shuffle=True,
                                                                     seed=config.seed, group_by_length=grouped)
    if accelerator.num_processes > 1 and isinstance(loader.batch_sampler, LengthGroupedBatches):
        loader.batch_sampler.partial_last = True  # accelerate splits a short batch only at the end of an epoch
    total = config.max_steps or config.epochs * len(loader)
    keys = forward_keys(model)  # the batch entries the model takes; the rest are targets for the loss
    with vocab.only_used_rows_trainable(model, train.input_ids) if config.used_embedding_rows_only else nullcontext():
        optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay, head_lr=config.head_lr), lr=config.lr)
        scheduler = linear_warmup_scheduler(optimizer, round(config.warmup_ratio * total), total)
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
        validate = None if validation is None else _Validation(validation, config, loss_fn, metrics_fn, checkpoint, accelerator)
        result = TrainResult()
        log = partial(_log_losses, accelerator)
        bar = tqdm(total=total, desc="training", unit="step", disable=not progress or not accelerator.is_main_process)
        step, seen, since, pending, start = 0, 0, [], [], time.perf_counter()
        while step < total and not result.stopped_early:
            epoch = step // len(loader) + 1
            for batch in loader:
                lr = scheduler.get_last_lr()[0]
                losses = train_step(model, batch, optimizer, scheduler, loss_fn=loss_fn,
                                    max_grad_norm=config.max_grad_norm, accelerator=accelerator, keys=keys)
                step, n = step + 1, len(next(iter(batch.values()))) * accelerator.num_processes  # examples in the batch
                row = {"step": step, "epoch": epoch, **dict.fromkeys(losses), "lr": lr}  # losses: filled in by log()
                seen, since, pending = seen + n, since + [(n, row)], pending + [(row, losses)]
                result.steps.append(row)
                bar.update(1)
                validating = step == total or (step % config.eval_every == 0 if config.eval_every
                                               else step % len(loader) == 0)
                if validating or step % config.log_every == 0:
                    log(pending)
                    bar.set_postfix(epoch=epoch, loss=f"{row['loss']:.3f}", lr=f"{lr:.1e}")
                    pending = []
                if validating:
                    result.seconds += time.perf_counter() - start  # training time: validation excluded
                    result.examples_per_second = seen / result.seconds
                    n_since = sum(n for n, _ in since)  # the training losses since the last validation, per example
                    row = {"epoch": epoch, "step": step, "lr": lr,
                           "seconds": result.seconds - sum(r["seconds"] for r in result.history),
                           **{f"train_{k}": sum(n * s[k] for n, s in since) / n_since for k in losses}}
                    since = []
                    if validate is not None:
                        validate(model, result, row)
                        bar.set_postfix(epoch=epoch, **{f"val_{config.metric}": f"{row[f'val_{config.metric}']:.3f}"})
                        result.stopped_early = validate.stopper.stop and step < total
                    result.history.append(row)
                    if on_validation is not None:
                        on_validation(result)
                    start = time.perf_counter()
                if step == total or result.stopped_early:
                    break
        log(pending)
        bar.close()
    model = accelerator.unwrap_model(model)
    if validate is not None and validate.best_state is not None:
        model.load_state_dict(validate.best_state)
    elif checkpoint is not None and accelerator.is_main_process:
        cache.save_state(model.state_dict(), Path(checkpoint), {"epoch": epoch, "step": step, "config": asdict(config)})
    if own_accelerator and accelerator.device.type == "cuda":
        accelerator.free_memory()  # drop its references so GPU memory is released (on a CPU: a slow gc.collect)
    model.eval()
    return result


def _log_losses(accelerator, pending: list[tuple[dict, dict]]) -> None:
    """Fill each step row of ``pending`` with its losses, averaged over the processes.

    The one place the loop waits for the device: one copy to the host for all the steps
    since the last log (as nanoGPT's loop, once per log interval), not one per step.
    """
    if not pending:
        return
    names, device = list(pending[0][1]), pending[0][1]["loss"].device
    values = torch.stack([torch.stack([losses[k].to(device, torch.float32) for k in names]) for _, losses in pending])
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, "mean")  # (steps, parts): each process trained on its part of the batch
    for (row, _), v in zip(pending, values.tolist()):
        row.update(zip(names, v))


def _check_fit(model, train, validation, config) -> TrainConfig:
    """Check fit's arguments once, before training (nothing is checked per step)."""
    config = config or TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a bertlab.train.TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, data in (("train", train), ("validation", validation)):
        if data is None or isinstance(data, DataLoader) or (callable(data) and not isinstance(data, Dataset)):
            continue
        if not isinstance(data, Dataset) and not hasattr(data, "__getitem__"):
            raise TypeError(f"{name} must be a torch Dataset (e.g. from bertlab.train.encode) or a DataLoader, "
                            f"got {type(data).__name__}")
        if len(data) == 0:
            raise ValueError(f"{name} is empty: fit needs at least one example")
        labels, num_labels = getattr(data, "labels", None), getattr(model, "num_labels", None)
        if isinstance(num_labels, int) and labels and isinstance(labels[0], int):
            check_labels(labels, num_labels, f"{name}.labels")
    if config.used_embedding_rows_only and not hasattr(train, "input_ids"):
        raise ValueError("config.used_embedding_rows_only needs train to be a TextDataset (the token ids it uses)")
    return config
