"""Pre-training runs (notebook 03, reused by 07): pre-training with live curves through the
course's one loop (``bertlab.train.fit``), speed measurements, fill-mask, and training an MLM
head on a frozen encoder. The domain WordPiece vocabulary it pre-trains on is
:func:`bertlab.vocab.train_wordpiece`.

- :func:`pretraining_loss`: MLM (+ NSP) loss of ``bertlab.model.BertForPreTraining``'s outputs,
  the ``loss_fn`` that :func:`bertlab.train.fit` trains with.
- :func:`pretrain`: MLM (+ NSP when the batches carry ``nsp_labels``) with ``fit``, a progress
  bar and live loss curves (:class:`bertlab.plots.LivePlot`).
- :func:`evaluate`, :func:`unigram_baseline`, :func:`steps_per_second`: what the curves
  and the speed table measure.
- :func:`fill_mask`, :func:`fill_mask_table`, :func:`fill_mask_accuracy`: what a model guesses
  for ``[MASK]``.
- :func:`train_mlm_head`: train only the MLM head of a checkpoint that has none (encoder frozen);
  the course's cached one is ``bertlab.artifacts_pretraining.checkpoint_with_mlm_head``.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, StackDataset

from bertlab import args, plots, train
from bertlab.evaluation import eval_mode
from bertlab.model import BertForPreTraining
from bertlab.pretraining import IGNORE_INDEX, PretrainingCollator, mlm_loss

# --- the loss and what a run measures ---------------------------------------------------------------


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def pretraining_loss(outputs, batch: dict) -> dict[str, torch.Tensor]:
    """BERT's pre-training loss: ``{"loss": mlm_loss + nsp_loss, "mlm_loss", "nsp_loss"}`` (a ``loss_fn`` of fit).

    ``outputs``: ``BertForPreTraining``'s ``(mlm_logits, nsp_logits)``, or the MLM logits alone
    (an MLM head's). ``mlm_loss`` is :func:`bertlab.pretraining.mlm_loss` against
    ``batch["mlm_labels"]``, for logits at every position (B, T, V) with labels (B, T), or at
    the masked positions only (N, V) (the model was given the batch's ``masked_positions``)
    with labels (B, T) or (N,). ``nsp_loss``, the cross-entropy against ``batch["nsp_labels"]``
    (B,), is there only when the batch has them.
    """
    mlm_logits, nsp_logits = outputs if isinstance(outputs, tuple) else (outputs, None)
    parts = {"mlm_loss": mlm_loss(mlm_logits, batch["mlm_labels"], check=False)}  # no read-back per step
    if "nsp_labels" in batch:
        parts["nsp_loss"] = F.cross_entropy(nsp_logits, batch["nsp_labels"])
    return {"loss": sum(parts.values()), **parts}


def _mlm_logits(model, batch: dict, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MLM logits (N, V) at the chosen positions, row-major, and NSP logits (B, 2) (None for a masked LM alone).

    ``model``: a :class:`~bertlab.model.BertForPreTraining` (logits computed at the chosen
    positions only) or a ``transformers`` masked LM (logits at every position, then selected).
    """
    if isinstance(model, BertForPreTraining):
        return model(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"),
                     masked_positions=chosen)  # (N, V), (B, 2)
    kwargs = {k: batch[k] for k in ("attention_mask", "token_type_ids") if k in batch}
    out = model(input_ids=batch["input_ids"], **kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]  # (B, T, V)
    return logits[chosen], None  # (N, V)


@torch.no_grad()
def mlm_totals(model, batches: Iterable[dict]) -> dict:
    """The one MLM evaluation: totals over every masked position of ``batches``, in eval mode.

    ``{"nll": sum of -log p(token), "correct": top-1 hits, "n": positions, "nsp_correct",
    "nsp_n"}`` (the NSP counts are 0 without ``nsp_labels``). A batch holds ``input_ids``,
    optionally ``attention_mask`` and ``token_type_ids``, and the labels as ``mlm_labels``
    (:class:`~bertlab.pretraining.PretrainingCollator`) or ``labels`` (transformers'
    collator): the original id at a masked position, -100 elsewhere. Runs on the model's
    device; the model is left in the mode it was in. :func:`evaluate` and
    :func:`bertlab.domain.mlm_perplexity` are read from these totals.
    """
    device = _device_of(model)
    totals = dict.fromkeys(("nll", "correct", "n", "nsp_correct", "nsp_n"), 0)
    totals["nll"] = 0.0
    with eval_mode(model):
        for i, batch in enumerate(batches):
            key = "mlm_labels" if "mlm_labels" in batch else "labels"
            if key not in batch:
                raise ValueError(f"batches[{i}] has no mlm_labels (or labels): mask it with PretrainingCollator")
            batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            chosen = batch[key] != IGNORE_INDEX  # (B, T)
            logits, nsp_logits = _mlm_logits(model, batch, chosen)  # (N, V), (B, 2) or None
            labels = batch[key][chosen]  # (N,)
            if labels.numel():
                totals["nll"] += F.cross_entropy(logits.float(), labels, reduction="sum").item()
                totals["correct"] += int((logits.argmax(-1) == labels).sum())
                totals["n"] += labels.numel()
            if "nsp_labels" in batch and nsp_logits is not None:
                totals["nsp_correct"] += int((nsp_logits.argmax(-1) == batch["nsp_labels"]).sum())
                totals["nsp_n"] += batch["nsp_labels"].numel()
    return totals


def evaluate(model, batches: Sequence[dict]) -> dict:
    """MLM loss and accuracy over every masked position of ``batches``, and NSP accuracy.

    Loss and accuracy are totals over all masked positions divided by their count (not a mean
    of per-batch means). ``nsp_acc`` is present when the batches carry ``nsp_labels``.
    The model is left in the mode it was in.
    """
    t = mlm_totals(model, batches)
    if t["n"] == 0:
        raise ValueError("batches hold no masked position: nothing to evaluate")
    out = {"mlm_loss": t["nll"] / t["n"], "mlm_acc": t["correct"] / t["n"]}
    if t["nsp_n"]:
        out["nsp_acc"] = t["nsp_correct"] / t["nsp_n"]
    return out


def unigram_log_probs(tokenizer, texts: Iterable[str]) -> torch.Tensor:
    """log q(w) for every token id (V,): frequencies in ``texts`` without special tokens, add-one smoothed."""
    counts = Counter()
    special = set(tokenizer.all_special_ids)
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        counts.update(i for i in ids if i not in special)
    freq = torch.ones(len(tokenizer), dtype=torch.float64)  # add-one: unseen tokens keep some mass
    for i, c in counts.items():
        freq[i] += c
    return (freq / freq.sum()).log().float()


def unigram_baseline(tokenizer, texts: Iterable[str], batches: Sequence[dict]) -> dict:
    """A model that ignores the context: it predicts every masked token from token frequencies.

    The frequencies q(w) are counted over ``texts`` (training text, special tokens excluded,
    add-one smoothing). On the masked positions of ``batches`` it returns the mean
    cross-entropy -log q(label), the accuracy of always guessing the most frequent token,
    and 0.5 for NSP (chance: the classes are balanced).
    """
    log_q = unigram_log_probs(tokenizer, texts)
    labels = torch.cat([b["mlm_labels"][b["mlm_labels"] != IGNORE_INDEX] for b in batches])
    if labels.numel() == 0:
        raise ValueError("batches hold no masked position")
    return {"mlm_loss": float(-log_q[labels].double().mean()), "mlm_acc": float((labels == log_q.argmax()).double().mean()),
            "nsp_acc": 0.5}


def history_rows(result: train.TrainResult, prefix: str = "val_") -> list[dict]:
    """The ``step`` and the ``prefix`` columns (prefix removed) of each row of ``result.history``.

    ``"val_"`` gives the held-out scores of each validation (``mlm_loss``, ``mlm_acc``, ...),
    ``"train_"`` the mean training losses since the previous one.
    """
    return [{"step": r["step"], **{k.removeprefix(prefix): v for k, v in r.items() if k.startswith(prefix)}}
            for r in result.history]


def _loader(batches) -> DataLoader:
    """``batches`` as a DataLoader: a DataLoader as it is; a list of batch dicts, one batch per item."""
    if isinstance(batches, DataLoader):
        loader = batches
    elif isinstance(batches, Sequence) and all(isinstance(b, dict) for b in batches):
        loader = DataLoader(batches, batch_size=None)  # batch_size=None: each item is a whole batch
    else:
        raise TypeError("batches must be a DataLoader of PretrainingCollator batches, or a list of such batches; "
                        f"got {type(batches).__name__}")
    if len(loader) == 0:
        raise ValueError("batches is empty: give at least one batch")
    return loader


def pretrain(model: BertForPreTraining, batches, steps: int, *, lr: float = 1e-3, warmup: float = 0.1,
             weight_decay: float = 0.01, clip: float | None = 1.0, eval_batches: Sequence[dict] | None = None,
             eval_every: int = 50, baseline: dict | None = None, plot: bool = True, progress: bool = True,
             title: str = "pre-training", seed: int = 0) -> train.TrainResult:
    """Train ``model`` for ``steps`` steps of MLM, plus NSP when the batches carry ``nsp_labels``, with ``fit``.

    ``batches``: a DataLoader of :class:`bertlab.pretraining.PretrainingCollator` batches (or a
    list of them), cycled until ``steps`` steps have run. The MLM logits are computed at the
    batches' ``masked_positions`` only. :func:`bertlab.train.fit` trains with
    :func:`pretraining_loss`: AdamW (no decay on biases and LayerNorm), warm-up over the
    ``warmup`` fraction of the steps then linear decay, gradients clipped to norm ``clip``
    (None: not clipped), dropout seeded with ``seed``. Every ``eval_every`` steps and at the
    end it scores ``eval_batches`` with :func:`evaluate` and, with ``plot``, redraws the live
    curves (titled ``title``, dashed lines at ``baseline``); the weights with the lowest
    held-out MLM loss are kept. Returns fit's ``TrainResult``: ``result.history`` rows hold
    ``train_mlm_loss`` (and ``train_nsp_loss``) and ``val_mlm_loss``, ``val_mlm_acc``
    (``val_nsp_acc``). The model ends in eval mode, on the device fit trains on.
    """
    args.positive_int("steps", steps)
    loader = _loader(batches)
    config = train.TrainConfig(lr=lr, max_steps=steps, eval_every=eval_every, patience=None, metric="mlm_loss",
                               weight_decay=weight_decay, warmup_ratio=warmup, max_grad_norm=clip, seed=seed)
    live = None

    def redraw(result):
        nonlocal live
        live = live or plots.LivePlot(baseline, nsp="val_nsp_acc" in result.history[-1], title=title)
        live.update(result)

    return train.fit(model, loader, (lambda m: evaluate(m, eval_batches)) if eval_batches else None, config,
                     loss_fn=pretraining_loss, on_validation=redraw if plot else None, progress=progress)


def steps_per_second(model: BertForPreTraining, batches: Sequence[dict], masked_only: bool, n_steps: int = 6,
                     warmup_steps: int = 1, lr: float = 1e-4) -> float:
    """Training steps per second (1 / median step time) of ``model`` on ``batches``, cycled.

    A step is :func:`bertlab.train.train_step` with :func:`pretraining_loss` (forward, loss,
    backward, clipping, AdamW update, schedule), run by ``fit`` as in :func:`pretrain`.
    ``masked_only`` False drops the batches' ``masked_positions``, so the MLM logits are
    computed at every position. ``warmup_steps`` untimed steps first (the first calls
    allocate). The median, not the mean, so that a hiccup of a shared machine does not decide
    the result. The model's weights change.
    """
    args.positive_int("n_steps", n_steps)
    args.integer("warmup_steps", warmup_steps, low=0)
    if not masked_only:
        batches = [{k: v for k, v in b.items() if k != "masked_positions"} for b in batches]
    # A validation point (without validation) after every step: each history row then holds one
    # step's training time. fit reads the loss back to the host there, which waits for the GPU.
    config = train.TrainConfig(lr=lr, max_steps=warmup_steps + n_steps, eval_every=1, patience=None)
    result = train.fit(model, _loader(batches), config=config, loss_fn=pretraining_loss, progress=False)
    times = sorted(r["seconds"] for r in result.history[warmup_steps:])
    return 1.0 / times[len(times) // 2]


# --- fill-mask ----------------------------------------------------------------------------------------


@torch.no_grad()
def fill_mask(model: BertForPreTraining, tokenizer, texts: Sequence[str], top_k: int = 3) -> list:
    """The ``top_k`` guesses for every ``[MASK]`` in each text: a list (per text) of lists (per mask)
    of ``(token, probability)``, most likely first. The model is left in the mode it was in."""
    if isinstance(texts, str):
        texts = [texts]
    enc = tokenizer(list(texts), padding=True, return_tensors="pt", return_token_type_ids=True)
    enc = {k: v.to(_device_of(model)) for k, v in enc.items()}
    where = enc["input_ids"] == tokenizer.mask_token_id  # (B, T)
    if not where.any(dim=1).all():
        raise ValueError(f"every text must contain {tokenizer.mask_token}")
    with eval_mode(model):
        logits, _ = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], masked_positions=where)  # (N, V)
    probs, ids = logits.softmax(-1).topk(top_k, dim=-1)  # (N, k)
    out, row = [], 0
    for b in range(len(texts)):
        per_text = []
        for _ in range(int(where[b].sum())):
            per_text.append([(tokenizer.convert_ids_to_tokens(int(i)), float(p)) for p, i in zip(probs[row], ids[row])])
            row += 1
        out.append(per_text)
    return out


def mask_one_word(sentence: str, tokenizer, rng: random.Random, min_length: int = 4) -> tuple[str, str] | None:
    """``(sentence with one word replaced by [MASK], that word)``, or None when no word fits.

    The word is chosen with ``rng`` among the alphabetic words of at least ``min_length``
    letters that are a single token of ``tokenizer`` (so one [MASK] stands for the whole word).
    """
    words = sentence.split()
    fits = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= min_length and len(tokenizer.tokenize(w)) == 1]
    if not fits:
        return None
    i = rng.choice(fits)
    answer = words[i]
    words[i] = tokenizer.mask_token
    return " ".join(words), answer.lower()


