"""BERT's pre-training tasks (notebook 03): masked LM and next sentence prediction.

- :func:`mask_tokens`: choose 15% of the tokens; of those, 80% become [MASK],
  10% a random token, 10% stay as they are (Devlin et al. 2019, section 3.1).
- :func:`nsp_pairs`: sentence pairs, half IsNext (label 0), half NotNext (label 1).
- :func:`mlm_loss`: cross-entropy averaged over the chosen positions only.
- :class:`PretrainingCollator`: tokenizes, pads and masks a batch for
  ``bertlab.model.BertForPreTraining``.

Label conventions follow BERT and Hugging Face: MLM labels are the original
token id at a chosen position and ``IGNORE_INDEX`` (-100) elsewhere; NSP label
0 = IsNext (B follows A), 1 = NotNext (B is a random sentence).
"""
from __future__ import annotations

import random
from typing import Sequence

import torch
import torch.nn.functional as F

from bertlab import args

IGNORE_INDEX = -100  # label of a position the MLM loss skips (F.cross_entropy's default ignore_index)
IS_NEXT, NOT_NEXT = 0, 1


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor | None = None,
    *,
    vocab_size: int,
    mask_token_id: int,
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
    pad_token_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: returns ``(masked_input_ids, labels)``, both shaped like ``input_ids`` (B, T).

    Each candidate token is chosen independently with ``mlm_probability``.
    Candidates are all tokens except special tokens (``special_tokens_mask``
    True), padding (``attention_mask`` 0) and ``pad_token_id``; with neither
    mask nor pad id given, every token is a candidate. A chosen token becomes
    ``mask_token_id`` with probability 0.8, a uniformly random id in
    [0, vocab_size) with 0.1 (as in BERT, special ids included; it equals the
    original with chance 1/vocab_size), and stays unchanged with 0.1.
    ``labels`` holds the original id at chosen positions and -100 elsewhere.
    ``input_ids`` is not modified. Pass a seeded ``generator`` for
    reproducible masks. Raises ValueError/TypeError naming the bad argument.
    """
    _check_ids("input_ids", input_ids)
    _check_int("vocab_size", vocab_size, low=1)
    _check_int("mask_token_id", mask_token_id, low=0)
    if mask_token_id >= vocab_size:
        raise ValueError(f"mask_token_id ({mask_token_id}) must be < vocab_size ({vocab_size})")
    args.number("mlm_probability", mlm_probability, 0, 1, low_open=True)
    args.indices("input_ids (token ids)", input_ids, vocab_size, "vocab_size")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")

    candidates = torch.ones_like(input_ids, dtype=torch.bool)
    if special_tokens_mask is not None:
        _check_same_shape("special_tokens_mask", special_tokens_mask, input_ids)
        candidates &= ~special_tokens_mask.bool()
    if attention_mask is not None:
        _check_same_shape("attention_mask", attention_mask, input_ids)
        candidates &= attention_mask.bool()
    if pad_token_id is not None:
        _check_int("pad_token_id", pad_token_id, low=0)
        candidates &= input_ids != pad_token_id

    # Draw on the generator's device (CPU by default), then move: same masks on CPU and GPU.
    device = generator.device if generator is not None else torch.device("cpu")
    shape = input_ids.shape
    chosen = (torch.rand(shape, generator=generator, device=device) < mlm_probability).to(input_ids.device) & candidates
    action = torch.rand(shape, generator=generator, device=device).to(input_ids.device)  # one draw splits 80/10/10
    random_ids = torch.randint(vocab_size, shape, generator=generator, device=device).to(input_ids.device)

    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)  # the remaining chosen 10% keep their token
    masked = input_ids.clone()
    masked[to_mask] = mask_token_id
    masked[to_random] = random_ids[to_random]
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """Mean cross-entropy over the chosen positions only (labels != -100).

    Accepted shapes:
    - ``logits`` (B, T, V) with ``labels`` (B, T);
    - ``logits`` (N, V) with ``labels`` (N,);
    - ``logits`` (N, V) from ``BertForPreTraining(..., masked_positions=labels != -100)``
      with the full ``labels`` (B, T): N must equal the number of chosen positions,
      taken in row-major order.
    The loss is sum(-log p(label)) / (number of chosen positions): padding and
    unchosen tokens never count, whatever the batch's padding. Beware the bug of
    d2l's PyTorch MLM loss (d2l-en issue 2582): multiplying per-token weights
    into an already averaged loss divides by every position, so padding dilutes it.
    Raises ValueError when no position is chosen: a mean over nothing is
    undefined, and a silent 0 would look like a perfect model. ``check=False`` skips the
    checks that read values back from the device (no position chosen, ids out of range; the
    loss is then 0 for a batch without a chosen position): the training loop's path, whose
    batches were masked from token ids the tokenizer made. Shapes are checked either way.
    """
    if not isinstance(logits, torch.Tensor) or not logits.dtype.is_floating_point:
        raise TypeError(f"logits must be a floating point tensor, got {getattr(logits, 'dtype', type(logits).__name__)}")
    _check_ids("labels", labels, allow_1d=True)
    if logits.dim() == 3:
        if labels.shape != logits.shape[:2]:
            raise ValueError(f"labels must have shape {tuple(logits.shape[:2])} for logits {tuple(logits.shape)}, "
                             f"got {tuple(labels.shape)}")
        logits, labels = logits.reshape(-1, logits.size(-1)), labels.reshape(-1)  # (B*T, V), (B*T,)
    elif logits.dim() == 2:
        if labels.dim() == 2 and check:
            labels = labels[labels != IGNORE_INDEX]  # (N,): the chosen positions, row-major
        elif labels.dim() == 2:  # the same, without reading their number back from the device: a stable
            flat = labels.reshape(-1)  # sort puts the chosen positions first, in order, and logits has N rows
            labels = flat[torch.argsort((flat == IGNORE_INDEX).to(torch.uint8), stable=True)[:logits.shape[0]]]
        if labels.shape != logits.shape[:1]:
            raise ValueError(
                f"logits (N, V) = {tuple(logits.shape)} need N labels (or a (B, T) labels with N chosen "
                f"positions), got {labels.numel()}"
            )
    else:
        raise ValueError(f"logits must have shape (B, T, V) or (N, V), got {tuple(logits.shape)}")
    chosen = labels != IGNORE_INDEX
    n = chosen.sum()  # a tensor: its value stays on the device
    if check:
        if n == 0:
            raise ValueError("labels select no position (all are -100): the MLM loss is undefined for this batch")
        args.indices("labels other than -100 (token ids)", labels[chosen], logits.size(-1), "the logits' V")
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum") / n.clamp(min=1)


def nsp_pairs(documents: Sequence[Sequence[str]], n_pairs: int | None = None, seed: int = 0) -> list[tuple[str, str, int]]:
    """Next sentence prediction pairs ``(sentence_a, sentence_b, label)`` from documents of sentences.

    Label 0 = IsNext: ``sentence_b`` is the sentence after ``sentence_a`` in its
    document. Label 1 = NotNext: ``sentence_b`` is a random sentence of a random
    *other* document. The labels are exactly balanced (ceil(n/2) IsNext,
    floor(n/2) NotNext) and shuffled. Without ``n_pairs``, every pair of
    consecutive sentences is used once as sentence_a's position; with it, the
    positions are sampled without replacement until each was used, then again.
    Deterministic for a ``seed``. Needs two documents with a sentence and one
    with two sentences; raises ValueError/TypeError naming the argument.
    """
    if isinstance(documents, str) or not isinstance(documents, Sequence):
        raise TypeError(f"documents must be a list of documents, each a list of sentences; got {type(documents).__name__}")
    for i, doc in enumerate(documents):
        if isinstance(doc, str) or not isinstance(doc, Sequence) or not all(isinstance(s, str) for s in doc):
            raise TypeError(f"documents[{i}] must be a list of sentences (str), got {type(doc).__name__}: {doc!r:.60}")
    if n_pairs is not None:
        _check_int("n_pairs", n_pairs, low=1)
    nonempty = [d for d, doc in enumerate(documents) if len(doc) > 0]
    if len(nonempty) < 2:
        raise ValueError("documents must hold at least 2 non-empty documents (NotNext draws from another one), "
                         f"got {len(nonempty)}")
    positions = [(d, i) for d, doc in enumerate(documents) for i in range(len(doc) - 1)]  # a at i, next at i + 1
    if not positions:
        raise ValueError("documents must hold at least one document with 2 or more sentences (for IsNext pairs)")

    rng = random.Random(seed)
    n = len(positions) if n_pairs is None else n_pairs
    order: list[tuple[int, int]] = []
    while len(order) < n:
        order += rng.sample(positions, len(positions))
    labels = [IS_NEXT] * ((n + 1) // 2) + [NOT_NEXT] * (n // 2)
    rng.shuffle(labels)

    pairs = []
    for (d, i), label in zip(order[:n], labels):
        a = documents[d][i]
        if label == IS_NEXT:
            b = documents[d][i + 1]
        else:
            other = rng.choice([e for e in nonempty if e != d])
            b = rng.choice(documents[other])
        pairs.append((a, b, label))
    return pairs


class PretrainingCollator:
    """Turns a list of examples into a padded, masked batch for BertForPreTraining.

    An example is either a sentence pair ``(sentence_a, sentence_b, nsp_label)``
    (from :func:`nsp_pairs`) or a single text ``str`` (MLM only, e.g. continued
    pre-training on domain text); a batch holds one kind. Returns a dict of
    LongTensors: ``input_ids``, ``token_type_ids``, ``attention_mask``,
    ``mlm_labels`` (B, T), padded to the batch's longest sequence (at most
    ``max_length``), plus ``nsp_labels`` (B,) for pairs, and the BoolTensor
    ``masked_positions`` (B, T), ``mlm_labels != -100``: given to
    ``BertForPreTraining``, it computes MLM logits only there. Masks come from its own
    generator seeded with ``seed``: the same batches in the same order give the
    same masks (use it with ``num_workers=0``; worker copies repeat one another).
    """

    def __init__(self, tokenizer, mlm_probability: float = 0.15, seed: int = 0, max_length: int = 128):
        if getattr(tokenizer, "mask_token_id", None) is None:
            raise ValueError("tokenizer must have a mask token ([MASK]); got one without mask_token_id")
        args.integer("max_length", max_length, low=3)  # room for [CLS] A [SEP]
        args.number("mlm_probability", mlm_probability, 0, 1, low_open=True)
        self.tokenizer = tokenizer
        self.mlm_probability = mlm_probability
        self.max_length = max_length
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, examples) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("examples must be a non-empty list")
        if all(isinstance(e, str) for e in examples):
            texts, nsp = (list(examples),), None
        elif all(isinstance(e, (tuple, list)) and len(e) == 3 for e in examples):
            texts = ([e[0] for e in examples], [e[1] for e in examples])
            nsp = torch.tensor([int(e[2]) for e in examples], dtype=torch.long)
            if not set(nsp.tolist()) <= {IS_NEXT, NOT_NEXT}:
                raise ValueError(f"examples' nsp labels must be 0 (IsNext) or 1 (NotNext), got {sorted(set(nsp.tolist()))}")
        else:
            raise TypeError("examples must all be str (MLM only) or all (sentence_a, sentence_b, nsp_label) tuples")
        enc = self.tokenizer(
            *texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_special_tokens_mask=True,
            return_token_type_ids=True,
            return_tensors="pt",
        )
        input_ids, mlm_labels = mask_tokens(
            enc["input_ids"],
            enc["special_tokens_mask"].bool(),
            vocab_size=len(self.tokenizer),
            mask_token_id=self.tokenizer.mask_token_id,
            mlm_probability=self.mlm_probability,
            generator=self.generator,
            attention_mask=enc["attention_mask"],
        )
        batch = {
            "input_ids": input_ids,
            "token_type_ids": enc["token_type_ids"],
            "attention_mask": enc["attention_mask"],
            "mlm_labels": mlm_labels,
            "masked_positions": mlm_labels != IGNORE_INDEX,  # (B, T): where the MLM loss has a label
        }
        if nsp is not None:
            batch["nsp_labels"] = nsp
        return batch


def _check_int(name: str, value, low: int):
    args.integer(name, value, low=low)


def _check_ids(name: str, ids, allow_1d: bool = False):
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.dim() != 2 and not (allow_1d and ids.dim() == 1):
        raise ValueError(f"{name} must have shape (B, T), got {tuple(ids.shape)}")


def _check_same_shape(name: str, mask: torch.Tensor, input_ids: torch.Tensor):
    if not isinstance(mask, torch.Tensor) or mask.shape != input_ids.shape:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got {got}")
