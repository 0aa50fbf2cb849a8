"""Checks that find a broken fine-tune before a long run, and two practices that prevent trouble (notebook 12).

Each check returns a :class:`Verdict` (``ok``, the measured ``value``, a one-line ``detail``),
so a test or a notebook can act on it and a learner can print it:

- :func:`loss_at_init`: an untrained head guesses, so the loss is about ln C;
- :func:`overfit_one_batch`: a working model and loop drive one small batch's loss to near 0;
- :func:`gradient_flow`: every trainable parameter gets a finite, non-zero gradient;
- :func:`collapsed`: the predictions are not (nearly) all one class;
- :func:`leakage`: no test report is a near-duplicate of a training report;
- :func:`truncation`: how much of each report ``max_length`` cuts off; :func:`truncate_ids`
  keeps the head, the tail or both (Sun et al. 2019, *How to Fine-Tune BERT for Text
  Classification?*, section 5.3.1).

The practices: :func:`accumulation_step` (gradients of several small batches summed into one
step equal to the large-batch step) and :func:`autocast` / :func:`grad_scaler` (mixed
precision: bf16 on a CPU and on GPUs that have it, fp16 with a gradient scaler on older GPUs).
"""
from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn

from bertlab import args
from bertlab.data.reports import near_duplicate_key
from bertlab.evaluation import eval_mode
from bertlab.train import cross_entropy, forward_keys, logits_of, model_inputs, train_step


@dataclass(frozen=True)
class Verdict:
    """The result of a check: did it pass (``ok``), the number it measured, and why, in one line."""

    check: str
    ok: bool
    value: float
    detail: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.check}: {self.detail}"


def _logits(model: nn.Module, batch: Mapping) -> torch.Tensor:
    return logits_of(model(**model_inputs(batch, forward_keys(model))))


def _check_batch(batch) -> None:
    if not isinstance(batch, Mapping) or "input_ids" not in batch or "labels" not in batch:
        raise ValueError("batch must be a dict of tensors with 'input_ids' and 'labels' (a batch of make_loader), "
                         f"got {type(batch).__name__}" + (f" with keys {sorted(batch)}" if isinstance(batch, Mapping) else ""))


# ---------------------------------------------------------------- checks before a long run


def loss_at_init(model: nn.Module, batch: Mapping, num_labels: int, rtol: float = 0.25) -> Verdict:
    """The loss of ``model`` (eval mode, no gradients) on ``batch`` is within ``rtol`` of ln ``num_labels``.

    A new head with small weights gives every class about the same probability 1/C, so the
    cross-entropy is about ln C. Far above: the head starts confident (a large init, a bug in
    the logits); far below: the labels leak into the inputs. The model's mode is restored.
    """
    _check_batch(batch)
    args.integer("num_labels", num_labels, low=2)
    args.number("rtol", rtol, low=0, low_open=True)
    with torch.no_grad(), eval_mode(model):
        loss = float(cross_entropy(_logits(model, batch), batch))
    expected = math.log(num_labels)
    ok = abs(loss - expected) <= rtol * expected
    return Verdict("loss at initialisation", ok, loss, f"loss {loss:.3f}, ln C = ln {num_labels} = {expected:.3f} "
                   f"(allowed within {rtol:.0%})")