def fill_mask_table(models: dict, tokenizer, examples: Sequence[tuple[str, str]], top_k: int = 3):
    """A pandas DataFrame: each masked sentence, the hidden word, and each model's top guesses."""
    import pandas as pd

    rows = [{"sentence": text, "answer": answer} for text, answer in examples]
    for name, model in models.items():
        guesses = fill_mask(model, tokenizer, [t for t, _ in examples], top_k=top_k)
        for row, g in zip(rows, guesses):
            row[name] = ", ".join(f"{tok} ({p:.2f})" for tok, p in g[0])
    return pd.DataFrame(rows)


@torch.no_grad()
def fill_mask_accuracy(model: BertForPreTraining, tokenizer, examples: Sequence[tuple[str, str]], top_k: int = 5) -> dict:
    """How often the hidden word is the model's first guess (``top1``) and among its ``top_k`` guesses.

    ``examples`` are ``(text with one [MASK], word)`` pairs, e.g. from :func:`mask_one_word`.
    Returns ``{"top1", "top<k>", "n"}``.
    """
    if not examples:
        raise ValueError("examples must hold at least one (masked text, word) pair")
    guesses = []
    for i in range(0, len(examples), 64):
        guesses += fill_mask(model, tokenizer, [t for t, _ in examples[i:i + 64]], top_k=top_k)
    first = sum(g[0][0][0] == word for g, (_, word) in zip(guesses, examples))
    anywhere = sum(word in [tok for tok, _ in g[0]] for g, (_, word) in zip(guesses, examples))
    return {"top1": first / len(examples), f"top{top_k}": anywhere / len(examples), "n": len(examples)}


