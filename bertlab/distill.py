"""Knowledge distillation: a small student learns from the fine-tuned teacher (notebook 08).

- :func:`kd_loss`: the distillation loss of Hinton et al. (2015), soft targets at
  temperature T (scaled by T²) mixed with the hard-label cross-entropy by alpha.
- :func:`student_from_teacher`: a student with a subset of the teacher's layers, initialised
  from the teacher's embeddings, those layers and its head (as DistilBERT, Sanh et al. 2019,
  took every second layer of BERT-base).
- :func:`teacher_logits`, :func:`distill`: train a student on the teacher's logits with
  :func:`bertlab.train.fit` (the same optimizer, schedule, clipping and early stopping).
- :func:`distilled_student`: the course's cached student, trained when missing.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bertlab import train

#: Settings of the course's student (notebook 08); ``layers`` index the teacher's layers.
#: Students need a larger learning rate than fine-tuning a full encoder (STACK-NOTES: a
#: 2-layer student stayed at 67% after an epoch at 5e-5 and reached 85% at 2e-4). Three of
#: the six layers: on a GPU trial (500 test reports, teacher 0.890) 3-layer students reached
#: 0.88-0.90, 2-layer ones 0.83-0.87 and 1-layer ones 0.58-0.72. Two epochs keep notebook 08,
#: which trains two students, within its few minutes on 2 CPU cores.
#: ``transfer``: extra reports of the teacher's fab, without labels, that the student also
#: learns from (the teacher's logits as soft targets, its answer as the hard label): Hinton
#: et al. (2015) distil on a "transfer set" that need not be labelled, and TinyBERT (Jiao et
#: al. 2020) enlarges it for task-specific distillation.
DISTILL_DEFAULTS = {"layers": [0, 2, 4], "temperature": 2.0, "alpha": 0.5, "epochs": 2, "lr": 3e-4, "head_lr": 1e-3,
                    "batch_size": 16, "warmup_ratio": 0.1, "weight_decay": 0.01, "patience": 2, "seed": 0,
                    "transfer": 0}
#: Overrides that train in seconds (grading mode, smoke tests).
QUICK = {"epochs": 1}


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None, *,
            temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """The distillation loss (a scalar), averaged over the batch:

    ``alpha * T² * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)``

    ``student_logits`` and ``teacher_logits`` are (B, C); ``labels`` (B,) class ids, needed
    unless ``alpha == 1``. The T² keeps the soft term's gradients on the scale of the hard
    term's as T grows (Hinton et al. 2015, section 2). No gradient flows into the teacher.
    Raises ValueError for ``temperature <= 0``, ``alpha`` outside [0, 1] or mismatched shapes.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1] (the weight of the soft-target loss), got {alpha!r}")
    if not isinstance(student_logits, torch.Tensor) or student_logits.dim() != 2:
        raise ValueError(f"student_logits must be a (B, C) tensor, got "
                         f"{tuple(student_logits.shape) if isinstance(student_logits, torch.Tensor) else type(student_logits).__name__}")
    if not isinstance(teacher_logits, torch.Tensor) or teacher_logits.shape != student_logits.shape:
        got = tuple(teacher_logits.shape) if isinstance(teacher_logits, torch.Tensor) else type(teacher_logits).__name__
        raise ValueError(f"teacher_logits must have the student's shape {tuple(student_logits.shape)}, got {got}")
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


def _check_layers(layers: Sequence[int], n_teacher: int) -> list[int]:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) == 0:
        raise ValueError(f"layers must be a non-empty list of teacher layer indices, got {layers!r}")
    out = []
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_teacher:
            raise ValueError(f"layers: {i!r} is not a layer index of the {n_teacher}-layer teacher (0..{n_teacher - 1})")
        out.append(i)
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
    layers = _check_layers(layers, config.num_hidden_layers)
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