def overfit_one_batch(model: nn.Module, batch: Mapping, *, steps: int = 30, lr: float = 1e-3, target: float = 0.1,
                      loss_fn: Callable = cross_entropy) -> Verdict:
    """A copy of ``model`` trained ``steps`` steps on ``batch`` alone (AdamW at ``lr``) ends below ``target`` loss.

    A model that cannot memorise 8 to 16 reports cannot learn thousands: the loss, the
    labels, the gradients or the optimizer is broken. ``model`` itself is not changed;
    ``value`` is the last loss. Uses :func:`bertlab.train.train_step` (dropout on, clipping at 1).
    """
    _check_batch(batch)
    args.positive_int("steps", steps)
    args.number("lr", lr, low=0, low_open=True)
    args.number("target", target, low=0, low_open=True)
    trial = copy.deepcopy(model)
    optimizer = torch.optim.AdamW([p for p in trial.parameters() if p.requires_grad], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    losses = [float(train_step(trial, dict(batch), optimizer, scheduler, loss_fn=loss_fn)["loss"]) for _ in range(steps)]
    last = losses[-1]
    return Verdict("overfit one batch", last < target, last,
                   f"loss {losses[0]:.3f} -> {last:.3f} in {steps} steps on {len(batch['labels'])} reports "
                   f"(needs < {target:g})")


def gradient_flow(model: nn.Module, batch: Mapping, *, loss_fn: Callable = cross_entropy,
                  unused: Sequence[str] = ("encoder.pooler.",)) -> Verdict:
    """One backward pass on ``batch``: every trainable parameter gets a finite gradient that is not all zero.

    Parameters whose names start with one of ``unused`` are skipped (a [CLS] head never uses
    BERT's pooler). ``value`` is the number of parameters that fail; ``detail`` names them.
    The gradients are cleared afterwards and the model's mode is restored.
    """
    _check_batch(batch)
    if isinstance(unused, str):
        raise ValueError(f"unused must be a list of name prefixes, got the single str {unused!r}; wrap it in a list")
    was_training = model.training
    model.zero_grad(set_to_none=True)
    out = loss_fn(model.train()(**model_inputs(batch, forward_keys(model))), batch)
    (out["loss"] if isinstance(out, Mapping) else out).backward()
    missing, nan, zero = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or any(name.startswith(u) for u in unused):
            continue
        if p.grad is None:
            missing.append(name)
        elif not torch.isfinite(p.grad).all():
            nan.append(name)
        elif not p.grad.any():
            zero.append(name)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    bad = len(missing) + len(nan) + len(zero)
    parts = [f"{k}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''} ({len(v)})"
             for k, v in (("no gradient", missing), ("NaN/inf", nan), ("all zero", zero)) if v]
    n = sum(p.requires_grad for p in model.parameters())
    return Verdict("gradient flow", bad == 0, float(bad), "; ".join(parts) or f"all {n} trainable tensors get a gradient")


def collapsed(predictions, num_labels: int, max_share: float = 0.8) -> Verdict:
    """Fails when one class takes more than ``max_share`` of ``predictions`` (class ids, or logits (N, C)).

    A model that predicts (nearly) one class whatever the report has collapsed: a learning
    rate that wrecked the encoder, labels shuffled against the texts, or an all-[UNK] input.
    ``value`` is the largest share.
    """
    args.integer("num_labels", num_labels, low=2)
    args.number("max_share", max_share, 0, 1, low_open=True)
    pred = torch.as_tensor(predictions)
    if pred.dim() == 2:
        pred = pred.argmax(-1)
    if pred.dim() != 1 or pred.numel() == 0 or pred.dtype.is_floating_point:
        raise ValueError(f"predictions must be class ids (N,) or logits (N, C) with N >= 1, got shape {tuple(pred.shape)}")
    counts = torch.bincount(pred.long(), minlength=num_labels)
    share, top = int(counts.max()) / int(counts.sum()), int(counts.argmax())  # Python floats: 8/10 is exactly 0.8
    return Verdict("predictions not collapsed", share <= max_share, share,
                   f"class {top} takes {share:.0%} of {pred.numel()} predictions; {int((counts > 0).sum())} of "
                   f"{num_labels} classes predicted (allowed up to {max_share:.0%})")


def _shingles(text: str, n: int = 3) -> set:
    words = near_duplicate_key(text).split()
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def leakage(train_texts: Sequence[str], test_texts: Sequence[str], threshold: float = 0.8) -> Verdict:
    """Fails when a test text is a near-duplicate of a training text: word-3-gram Jaccard >= ``threshold``.

    Texts are compared after ``bertlab.data``'s ``near_duplicate_key`` (case, digits, punctuation
    and spacing do not count), so a report copied with new IDs and values is found. ``value``
    is the share of test texts that leak; ``detail`` gives the first pair's positions.
    """
    for name, texts in (("train_texts", train_texts), ("test_texts", test_texts)):
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{name} must be a non-empty list of strings")
    args.number("threshold", threshold, 0, 1, low_open=True)
    train_sets = [_shingles(t) for t in train_texts]
    index: dict = {}
    for i, s in enumerate(train_sets):
        for g in s:
            index.setdefault(g, []).append(i)
    leaks = []
    for j, text in enumerate(test_texts):
        s = _shingles(text)
        shared: dict = {}
        for g in s:
            for i in index.get(g, ()):
                shared[i] = shared.get(i, 0) + 1
        best = max(((c / len(s | train_sets[i]), i) for i, c in shared.items()), default=(0.0, -1))
        if best[0] >= threshold:
            leaks.append((j, best[1], best[0]))
    share = len(leaks) / len(test_texts)
    first = f"; first: test[{leaks[0][0]}] ~ train[{leaks[0][1]}] (Jaccard {leaks[0][2]:.2f})" if leaks else ""
    return Verdict("no test report leaks from training", not leaks, share,
                   f"{len(leaks)} of {len(test_texts)} test texts are near-duplicates of training texts{first}")


# ---------------------------------------------------------------- truncation

STRATEGIES = ("head", "tail", "head+tail")


def truncate_ids(ids: Sequence[int], max_length: int, strategy: str = "head", head: float = 0.25) -> list[int]:
    """Token ids ``[CLS] ... [SEP]`` cut to ``max_length``, keeping the first tokens, the last, or both.

    ``head+tail`` keeps the first ``round(head * budget)`` and the last of the rest of the
    ``max_length - 2`` tokens between [CLS] and [SEP] (Sun et al. 2019 keep 128 + 382 of 510).
    """
    args.integer("max_length", max_length, low=3)
    args.one_of("strategy", strategy, STRATEGIES)
    args.probability("head", head)
    ids = list(ids)
    if len(ids) <= max_length:
        return ids
    body, budget = ids[1:-1], max_length - 2
    if strategy == "head":
        kept = body[:budget]
    elif strategy == "tail":
        kept = body[len(body) - budget:]
    else:
        n_head = round(head * budget)
        kept = body[:n_head] + body[len(body) - (budget - n_head):]
    return [ids[0], *kept, ids[-1]]


def truncation(tokenizer, texts: Sequence[str], max_length: int, needles: Sequence[str] | None = None,
               strategy: str = "head") -> Verdict:
    """How much ``max_length`` cuts: the share of texts cut and of tokens lost; with ``needles``, whether they survive.

    ``needles[i]`` is the part of ``texts[i]`` the label depends on (e.g. the sentence naming
    the failure); the verdict fails when the ``strategy``'s cut loses the needle's tokens
    in more than 5% of the texts (without needles: when more than half the texts are cut).
    ``value`` is the share of texts cut (without needles) or of needles lost.
    """
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of strings")
    if needles is not None and len(needles) != len(texts):
        raise ValueError(f"needles has {len(needles)} entries but texts has {len(texts)}; give one per text")
    args.integer("max_length", max_length, low=3)
    args.one_of("strategy", strategy, STRATEGIES)
    ids = tokenizer(list(texts))["input_ids"]
    cut = sum(len(x) > max_length for x in ids) / len(ids)
    lost = sum(max(0, len(x) - max_length) for x in ids) / sum(len(x) for x in ids)
    detail = f"{cut:.0%} of {len(ids)} texts longer than max_length={max_length}, {lost:.0%} of their tokens cut"
    if needles is None:
        return Verdict(f"truncation ({strategy})", cut <= 0.5, cut, detail)
    missed = 0
    for x, needle in zip(ids, needles):
        want = tokenizer(needle, add_special_tokens=False)["input_ids"]
        kept = truncate_ids(x, max_length, strategy)
        missed += not any(kept[i:i + len(want)] == want for i in range(len(kept) - len(want) + 1))
    share = missed / len(ids)
    return Verdict(f"truncation ({strategy})", share <= 0.05, share, f"{detail}; the label's sentence cut from {share:.0%}")


# ---------------------------------------------------------------- practices: accumulation, mixed precision


def accumulation_step(model: nn.Module, batches: Sequence[Mapping], optimizer, scheduler, *,
                      loss_fn: Callable = cross_entropy, max_grad_norm: float | None = 1.0) -> float:
    """One optimizer step from the gradients of several micro-batches; returns the large batch's mean loss.

    Each micro-batch's mean loss is weighted by its share of the examples, ``n_i / N``, before
    its backward pass, so the summed gradients equal those of one batch of all ``N`` examples
    (a plain mean of the micro-batch losses would count a short last batch's examples more).
    Then clip, step, schedule and zero, as :func:`bertlab.train.train_step` does.
    """
    if isinstance(batches, Mapping) or not batches:
        raise ValueError("batches must be a non-empty list of batch dicts (the micro-batches of one step)")
    args.optional(args.number, "max_grad_norm", max_grad_norm, low=0, low_open=True)
    for b in batches:
        _check_batch(b)
    model.train()
    N, total = sum(len(b["labels"]) for b in batches), 0.0
    for b in batches:
        loss = loss_fn(model(**model_inputs(b, forward_keys(model))), b)
        loss = (loss["loss"] if isinstance(loss, Mapping) else loss) * (len(b["labels"]) / N)
        loss.backward()
        total += float(loss.detach())
    if max_grad_norm:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def precision_for(device) -> torch.dtype:
    """The half precision to compute in on ``device``: bfloat16 on a CPU and on GPUs that have it, else float16.

    The same choice as ``train.fit``'s ``mixed_precision="auto"`` on a GPU."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device, enabled: bool = True):
    """``torch.autocast`` in :func:`precision_for` ``device`` (matrix products in half precision, sums in fp32)."""
    device = torch.device(device)
    if not enabled or device.type not in ("cpu", "cuda"):
        return nullcontext()
    return torch.autocast(device.type, dtype=precision_for(device))


def grad_scaler(device):
    """A gradient scaler, enabled only where :func:`precision_for` is fp16 (a GPU without bf16): it multiplies the
    loss so small gradients do not underflow to 0 in fp16 and divides them back before the step. bf16 has fp32's
    range and needs none."""
    return torch.amp.GradScaler("cuda", enabled=precision_for(device) == torch.float16)


def underflow(values: torch.Tensor, dtype: torch.dtype) -> float:
    """The share of the non-zero ``values`` that become 0 when stored in ``dtype`` (e.g. small gradients in fp16)."""
    nonzero = values[values != 0]
    if nonzero.numel() == 0:
        raise ValueError("values has no non-zero entry: nothing can underflow")
    return float((nonzero.to(dtype) == 0).float().mean())


def unk_share(tokenizer, texts: Sequence[str]) -> float:
    """The share of the WordPieces of ``texts`` that are [UNK]: near 1 means a tokenizer that does not fit the checkpoint."""
    ids = [i for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"] for i in x]
    return sum(i == tokenizer.unk_token_id for i in ids) / max(1, len(ids))

