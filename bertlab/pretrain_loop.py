"""Pre-training runs (notebook 03, reused by 07): a domain vocabulary, a small loop with live
curves, speed measurements, fill-mask, and a trained MLM head for the shipped checkpoint.

- :func:`train_wordpiece`: a BERT-style WordPiece vocabulary learnt from domain text with
  ``tokenizers``, wrapped as a ``transformers`` fast tokenizer.
- :func:`pretrain`: MLM (+ NSP when the batches carry ``nsp_labels``) for a
  ``bertlab.model.BertForPreTraining``, with a progress bar and live loss curves.
- :func:`evaluate`, :func:`unigram_baseline`, :func:`steps_per_second`: what the curves
  and the speed table measure.
- :func:`fill_mask`, :func:`fill_mask_table`, :func:`fill_mask_accuracy`: what a model guesses
  for ``[MASK]``.
- :func:`checkpoint_with_mlm_head`: the shipped checkpoint (no MLM head) with a head trained
  on the domain corpus, encoder frozen, cached by its configuration in ``bertlab.cache``.
"""
from __future__ import annotations

import io
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from bertlab.model import BertForPreTraining
from bertlab.pretraining import IGNORE_INDEX, PretrainingCollator, mlm_loss

#: The special tokens of a domain vocabulary, in id order ([PAD] = 0, as BertConfig expects).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# --- a domain WordPiece vocabulary -----------------------------------------------------------------


