"""Vocabularies of the domain: one learnt from its text (notebook 03), and the subset of BERT's
WordPieces a fab's reports actually use (notebooks 08 and 09).

:func:`train_wordpiece` learns a BERT-style WordPiece vocabulary from domain text
(:func:`learn_wordpieces`: merge the most frequent pair, again and again) and wraps it as a
``transformers`` fast tokenizer.

A fab's reports use a small part of BERT's 30,522 WordPieces, yet the table of all of them
is most of a small model's weights, and back-propagating into an ``nn.Embedding`` builds a
dense gradient of the whole table. Two uses of one idea, a map from token ids to the rows
of a smaller table:

- :func:`only_used_rows_trainable` (training, opt-in through
  ``bertlab.train.TrainConfig.used_embedding_rows_only``): only the rows the training
  reports use are parameters; the updates are the same.
- :class:`TrimmedVocabulary` (serving): the model keeps only those rows (:func:`domain_vocabulary`
  of the fab's text), and every other id reads as [UNK].
"""
from __future__ import annotations

import copy
import heapq
from collections import Counter, defaultdict
from contextlib import contextmanager
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bertlab import args


def used_token_ids(input_ids: Iterable[Sequence[int]], vocab_size: int, always: Iterable[int] = ()) -> torch.Tensor:
    """The sorted ids (LongTensor) that occur in ``input_ids`` (lists of token ids), plus ``always``.

    Raises ValueError when an id is outside ``0..vocab_size-1``.
    """
    used = {int(i) for ids in input_ids for i in ids} | {int(i) for i in always}
    if used and (min(used) < 0 or max(used) >= vocab_size):
        raise ValueError(f"input_ids must hold token ids in 0..{vocab_size - 1}, got ids in {min(used)}..{max(used)}")
    return torch.tensor(sorted(used), dtype=torch.long)


def id_map(keep: torch.Tensor, vocab_size: int, fill: int) -> torch.Tensor:
    """(V,) LongTensor: token id ``keep[r]`` -> row ``r`` of the smaller table, every other id -> ``fill``."""
    out = torch.full((vocab_size,), fill, dtype=torch.long, device=keep.device)
    out[keep] = torch.arange(len(keep), device=keep.device)
    return out


# ---------------------------------------------------------------- training only the used rows


class UsedRows(nn.Module):
    """A word-embedding table read as usual, with only the rows ``rows`` trainable (a copy of them)."""

    def __init__(self, embedding: nn.Embedding, rows: torch.Tensor):
        super().__init__()
        weight = embedding.weight.detach()
        rows = rows.to(weight.device)
        self.register_buffer("frozen", weight, persistent=False)  # the table itself, not copied
        self.register_buffer("local", id_map(rows, weight.shape[0], fill=-1), persistent=False)  # id -> row or -1
        self.register_buffer("row_ids", rows, persistent=False)
        self.rows = nn.Parameter(weight[rows].clone())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = self.local[input_ids]  # (B, T): row of self.rows, or -1
        used = F.embedding(local.clamp(min=0), self.rows)  # (B, T, H)
        return torch.where((local >= 0).unsqueeze(-1), used, F.embedding(input_ids, self.frozen))

    def folded(self) -> torch.Tensor:
        """The whole table with the trained rows written back."""
        return self.frozen.clone().index_copy_(0, self.row_ids, self.rows.detach().to(self.frozen.dtype))