# --- an MLM head for the shipped checkpoint ----------------------------------------------------------

#: Parameters of the MLM head that :func:`train_mlm_head` trains (the decoder is the tied word embeddings).
#: The names are Hugging Face's too, so the state also loads into ``transformers.BertForMaskedLM``.
HEAD_KEYS = ("cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
             "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
             "cls.predictions.bias")


def head_state(model: BertForPreTraining) -> dict[str, torch.Tensor]:
    """The trained MLM head's tensors (:data:`HEAD_KEYS`), detached, on the CPU."""
    state = model.state_dict()
    return {k: state[k].detach().cpu().clone() for k in HEAD_KEYS}


@torch.no_grad()
def _masked_features(model: BertForPreTraining, tokenizer, texts, mlm_probability, max_length, batch_size, seed,
                     progress):
    """At BERT-masked positions of ``texts``: the frozen encoder's hidden states (N, H), the input
    token ids (N,), the labels (N,) and the index of the text each comes from (N,)."""
    from tqdm.auto import tqdm

    collator = PretrainingCollator(tokenizer, mlm_probability=mlm_probability, seed=seed, max_length=max_length)
    device = _device_of(model)
    feats, ids, labels, rows = [], [], [], []
    model.bert.eval()
    for i in tqdm(range(0, len(texts), batch_size), desc="encoder features", disable=not progress):
        batch = _to(collator(list(texts[i:i + batch_size])), device)
        chosen = batch["masked_positions"]  # (B, T)
        x, _ = model.bert(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # (B, T, H)
        feats.append(x[chosen])  # (n, H)
        ids.append(batch["input_ids"][chosen])  # (n,)
        labels.append(batch["mlm_labels"][chosen])  # (n,)
        rows.append(i + chosen.nonzero()[:, 0].cpu())  # (n,)
    return torch.cat(feats), torch.cat(ids), torch.cat(labels), torch.cat(rows)


def train_mlm_head(model: BertForPreTraining, tokenizer, texts: Sequence[str], steps: int, *, lr: float = 1e-2,
                   batch_positions: int = 128, mlm_probability: float = 0.15, max_length: int = 64,
                   batch_size: int = 64, seed: int = 0, eval_fraction: float = 0.1, eval_every: int = 25,
                   plot: bool = False, progress: bool = True) -> tuple[train.TrainResult, dict]:
    """Train only the MLM head of ``model`` (its transform and output bias); the encoder stays frozen.

    The word embeddings, which the head's decoder shares, stay frozen too. Because the encoder
    does not change, its hidden states at the masked positions (BERT's 80/10/10 masking of
    ``texts``, in batches of ``batch_size`` texts) are computed once, on
    ``bertlab.env.get_device()`` (the model is moved there, where fit trains). ``fit`` then
    trains the head on them for ``steps`` steps of ``batch_positions`` positions (shuffled,
    epoch after epoch), without weight decay or clipping, with :func:`pretraining_loss`. The
    output bias starts at the log unigram frequencies of the texts, so the head starts as the
    unigram model and the transform learns what the context adds. The last ``eval_fraction``
    of the texts is held out: every ``eval_every`` steps fit scores the MLM loss and accuracy
    there (``val_mlm_loss``, ``val_mlm_acc`` in ``result.history``) and keeps the best head.
    Returns ``(result, info)``; ``info`` holds ``positions`` (how many the head trained on) and
    ``baseline`` (the unigram model on the held-out positions).
    """
    from bertlab import env

    args.positive_int("steps", steps)
    args.number("eval_fraction", eval_fraction, 0, 1, low_open=True, high_open=True)
    texts = list(texts)
    n_train = len(texts) - max(1, int(eval_fraction * len(texts)))
    if n_train < 1:
        raise ValueError(f"texts must hold at least 2 texts (one is held out), got {len(texts)}")
    model.to(env.get_device())
    for p in model.bert.parameters():
        p.requires_grad_(False)
    head = model.cls.predictions  # forward(x): (N, H) -> (N, V); its decoder.weight is frozen with the encoder
    x, ids, y, rows = _masked_features(model, tokenizer, texts, mlm_probability, max_length, batch_size, seed, progress)
    held = rows.to(y.device) >= n_train
    if held.all() or not held.any():
        raise ValueError("texts are too few or too short: no masked position to train on or to evaluate")
    log_q = unigram_log_probs(tokenizer, texts[:n_train])
    with torch.no_grad():
        head.bias.copy_(log_q.to(head.bias))
    info = {"positions": int((~held).sum()),
            "baseline": {"mlm_loss": float(-log_q[y[held].cpu()].double().mean()),
                         "mlm_acc": float((y[held].cpu() == log_q.argmax()).double().mean())}}
    # One item per masked position; fit counts a batch's examples by its input_ids (here the token
    # the encoder read at each position) and feeds the head the entries its forward names (x).
    positions = StackDataset(x=x[~held].cpu(), input_ids=ids[~held].cpu(), mlm_labels=y[~held].cpu())
    x_eval, y_eval = x[held], y[held]

    @torch.no_grad()
    def held_out(head):
        logits = head(x_eval)  # (n_eval, V)
        return {"mlm_loss": F.cross_entropy(logits, y_eval).item(),
                "mlm_acc": (logits.argmax(-1) == y_eval).double().mean().item()}

    config = train.TrainConfig(lr=lr, max_steps=steps, batch_size=batch_positions, weight_decay=0.0,
                               max_grad_norm=None, eval_every=eval_every, patience=None, metric="mlm_loss", seed=seed)
    live = plots.LivePlot(info["baseline"], nsp=False, title="MLM head") if plot else None
    result = train.fit(head, positions, held_out, config, loss_fn=pretraining_loss,
                       on_validation=live.update if live else None, progress=progress)
    model.eval()
    return result, info