def train_wordpiece(texts: Iterable[str], vocab_size: int = 2000, lowercase: bool = True):
    """A BERT-style WordPiece tokenizer with exactly ``vocab_size`` tokens, learnt from ``texts``.

    Returns a ``transformers.PreTrainedTokenizerFast`` (built from the ``tokenizers`` object,
    not from a vocab file) that adds ``[CLS] A [SEP] B [SEP]`` with segment ids 0/1, pads with
    ``[PAD]`` (id 0) and knows ``[MASK]``. Ids: the special tokens first (:data:`SPECIAL_TOKENS`),
    then the learnt tokens in sorted order. The trainer breaks ties between equally frequent
    merges in an order that changes from process to process, so a few rare tokens (pieces of
    numbers, here) can differ between two runs on the same text; sorting gives the same ids
    whenever the token sets agree. Raises ValueError when the text is too small to yield
    ``vocab_size`` tokens.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be an int > {len(SPECIAL_TOKENS)}, got {vocab_size!r}")
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not one string")
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a non-empty iterable of strings")

    def bare(vocab=None):
        tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]") if vocab else models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        return tok

    learner = bare()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    learner.train_from_iterator(texts, trainer)
    learnt = sorted(set(learner.get_vocab()) - set(SPECIAL_TOKENS))
    if len(learnt) + len(SPECIAL_TOKENS) != vocab_size:
        raise ValueError(
            f"the texts yield only {len(learnt) + len(SPECIAL_TOKENS)} WordPiece tokens, fewer than "
            f"vocab_size={vocab_size}: use more text or a smaller vocab_size"
        )
    vocab = {t: i for i, t in enumerate(list(SPECIAL_TOKENS) + learnt)}
    tok = bare(vocab)
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=512,
    )
    assert len(fast) == vocab_size, f"the fast tokenizer has {len(fast)} tokens, expected {vocab_size}"
    return fast


# --- measuring a pre-training run ------------------------------------------------------------------


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _forward(model, batch, masked_only: bool):
    """(mlm_logits, nsp_logits, labels_at_logits): logits at the masked positions only, or at every position."""
    labels = batch["mlm_labels"]
    chosen = labels != IGNORE_INDEX
    mlm_logits, nsp_logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                   masked_positions=chosen if masked_only else None)
    return mlm_logits, nsp_logits, labels[chosen] if masked_only else labels


@torch.no_grad()
def evaluate(model, batches: Sequence[dict]) -> dict:
    """MLM loss and accuracy over every masked position of ``batches``, and NSP accuracy.

    Loss and accuracy are totals over all masked positions divided by their count (not a mean
    of per-batch means). ``nsp_acc`` is present when the batches carry ``nsp_labels``.
    The model is left in the mode it was in.
    """
    was_training = model.training
    model.eval()
    device = _device_of(model)
    loss_sum, correct, n, nsp_correct, nsp_n = 0.0, 0, 0, 0, 0
    for batch in batches:
        batch = _to(batch, device)
        logits, nsp_logits, labels = _forward(model, batch, masked_only=True)  # (N, V), (B, 2), (N,)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(-1) == labels).sum())
        n += labels.numel()
        if "nsp_labels" in batch:
            nsp_correct += int((nsp_logits.argmax(-1) == batch["nsp_labels"]).sum())
            nsp_n += batch["nsp_labels"].numel()
    model.train(was_training)
    if n == 0:
        raise ValueError("batches hold no masked position: nothing to evaluate")
    out = {"mlm_loss": loss_sum / n, "mlm_acc": correct / n}
    if nsp_n:
        out["nsp_acc"] = nsp_correct / nsp_n
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


@dataclass
class History:
    """What :func:`pretrain` and :func:`train_mlm_head` record.

    ``train``: one dict per logging interval (step, mean MLM/NSP training loss over the
    interval); ``eval``: one dict per evaluation (step, mlm_loss, mlm_acc, nsp_acc);
    ``seconds``: wall time of the training steps (evaluation and plotting excluded);
    ``steps``: how many ran; ``positions``: masked positions the head was trained on and
    ``baseline``: the unigram model on the held-out positions (:func:`train_mlm_head` only).
    """

    train: list = field(default_factory=list)
    eval: list = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    positions: int = 0
    baseline: dict = field(default_factory=dict)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else float("nan")


class LivePlot:
    """A figure of the training curves, redrawn in place in a notebook (a display handle).

    Panels: MLM loss, MLM accuracy and, when ``nsp`` is True, NSP accuracy; dashed lines
    mark ``baseline`` (a dict like :func:`unigram_baseline`'s). Drawn with matplotlib's
    object API, so it never lands in pyplot's figure list (no duplicate at the end of a cell).
    """

    def __init__(self, baseline: dict | None = None, nsp: bool = True, title: str = ""):
        from matplotlib.figure import Figure

        self.baseline = baseline or {}
        self.panels = [("mlm_loss", "MLM loss"), ("mlm_acc", "MLM accuracy")] + ([("nsp_acc", "NSP accuracy")] if nsp else [])
        self.fig = Figure(figsize=(4.2 * len(self.panels), 3.2), layout="constrained")
        self.axes = self.fig.subplots(1, len(self.panels))
        if title:
            self.fig.suptitle(title)
        self.handle = None

    def _png(self):
        from IPython.display import Image

        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=80)
        return Image(data=buf.getvalue(), format="png")

    def update(self, history: History) -> None:
        """Redraw from ``history``; shown in place in a notebook. Outside IPython (a plain
        script, where IPython may not even be installed) the figure is only redrawn:
        ``self.fig`` holds it, and the loop's own printing reports the progress."""
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            display = get_ipython = None
        for ax, (key, label) in zip(self.axes, self.panels):
            ax.clear()
            if key == "mlm_loss" and history.train:
                ax.plot([r["step"] for r in history.train], [r["mlm_loss"] for r in history.train],
                        color="tab:blue", alpha=0.5, label="train")
            points = [r for r in history.eval if key in r]
            if points:
                ax.plot([r["step"] for r in points], [r[key] for r in points], "o-", color="tab:blue", ms=3,
                        label="held out")
            if key in self.baseline:
                ax.axhline(self.baseline[key], color="tab:red", ls="--",
                           label="chance" if key == "nsp_acc" else "unigram")
            ax.set(title=label, xlabel="step")
            if key != "mlm_loss":
                ax.set_ylim(0, 1)
            ax.legend(loc="best", fontsize=8)
        if display is None or get_ipython() is None:
            return
        if self.handle is None:
            self.handle = display(self._png(), display_id=True)
        else:
            self.handle.update(self._png())


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then linear decay to 0 (BERT's schedule)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _forever(batches):
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("batches is empty")


def pretrain(model: BertForPreTraining, batches, steps: int, *, lr: float = 1e-3, warmup: float = 0.1,
             weight_decay: float = 0.01, clip: float = 1.0, masked_only: bool = True,
             eval_batches: Sequence[dict] | None = None, eval_every: int = 50, baseline: dict | None = None,
             plot: bool = True, progress: bool = True, desc: str = "pre-training") -> History:
    """Train ``model`` for ``steps`` optimizer steps on MLM, plus NSP when batches carry ``nsp_labels``.

    ``batches``: an iterable of dicts from :class:`bertlab.pretraining.PretrainingCollator`
    (e.g. a DataLoader); it is iterated again when it runs out. Loss = mlm_loss + NSP
    cross-entropy. AdamW with linear warm-up (``warmup`` fraction of the steps) and decay,
    gradients clipped to norm ``clip``. ``masked_only`` computes MLM logits only at the masked
    positions (same loss, less work). Every ``eval_every`` steps (and at the end) it evaluates
    on ``eval_batches`` and, with ``plot``, redraws the live curves. Runs on the model's device.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be an int >= 1, got {eval_every!r}")
    from tqdm.auto import tqdm

    device = _device_of(model)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]  # biases and LayerNorm: no weight decay, as in BERT
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    n_warm = max(1, int(warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, steps, n_warm))
    history = History()
    live = None
    sums, count = [0.0, 0.0], 0
    bar = tqdm(total=steps, desc=desc, disable=not progress)
    model.train()
    source = _forever(batches)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batch = _to(next(source), device)
        has_nsp = "nsp_labels" in batch
        logits, nsp_logits, labels = _forward(model, batch, masked_only)
        loss_mlm = mlm_loss(logits, labels)
        loss_nsp = F.cross_entropy(nsp_logits, batch["nsp_labels"]) if has_nsp else torch.zeros((), device=device)
        opt.zero_grad(set_to_none=True)
        (loss_mlm + loss_nsp).backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        sums[0] += loss_mlm.item()
        sums[1] += loss_nsp.item()
        count += 1
        bar.update(1)
        if step % eval_every == 0 or step == steps:
            history.seconds += time.perf_counter() - start
            history.steps = step
            row = {"step": step, "mlm_loss": sums[0] / count}
            if has_nsp:
                row["nsp_loss"] = sums[1] / count
            history.train.append(row)
            sums, count = [0.0, 0.0], 0
            if eval_batches:
                history.eval.append({"step": step, **evaluate(model, eval_batches)})
                bar.set_postfix({k: round(v, 3) for k, v in history.eval[-1].items() if k != "step"})
                if plot:
                    live = live or LivePlot(baseline, nsp=has_nsp, title=desc)
                    live.update(history)
            start = time.perf_counter()
    bar.close()
    return history


def steps_per_second(model: BertForPreTraining, batches: Sequence[dict], masked_only: bool, n_steps: int = 6,
                     warmup_steps: int = 1, lr: float = 1e-4) -> float:
    """Training steps per second (1 / median step time) of ``model`` on ``batches``, cycled.

    Each step is the full forward, loss, backward and AdamW update; ``warmup_steps`` untimed
    steps first (the first calls allocate). The median, not the mean, so that a hiccup of a
    shared machine does not decide the result. The model's weights change.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps!r}")
    device = _device_of(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    times = []
    source = _forever(batches)
    for i in range(warmup_steps + n_steps):
        batch = _to(next(source), device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        logits, nsp_logits, labels = _forward(model, batch, masked_only)
        loss = mlm_loss(logits, labels)
        if "nsp_labels" in batch:
            loss = loss + F.cross_entropy(nsp_logits, batch["nsp_labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup_steps:
            times.append(time.perf_counter() - start)
    return 1.0 / sorted(times)[len(times) // 2]


# --- fill-mask ----------------------------------------------------------------------------------------


@torch.no_grad()
def fill_mask(model: BertForPreTraining, tokenizer, texts: Sequence[str], top_k: int = 3) -> list:
    """The ``top_k`` guesses for every ``[MASK]`` in each text: a list (per text) of lists (per mask)
    of ``(token, probability)``, most likely first. The model is left in the mode it was in."""
    if isinstance(texts, str):
        texts = [texts]
    was_training = model.training
    model.eval()
    enc = tokenizer(list(texts), padding=True, return_tensors="pt", return_token_type_ids=True)
    enc = {k: v.to(_device_of(model)) for k, v in enc.items()}
    where = enc["input_ids"] == tokenizer.mask_token_id  # (B, T)
    if not where.any(dim=1).all():
        raise ValueError(f"every text must contain {tokenizer.mask_token}")
    logits, _ = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], masked_positions=where)  # (N, V)
    probs, ids = logits.softmax(-1).topk(top_k, dim=-1)  # (N, k)
    model.train(was_training)
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
    """Hidden states (N, H) of the frozen encoder at BERT-masked positions, their labels (N,)
    and the index of the text each comes from (N,)."""
    from tqdm.auto import tqdm

    collator = PretrainingCollator(tokenizer, mlm_probability=mlm_probability, seed=seed, max_length=max_length)
    device = _device_of(model)
    feats, labels, rows = [], [], []
    model.bert.eval()
    for i in tqdm(range(0, len(texts), batch_size), desc="encoder features", disable=not progress):
        batch = _to(collator(list(texts[i:i + batch_size])), device)
        chosen = batch["mlm_labels"] != IGNORE_INDEX  # (B, T)
        x, _ = model.bert(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # (B, T, H)
        feats.append(x[chosen])  # (n, H)
        labels.append(batch["mlm_labels"][chosen])  # (n,)
        rows.append(i + chosen.nonzero()[:, 0].cpu())  # (n,)
    return torch.cat(feats), torch.cat(labels), torch.cat(rows)


def train_mlm_head(model: BertForPreTraining, tokenizer, texts: Sequence[str], steps: int, *, lr: float = 1e-2,
                   batch_positions: int = 128, mlm_probability: float = 0.15, max_length: int = 64,
                   batch_size: int = 64, seed: int = 0, eval_fraction: float = 0.1, eval_every: int = 25,
                   plot: bool = False, progress: bool = True) -> History:
    """Train only the MLM head of ``model`` (its transform and output bias); the encoder stays frozen.

    The word embeddings, which the head's decoder shares, stay frozen too. Because the encoder
    does not change, its hidden states at the masked positions (BERT's 80/10/10 masking of
    ``texts``) are computed once; the head then trains on them for ``steps`` AdamW steps of
    ``batch_positions`` positions. The output bias starts at the log unigram frequencies of the
    texts, so the head starts as the unigram model and the transform learns what the context
    adds. The last ``eval_fraction`` of the texts is held out: ``History.eval`` holds the MLM
    loss and accuracy there, and ``History.baseline`` the unigram model's.
    """
    from tqdm.auto import tqdm

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    texts = list(texts)
    n_train = len(texts) - max(1, int(eval_fraction * len(texts)))
    if n_train < 1:
        raise ValueError(f"texts must hold at least 2 texts (one is held out), got {len(texts)}")
    for p in model.bert.parameters():
        p.requires_grad_(False)
    head = model.cls.predictions
    trainable = [p for p in head.parameters() if p.requires_grad]  # transform and bias; decoder.weight is frozen
    x, y, rows = _masked_features(model, tokenizer, texts, mlm_probability, max_length, batch_size, seed, progress)
    held = rows >= n_train
    x_train, y_train, x_eval, y_eval = x[~held], y[~held], x[held], y[held]
    if len(y_train) == 0 or len(y_eval) == 0:
        raise ValueError("texts are too few or too short: no masked position to train on or to evaluate")
    log_q = unigram_log_probs(tokenizer, texts[:n_train])
    with torch.no_grad():
        head.bias.copy_(log_q.to(head.bias))
    history = History(positions=len(y_train))
    history.baseline = {"mlm_loss": float(-log_q[y_eval.cpu()].double().mean()),
                        "mlm_acc": float((y_eval.cpu() == log_q.argmax()).double().mean())}
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, steps, max(1, steps // 10)))
    live = LivePlot(history.baseline, nsp=False, title="MLM head") if plot else None
    g = torch.Generator().manual_seed(seed)

    def held_out():
        with torch.no_grad():
            logits = head(x_eval)  # (n_eval, V)
            return {"mlm_loss": F.cross_entropy(logits, y_eval).item(),
                    "mlm_acc": (logits.argmax(-1) == y_eval).double().mean().item()}

    head.train()
    loss_sum, count = 0.0, 0
    start = time.perf_counter()
    for step in tqdm(range(1, steps + 1), desc="MLM head", disable=not progress):
        idx = torch.randint(len(y_train), (batch_positions,), generator=g).to(x.device)
        loss = F.cross_entropy(head(x_train[idx]), y_train[idx])  # (batch_positions, V) logits
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum, count = loss_sum + loss.item(), count + 1
        if step % eval_every == 0 or step == steps:
            history.seconds += time.perf_counter() - start
            history.steps = step
            history.train.append({"step": step, "mlm_loss": loss_sum / count})
            history.eval.append({"step": step, **held_out()})
            loss_sum, count = 0.0, 0
            if live:
                live.update(history)
            start = time.perf_counter()
    model.eval()
    return history


#: How the cached MLM head of the shipped checkpoint is trained; the cache key is this dict
#: (plus the checkpoint), so changing any value trains and caches a new head.
HEAD_CONFIG = {
    "corpus_docs": 400,      # documents of bertlab.data.domain_corpus ...
    "corpus_seed": 0,        # ... and its seed
    "steps": 150,            # AdamW steps on the cached encoder features
    "lr": 1e-2,
    "batch_positions": 128,  # masked positions per step
    "mlm_probability": 0.15,
    "max_length": 64,
    "seed": 0,
    "version": 1,            # bump when the training code changes
}


def head_config(name: str | None = None, **overrides) -> dict:
    """:data:`HEAD_CONFIG` with ``overrides``, and the checkpoint it is for (the cache key)."""
    from bertlab.pretrained import DEFAULT_NAME, is_default, model_name_or_dir

    unknown = set(overrides) - set(HEAD_CONFIG)
    if unknown:
        raise ValueError(f"unknown MLM head settings {sorted(unknown)}; known: {sorted(HEAD_CONFIG)}")
    target = model_name_or_dir(name)
    return {"checkpoint": DEFAULT_NAME if is_default(target) else target, **HEAD_CONFIG, **overrides}


def checkpoint_with_mlm_head(config: dict | None = None, name: str | None = None, device=None,
                             progress: bool = True, plot: bool = False):
    """The checkpoint as a ``BertForPreTraining`` whose MLM head is trained, and its tokenizer.

    The head comes from ``bertlab.cache`` when one was trained with ``config`` (default:
    :func:`head_config`), else it is trained now by :func:`train_mlm_head` on sentences of
    ``bertlab.data.domain_corpus`` (encoder frozen) and cached. The NSP head stays untrained.
    Returns ``(model in eval mode, tokenizer, info)``; ``info`` holds the config, whether the
    cache had it (``cached``) and the training record: ``eval`` (held-out MLM loss and accuracy
    per logged step), ``baseline`` (the unigram model there), ``seconds``, ``positions``, ``sentences``.
    """
    from bertlab import cache
    from bertlab.pretrained import load_tokenizer

    config = dict(config) if config is not None else head_config(name)
    unknown = set(config) - set(HEAD_CONFIG) - {"checkpoint"}
    if unknown:
        raise ValueError(f"config has unknown MLM head settings {sorted(unknown)}")
    model = BertForPreTraining.from_pretrained(name)
    if device is not None:
        model.to(device)
    tokenizer = load_tokenizer(name)

    def build():
        from bertlab.data import domain_corpus

        texts = [s for doc in domain_corpus(config["corpus_docs"], config["corpus_seed"]) for s in doc]
        h = train_mlm_head(model, tokenizer, texts, config["steps"], lr=config["lr"],
                           batch_positions=config["batch_positions"], mlm_probability=config["mlm_probability"],
                           max_length=config["max_length"], seed=config["seed"], progress=progress, plot=plot)
        return head_state(model), {"eval": h.eval, "baseline": h.baseline, "seconds": h.seconds,
                                   "positions": h.positions, "sentences": len(texts)}

    state, meta, hit = cache.cached_state("mlm-head", config, build)
    if hit:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(HEAD_KEYS) & set(missing):
            raise RuntimeError(f"cached MLM head does not fit the model: unexpected {unexpected}, missing {missing}")
    model.eval()
    return model, tokenizer, {**meta, "cached": hit}
