"""Knowledge distillation: a small student learns from the fine-tuned teacher (notebook 08).

- :func:`kd_loss`: the distillation loss of Hinton et al. (2015), soft targets at
  temperature T (scaled by T²) mixed with the hard-label cross-entropy by alpha.
- :func:`student_from_teacher`: a student with a subset of the teacher's layers, initialised
  from the teacher's embeddings, those layers and its head (as DistilBERT, Sanh et al. 2019,
  took every second layer of BERT-base).
- :func:`teacher_logits`, :func:`distillation_loss`, :func:`distill`: train a student on the
  teacher's logits with :func:`bertlab.train.fit` (the same optimizer, schedule, clipping and
  early stopping); the training reports carry the teacher's logits as a field of each item.
- :func:`hidden_loss` (an option of :func:`distill`, ``hidden_weight``): DistilBERT's cosine
  loss, 1 - cos between each student layer's output and the teacher layer output it stands
  for (:func:`teacher_layers_for`), over the non-padding tokens. :class:`LayerOutputs` records
  the layer outputs of a forward pass (forward hooks: the models' own forward, unchanged);
  :class:`HiddenStatePairs` pairs the student's with the teacher's on each batch;
  :func:`hidden_cosines` measures the cosine per layer over a data set.

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
from bertlab.evaluation import eval_mode


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


# ---------------------------------------------------------------- hidden states (DistilBERT's cosine loss)


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder layers of a :class:`bertlab.train.SequenceClassifier` (``transformers`` or ``bertlab.model`` BERT)."""
    layers = getattr(getattr(getattr(model, "encoder", None), "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError("model must be a bertlab.train.SequenceClassifier around a BERT encoder "
                        f"(with .encoder.encoder.layer), got {type(model).__name__}")
    return layers


def teacher_layers_for(layers: Sequence[int], n_teacher: int) -> list[int]:
    """For each layer of a student made of the teacher's ``layers``, the teacher layer whose output it stands for.

    Student layer j is a copy of teacher layer ``layers[j]`` and replaces the teacher's layers
    ``layers[j]`` up to the next one the student keeps (the last student layer: up to the
    teacher's last); its output stands for the output of the last of them. For ``[0, 2, 4]``
    of a 6-layer teacher: ``[1, 3, 5]``, so the student's last layer, the one its head reads,
    is pulled to the teacher's last layer, as in DistilBERT. ValueError for bad ``layers``.
    """
    layers = check_layers(layers, args.positive_int("n_teacher (the teacher's number of layers)", n_teacher))
    return [nxt - 1 for nxt in layers[1:]] + [n_teacher - 1]


def hidden_loss(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
                attention_mask: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """DistilBERT's cosine loss (Sanh et al. 2019, L_cos): ``1 - cos(h_s, h_t)`` (a scalar).

    ``student_states[k]`` and ``teacher_states[k]`` are (B, T, H) hidden states of a pair of
    layers; the loss is averaged over the tokens where ``attention_mask`` (B, T) is 1 (padding
    is ignored), then over the pairs, so its scale does not grow with the number of layers.
    Only the direction of each vector counts, not its length. No gradient flows into the
    teacher's states. ValueError for mismatched shapes or a mask without a token (``check=False``
    skips the latter, which reads the mask back from the device: the training loop's path).
    """
    if len(student_states) == 0 or len(student_states) != len(teacher_states):
        raise ValueError(f"student_states and teacher_states must be lists of the same non-zero length, "
                         f"got {len(student_states)} and {len(teacher_states)}")
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2 or (check and not attention_mask.any()):
        raise ValueError("attention_mask must be a (B, T) tensor with at least one token (1)")
    keep = attention_mask.bool()
    tokens = keep.sum().clamp(min=1)  # a tensor: the mean over the tokens without reading their number back
    losses = []
    for k, (h_s, h_t) in enumerate(zip(student_states, teacher_states)):
        if h_s.dim() != 3 or h_s.shape != h_t.shape or h_s.shape[:2] != keep.shape:
            raise ValueError(f"student_states[{k}] and teacher_states[{k}] must both be (B, T, H) with (B, T) = "
                             f"{tuple(keep.shape)} of attention_mask, got {tuple(h_s.shape)} and {tuple(h_t.shape)}")
        cos = F.cosine_similarity(h_s.float(), h_t.detach().float(), dim=-1)  # (B, T)
        losses.append(((1 - cos) * keep).sum() / tokens)  # padding weighs 0
    return torch.stack(losses).mean()


class LayerOutputs:
    """The outputs (B, T, H) of some encoder layers of ``model`` at its latest forward pass.

    Inside ``with LayerOutputs(model, [1, 3]) as rec:`` each forward pass of ``model`` (its
    own ``forward``, unchanged) records the output of those layers, through forward hooks;
    ``rec.states()`` returns them in the order of ``layers``. Leaving the block removes the
    hooks and forgets the states. ValueError for a layer the model does not have.
    """

    def __init__(self, model: nn.Module, layers: Sequence[int]):
        self.blocks = encoder_layers(model)
        self.layers = [args.integer(f"layers[{k}] (a layer of the {len(self.blocks)}-layer model)", i, 0, len(self.blocks) - 1)
                       for k, i in enumerate(layers)]
        self.outputs: dict[int, torch.Tensor] = {}
        self._handles: list = []

    def _keep(self, i: int, module, inputs, output) -> None:
        self.outputs[i] = output[0] if isinstance(output, tuple) else output  # transformers layers may return tuples

    def __enter__(self) -> "LayerOutputs":
        self._handles = [self.blocks[i].register_forward_hook(partial(self._keep, i)) for i in sorted(set(self.layers))]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self.outputs = [], {}

    def states(self) -> list[torch.Tensor]:
        if not self._handles:
            raise RuntimeError("LayerOutputs records only inside its with block")
        if any(i not in self.outputs for i in self.layers):
            raise RuntimeError("no forward pass of the model was recorded yet")
        return [self.outputs[i] for i in self.layers]


class HiddenStatePairs:
    """The (student states, teacher states) of a batch, layer by layer (see :func:`teacher_layers_for`).

    ``student`` is made of the teacher's ``layers`` (:func:`student_from_teacher`). Inside the
    ``with`` block the student's layer outputs are recorded at each of its forward passes, and
    ``pairs(batch)``, called after the student's forward pass on ``batch``, runs the teacher
    on the same batch (eval mode, ``torch.no_grad``) and returns both lists of (B, T, H) states.
    The teacher runs on every batch rather than once per report: caching its states would keep
    (tokens x layers x H) floats in memory (about 0.4 GB for the course's 1,000 reports and 3
    layers) to save one of the two epochs' teacher passes. The teacher is put back in the mode
    it was in when the block ends. ValueError when the student does not have ``len(layers)`` layers.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, layers: Sequence[int]):
        self.mapping = teacher_layers_for(layers, len(encoder_layers(teacher)))
        n_student = len(encoder_layers(student))
        if n_student != len(self.mapping):
            raise ValueError(f"layers must be the teacher layers the student was made of: {len(self.mapping)} "
                             f"given for a student of {n_student} layers")
        self.teacher = teacher
        self.student_outputs = LayerOutputs(student, range(n_student))
        self.teacher_outputs = LayerOutputs(teacher, self.mapping)
        self._keys = train.forward_keys(teacher)

    def __enter__(self) -> "HiddenStatePairs":
        self._teacher_mode = eval_mode(self.teacher)
        self._teacher_mode.__enter__()
        self.student_outputs.__enter__()
        self.teacher_outputs.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.student_outputs.__exit__(*exc)
        self.teacher_outputs.__exit__(*exc)
        self._teacher_mode.__exit__(*exc)

    def __call__(self, batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        student_states = self.student_outputs.states()
        with torch.no_grad():
            self.teacher(**train.model_inputs(batch, self._keys))
        return student_states, self.teacher_outputs.states()


@torch.no_grad()
def hidden_cosines(student: nn.Module, teacher: nn.Module, data: train.TextDataset, layers: Sequence[int],
                   batch_size: int = 64) -> list[float]:
    """The mean cosine between each student layer's output and its teacher layer's, over the tokens of ``data``.

    One number per student layer (the pairs of :func:`teacher_layers_for`; ``1 - `` it is that
    layer's :func:`hidden_loss` over all of ``data``). Both models run in eval mode on the
    student's device and go back to their modes.
    """
    device = next(student.parameters()).device
    keys = train.forward_keys(student)
    sums, tokens = torch.zeros(len(layers), dtype=torch.float64), 0
    with eval_mode(student), HiddenStatePairs(student, teacher, layers) as pairs:
        for batch in train.make_loader(data, batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            student(**train.model_inputs(batch, keys))
            keep = batch["attention_mask"].bool()
            for k, (h_s, h_t) in enumerate(zip(*pairs(batch))):
                sums[k] += F.cosine_similarity(h_s[keep].float(), h_t[keep].float(), dim=-1).double().sum().cpu()
            tokens += int(keep.sum())
    return (sums / tokens).tolist()


# ---------------------------------------------------------------- training


def teacher_logits(teacher: nn.Module, data: train.TextDataset, batch_size: int = 64) -> torch.Tensor:
    """The teacher's logits (N, C) for every item of ``data`` (eval mode, so no dropout)."""
    logits, _ = train.collect_logits(teacher, data, batch_size=batch_size)
    return logits


def _distillation_loss(outputs, batch: dict, *, temperature: float, alpha: float, hidden_weight: float = 0.0,
                       pairs: HiddenStatePairs | None = None) -> torch.Tensor | dict:
    if "teacher_logits" not in batch:  # validation reports: the plain loss, comparable between students
        return train.cross_entropy(outputs, batch)
    logits = train.logits_of(outputs)  # (B, C)
    kd = kd_loss(logits, batch["teacher_logits"].to(logits.dtype), batch.get("labels"),
                 temperature=temperature, alpha=alpha)
    if not hidden_weight:
        return kd
    cos = hidden_loss(*pairs(batch), batch["attention_mask"], check=False)
    return {"loss": kd + hidden_weight * cos, "kd_loss": kd, "hidden_loss": cos}  # fit logs the parts


def distillation_loss(temperature: float = 2.0, alpha: float = 0.5, *, hidden_weight: float = 0.0,
                      pairs: HiddenStatePairs | None = None):
    """``loss_fn(outputs, batch)`` for :func:`bertlab.train.fit`: :func:`kd_loss` against ``batch["teacher_logits"]``.

    With ``hidden_weight > 0`` it adds ``hidden_weight *`` :func:`hidden_loss` of the states
    ``pairs(batch)`` (a :class:`HiddenStatePairs`, open while training) and returns
    ``{"loss", "kd_loss", "hidden_loss"}``; with 0 it is exactly :func:`kd_loss`. Batches
    without teacher logits (the validation reports) get the cross-entropy, so the validation
    loss stays comparable between students. Bad settings raise ValueError now, not in the
    middle of training.
    """
    args.number("temperature", temperature, low=0, low_open=True)
    args.probability("alpha (the weight of the soft-target loss)", alpha)
    args.number("hidden_weight (the weight of the hidden-state cosine loss)", hidden_weight, low=0)
    if not hidden_weight:
        return partial(_distillation_loss, temperature=temperature, alpha=alpha)
    if not isinstance(pairs, HiddenStatePairs):
        raise ValueError(f"hidden_weight={hidden_weight:g} needs pairs, a HiddenStatePairs of the student and the teacher")
    return partial(_distillation_loss, temperature=temperature, alpha=alpha, hidden_weight=float(hidden_weight),
                   pairs=pairs)


def distill(student: nn.Module, teacher_logits_train: torch.Tensor, train_data: train.TextDataset,
            validation: train.TextDataset | None = None, config: train.TrainConfig | None = None, *,
            temperature: float = 2.0, alpha: float = 0.5, hidden_weight: float = 0.0, teacher: nn.Module | None = None,
            layers: Sequence[int] | None = None, progress: bool = True) -> train.TrainResult:
    """Train ``student`` on ``train_data`` with :func:`kd_loss` against ``teacher_logits_train`` (N, C).

    The logits travel with the reports (``train_data.with_fields(teacher_logits=...)``);
    everything else is :func:`bertlab.train.fit` with ``config`` (AdamW, warm-up and decay,
    clipping, early stopping on the validation macro-F1 with plain labels). ``alpha = 0`` is
    training on the labels only; ``alpha = 1`` needs no labels. ``hidden_weight > 0`` adds
    that times :func:`hidden_loss` between the student's layers and the ``teacher``'s (run on
    each batch, see :class:`HiddenStatePairs`); ``layers`` are the teacher layers the student
    was made of. The history then holds ``train_kd_loss`` and ``train_hidden_loss`` too.
    Returns fit's :class:`~bertlab.train.TrainResult`.
    """
    args.number("hidden_weight (the weight of the hidden-state cosine loss)", hidden_weight, low=0)
    loss_fn = distillation_loss(temperature, alpha)
    if train_data.labels is None and alpha < 1:
        raise ValueError("train_data has no labels: encode it with labels=... (alpha < 1 needs them)")
    if teacher_logits_train.dim() != 2 or len(teacher_logits_train) != len(train_data):
        raise ValueError(f"teacher_logits_train must be (N, C) with N = len(train_data) = {len(train_data)}, "
                         f"got {tuple(teacher_logits_train.shape)}")
    data = train_data.with_fields(teacher_logits=teacher_logits_train.detach().cpu())
    if not hidden_weight:
        return train.fit(student, data, validation, config, loss_fn=loss_fn, progress=progress)
    if teacher is None or layers is None:
        raise ValueError(f"hidden_weight={hidden_weight:g} needs the teacher and the layers the student was made of "
                         f"(teacher=..., layers=...)")
    with HiddenStatePairs(student, teacher, layers) as pairs:
        loss_fn = distillation_loss(temperature, alpha, hidden_weight=hidden_weight, pairs=pairs)
        return train.fit(student, data, validation, config, loss_fn=loss_fn, progress=progress)