class KDLoss:
    """``loss_fn`` for :func:`bertlab.train.fit`: labels (B, 1 + C) pack the class id and the teacher's logits.

    Plain labels (B,) (the validation data) get the cross-entropy, so the validation loss
    stays comparable between students.
    """

    def __init__(self, temperature: float, alpha: float):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long),
                temperature=temperature, alpha=alpha)  # validates the settings now, not mid-training
        self.temperature, self.alpha = temperature, alpha

    def __call__(self, logits, labels):
        if labels.dim() == 1:
            return F.cross_entropy(logits, labels)
        return kd_loss(logits, labels[:, 1:].to(logits.dtype), labels[:, 0].long(),
                       temperature=self.temperature, alpha=self.alpha)


def _metrics(logits, labels):
    return train.classification_metrics(logits, labels[:, 0].long() if labels.dim() == 2 else labels)


def distill(student: nn.Module, teacher_logits_train: torch.Tensor, train_data: train.TextDataset,
            validation: train.TextDataset | None = None, config: train.TrainConfig | None = None, *,
            temperature: float = 2.0, alpha: float = 0.5, progress: bool = True) -> train.TrainResult:
    """Train ``student`` on ``train_data`` with :func:`kd_loss` against ``teacher_logits_train`` (N, C).

    Everything else is :func:`bertlab.train.fit` (AdamW, warm-up and decay, clipping,
    early stopping on the validation macro-F1 with plain labels; only the word-embedding
    rows the training reports use are trained). ``alpha = 0`` is
    training on the labels only. Returns fit's :class:`~bertlab.train.TrainResult`.
    """
    if train_data.labels is None:
        raise ValueError("train_data has no labels: encode it with labels=... (alpha < 1 needs them)")
    if teacher_logits_train.dim() != 2 or len(teacher_logits_train) != len(train_data):
        raise ValueError(f"teacher_logits_train must be (N, C) with N = len(train_data) = {len(train_data)}, "
                         f"got {tuple(teacher_logits_train.shape)}")
    packed = [[float(y), *row] for y, row in zip(train_data.labels, teacher_logits_train.tolist())]
    data = train.TextDataset(train_data.input_ids, packed, pad_id=train_data.pad_id, pad_to=train_data.pad_to)
    return train.fit(student, data, validation, config, progress=progress, loss_fn=KDLoss(temperature, alpha),
                     metrics_fn=_metrics)