def plain_state_dict(model: nn.Module) -> dict:
    """``model.state_dict()`` with every :class:`UsedRows` folded back into a plain table's ``weight``."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, UsedRows):
            state.pop(f"{name}.rows")
            state[f"{name}.weight"] = module.folded()
    return state


def word_embeddings_of(model: nn.Module):
    """``(holder, embedding)``: the module holding ``word_embeddings`` and the table, or ``(None, None)``.

    Looked for under ``model.encoder`` (the course's models), ``model.base_model`` (a ``transformers``
    model with a head, e.g. BertForSequenceClassification) and ``model`` itself."""
    for root in (getattr(model, "encoder", None), getattr(model, "base_model", None), model):
        holder = getattr(root, "embeddings", None)
        if isinstance(getattr(holder, "word_embeddings", None), nn.Embedding):
            return holder, holder.word_embeddings
    return None, None


@contextmanager
def only_used_rows_trainable(model: nn.Module, input_ids: Iterable[Sequence[int]]):
    """Inside the block, only the rows of the word embeddings for ids in ``input_ids`` are parameters.

    Rows no training report uses get a zero gradient and so no Adam update: training only
    the used rows gives the same updates, except that the unused rows are not weight-decayed
    (a relative shrink of ``lr * weight_decay * steps``), without a dense gradient, Adam
    state and clipping over the whole table at every step. On leaving the block (also after
    an error) the trained rows are written back into the model's own ``nn.Embedding``. A
    table that is frozen or tied to another module (an MLM decoder) is left as it is.
    Raises TypeError for a model without ``embeddings.word_embeddings`` (directly or under
    ``.encoder``) and ValueError for ids outside the table.
    """
    holder, embedding = word_embeddings_of(model)
    if embedding is None:
        raise TypeError(f"model must have .encoder.embeddings.word_embeddings (an nn.Embedding), got {type(model).__name__}")
    tied = any(m is not embedding and getattr(m, "weight", None) is embedding.weight for m in model.modules())
    if tied or not embedding.weight.requires_grad:
        yield model
        return
    rows = used_token_ids(input_ids, embedding.num_embeddings)
    rows = rows[rows != (embedding.padding_idx if embedding.padding_idx is not None else -1)]  # never has a gradient
    if len(rows) == 0:
        raise ValueError("input_ids hold no token id to train")
    trained = UsedRows(embedding, rows)
    holder.word_embeddings = trained
    try:
        yield model
    finally:
        embedding.weight.data = trained.folded()
        holder.word_embeddings = embedding


# ---------------------------------------------------------------- serving a trimmed table


class TrimmedVocabulary(nn.Module):
    """``model`` with only the rows of the word-embedding table for ``keep_ids``; other ids read as [UNK].

    ``forward(input_ids, attention_mask)`` takes the *original* token ids and maps them
    through ``id_map`` (a lookup that is part of an exported graph), so the tokenizer and
    the callers do not change. The special tokens (``special_ids``) are always kept. The
    cost: a WordPiece outside ``keep_ids`` loses its meaning (it becomes [UNK]); measure the
    accuracy.
    """

    def __init__(self, model: nn.Module, keep_ids, unk_id: int, special_ids=()):
        super().__init__()
        model = copy.deepcopy(model).cpu().eval()
        embeddings = model.encoder.embeddings.word_embeddings
        keep = used_token_ids([keep_ids], embeddings.num_embeddings, always=[unk_id, *special_ids])
        self.register_buffer("id_map", id_map(keep, embeddings.num_embeddings,
                                              fill=int((keep == int(unk_id)).nonzero()[0, 0])))  # (V,)
        small = nn.Embedding(len(keep), embeddings.embedding_dim, padding_idx=None)
        small.weight.data.copy_(embeddings.weight.data[keep])
        model.encoder.embeddings.word_embeddings = small
        model.encoder.config.vocab_size = len(keep)
        self.model = model
        self.num_labels = getattr(model, "num_labels", None)

    def forward(self, input_ids, attention_mask=None):
        return self.model(self.id_map[input_ids], attention_mask)


def domain_vocabulary(tokenizer, texts: Sequence[str]) -> set[int]:
    """The token ids that occur in ``texts`` (e.g. the training reports and the domain corpus)."""
    ids = tokenizer(list(texts), truncation=False)["input_ids"]
    return {i for x in ids for i in x}


# ---------------------------------------------------------------- a domain WordPiece vocabulary (notebook 03)

#: The special tokens of a domain vocabulary, in id order ([PAD] = 0, as BertConfig expects).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def learn_wordpieces(word_counts: dict[str, int], size: int, prefix: str = "##") -> list[str]:
    """The WordPiece tokens (at most ``size``) learnt from ``word_counts`` ({word: count}) by merging.

    Start from the characters, a word's non-initial ones written ``##c``; then, until there
    are ``size`` tokens, merge the most frequent adjacent pair of tokens into one
    (``"##t" + "##he" -> "##the"``) everywhere it occurs. This is the rule ``tokenizers``'
    WordPieceTrainer follows; here ties between equally frequent pairs go to the
    alphabetically first pair, so every process learns the same vocabulary (the library
    breaks ties in an order that changes from process to process). Stops early when no pair
    is left. A heap holds the pair counts; an entry whose count changed since it was pushed
    is stale and skipped.
    """
    ordered = sorted(word_counts)
    words = [[w[0]] + [prefix + c for c in w[1:]] for w in ordered]
    freq = [word_counts[w] for w in ordered]
    tokens = sorted({t for w in words for t in w})
    known = set(tokens)
    pairs: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)  # pair -> the words it occurs in
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pairs[pair] += freq[i]
            where[pair].add(i)
    heap = [(-n, pair) for pair, n in pairs.items()]
    heapq.heapify(heap)
    while len(tokens) < size and heap:
        n, (a, b) = heapq.heappop(heap)
        if pairs.get((a, b)) != -n:
            continue  # stale
        merged = a + b[len(prefix):] if b.startswith(prefix) else a + b
        if merged not in known:
            known.add(merged)
            tokens.append(merged)
        changed = set()
        for i in sorted(where.pop((a, b))):
            w, out, j = words[i], [], 0
            for pair in zip(w, w[1:]):
                pairs[pair] -= freq[i]
                where[pair].discard(i)
                changed.add(pair)
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for pair in zip(out, out[1:]):
                pairs[pair] += freq[i]
                where[pair].add(i)
                changed.add(pair)
        for pair in changed:
            if pairs[pair] > 0:
                heapq.heappush(heap, (-pairs[pair], pair))
            else:
                del pairs[pair]
                where.pop(pair, None)
    return tokens


def train_wordpiece(texts: Iterable[str], vocab_size: int = 2000, lowercase: bool = True):
    """A BERT-style WordPiece tokenizer with exactly ``vocab_size`` tokens, learnt from ``texts``.

    Returns a ``transformers.PreTrainedTokenizerFast`` (built from the ``tokenizers`` object,
    not from a vocab file) that adds ``[CLS] A [SEP] B [SEP]`` with segment ids 0/1, pads with
    ``[PAD]`` (id 0) and knows ``[MASK]``. Ids: the special tokens first (:data:`SPECIAL_TOKENS`),
    then the learnt tokens (:func:`learn_wordpieces`, the same in every process) in sorted
    order. Words are split as BERT splits them (its normalizer and pre-tokenizer). Raises
    ValueError when the text is too small to yield ``vocab_size`` tokens.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    args.integer("vocab_size", vocab_size, low=len(SPECIAL_TOKENS) + 1)
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

    splitter = bare()
    words = Counter(w for t in texts
                    for w, _ in splitter.pre_tokenizer.pre_tokenize_str(splitter.normalizer.normalize_str(t)))
    learnt = sorted(set(learn_wordpieces(words, vocab_size - len(SPECIAL_TOKENS))) - set(SPECIAL_TOKENS))
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