def distilled_student(fab: str = "A", task: str = "failure_type", *, teacher_overrides: dict | None = None,
                      progress: bool = True, **overrides):
    """The course's student of the cached fine-tuned teacher: ``(student, tokenizer, info)``.

    ``teacher_overrides`` go to :func:`bertlab.train.finetuned_classifier` (e.g.
    ``bertlab.train.QUICK``); ``overrides`` change :data:`DISTILL_DEFAULTS` (``layers``,
    ``temperature``, ``alpha`` (0: labels only), ``epochs``, ``lr``, ``transfer``...). Trained
    on the teacher's training reports (plus ``transfer`` unlabelled ones, see
    :func:`transfer_reports`) and cached under a key of both configurations; ``info`` holds
    the teacher's info (``teacher``), the settings, the history, ``cached``, and the seconds
    the training (``train_seconds``) and the whole build with the teacher's logits
    (``build_seconds``) took.
    """
    from bertlab import cache, env
    from bertlab.data import make_splits

    unknown = sorted(set(overrides) - set(DISTILL_DEFAULTS))
    if unknown:
        raise TypeError(f"distilled_student got unknown settings {unknown}; known: {sorted(DISTILL_DEFAULTS)}")
    cfg = {**DISTILL_DEFAULTS, **overrides}
    cfg["layers"] = list(cfg["layers"])
    if isinstance(cfg["transfer"], bool) or not isinstance(cfg["transfer"], int) or cfg["transfer"] < 0:
        raise ValueError(f"transfer must be a number of unlabelled reports >= 0, got {cfg['transfer']!r}")
    teacher, tokenizer, tinfo = train.finetuned_classifier(fab, task, progress=progress, **(teacher_overrides or {}))
    _check_layers(cfg["layers"], teacher.encoder.config.num_hidden_layers)
    KDLoss(cfg["temperature"], cfg["alpha"])
    key_config = {"teacher": tinfo["config"], **cfg}
    max_length = tinfo["config"]["max_length"]

    def build():
        start = time.perf_counter()
        splits = make_splits(**tinfo["splits"])
        ids = {n: i for i, n in enumerate(tinfo["label_names"])}
        train_data = train.encode(tokenizer, [r.text for r in splits.train], [ids[getattr(r, task)] for r in splits.train],
                                  max_length=max_length, num_labels=len(ids))
        val = train.encode(tokenizer, [r.text for r in splits.validation],
                           [ids[getattr(r, task)] for r in splits.validation], max_length=max_length, num_labels=len(ids))
        z = cached_teacher_logits(teacher, train_data, tinfo)
        if cfg["transfer"]:
            extra = transfer_reports(tinfo["splits"], cfg["transfer"])
            extra_ids = tokenizer([r.text for r in extra], truncation=True, max_length=max_length)["input_ids"]
            z_extra = cached_teacher_logits(teacher, train.TextDataset(extra_ids), tinfo)
            train_data = train.TextDataset(list(train_data.input_ids) + list(extra_ids),
                                           list(train_data.labels) + z_extra.argmax(-1).tolist(), pad_id=train_data.pad_id)
            z = torch.cat([z, z_extra])
        torch.manual_seed(cfg["seed"])
        student = student_from_teacher(teacher, cfg["layers"])
        config = train.TrainConfig(lr=cfg["lr"], head_lr=cfg["head_lr"], epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                                   weight_decay=cfg["weight_decay"], warmup_ratio=cfg["warmup_ratio"],
                                   patience=cfg["patience"], seed=cfg["seed"])
        result = distill(student, z, train_data, val, config, temperature=cfg["temperature"], alpha=cfg["alpha"],
                         progress=progress)
        meta = {"history": result.history, "best_epoch": result.best_epoch, "train_seconds": result.seconds,
                "build_seconds": time.perf_counter() - start}  # training plus the teacher's logits
        return student.state_dict(), meta

    state, meta, hit = cache.cached_state(f"student-{task}", key_config, build)
    student = student_from_teacher(teacher.cpu(), cfg["layers"])
    student.load_state_dict(state)
    student = student.to(env.get_device()).eval()
    info = {"teacher": tinfo, "settings": cfg, "cached": hit, "path": str(cache.path_for(f"student-{task}", key_config)),
            **{k: meta.get(k) for k in ("history", "best_epoch", "train_seconds", "build_seconds")}}
    return student, tokenizer, info


def transfer_reports(splits: dict, n: int) -> list:
    """``n`` more reports of the split's fab, none a near-duplicate of its train, validation or test reports.

    ``splits`` are the keyword arguments of :func:`bertlab.data.make_splits` (a teacher's
    ``info["splits"]``); the reports follow its training reports in the same stream, and
    their labels are not used (the teacher labels them).
    """
    from bertlab.data import make_splits

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"transfer must be a positive number of reports, got {n!r}")
    n_train = splits["n_train"]
    return make_splits(**{**splits, "n_train": n_train + n}).train[n_train:]


def cached_teacher_logits(teacher: nn.Module, data: train.TextDataset, tinfo: dict) -> torch.Tensor:
    """:func:`teacher_logits` of the cached teacher on its training reports, cached beside it."""
    from bertlab import cache

    key = {"teacher": tinfo["config"], "n": len(data), "ids": _fingerprint_ids(data.input_ids)}
    state, _, _ = cache.cached_state("teacher-logits", key, lambda: ({"logits": teacher_logits(teacher, data)}, {}))
    return state["logits"]


def _fingerprint_ids(input_ids) -> str:
    import hashlib

    h = hashlib.sha256()
    for ids in input_ids:
        h.update(torch.tensor(ids, dtype=torch.int32).numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]
