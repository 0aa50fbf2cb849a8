"""Token-level tasks (notebook 10): BIO tagging of entity spans, and extractive question answering.

Tagging: character spans -> one BIO tag per word, on the word's first WordPiece (the other
pieces and the special tokens get ``IGNORE_INDEX``); predicted tags -> spans decoded strictly
(as seqeval's strict IOB2 mode: an entity is a B- followed by I- of the same type); exact-match
precision, recall and F1. QA: a question + report pair cut into windows with a stride, the
best span (start <= end, inside the report, at most ``max_answer_len`` tokens) in each, the
null answer scored at [CLS], and SQuAD's normalised exact match and token F1.

Shape legend: T tokens, C tags.
"""
from __future__ import annotations

import collections
import re
import unicodedata
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bertlab.batches import IGNORE_INDEX


def tag_names(types: Sequence[str]) -> tuple[str, ...]:
    """The BIO tag set of entity ``types``: ("O", "B-t1", "I-t1", "B-t2", ...)."""
    if isinstance(types, str) or not types:
        raise ValueError(f"types must be a non-empty sequence of entity type names, got {types!r}")
    return ("O", *(f"{p}-{t}" for t in types for p in ("B", "I")))


def align_labels(offsets: Sequence, word_ids: Sequence, spans: Sequence, tag_ids: dict) -> list[int]:
    """One label per token: the tag of its word on the word's first WordPiece, else ``IGNORE_INDEX``.

    ``offsets``: (start, end) characters of each token; ``word_ids``: the word of each token
    (None for special tokens), as a fast tokenizer gives them. ``spans``: (start, end, type)
    character spans. A word starting inside a span is B-type if it is the span's first word,
    else I-type; other words are O.
    """
    if len(offsets) != len(word_ids):
        raise ValueError(f"offsets has {len(offsets)} tokens but word_ids has {len(word_ids)}; give one per token")
    labels, previous, entity = [], None, None
    for (start, _), word in zip(offsets, word_ids):
        if word is None or word == previous:
            labels.append(IGNORE_INDEX)
        else:
            hit = next((s for s in spans if s[0] <= start < s[1]), None)
            tag = "O" if hit is None else ("I-" if hit == entity else "B-") + hit[2]
            entity = hit
            labels.append(tag_ids[tag])
        previous = word
    return labels


def bio_to_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """Entities in a BIO sequence, strictly: (first, last + 1, type) for each B-type followed by
    I-type tags. An I- that does not continue an entity of its type starts none (seqeval strict)."""
    spans, start, kind = [], None, None
    for i, tag in enumerate([*tags, "O"]):
        if not isinstance(tag, str):
            raise TypeError(f"tags must be strings such as 'B-VOLTAGE', got {tag!r} at {i}")
        if tag.startswith("I-") and kind == tag[2:]:
            continue
        if kind is not None:
            spans.append((start, i, kind))
        start, kind = (i, tag[2:]) if tag.startswith("B-") else (None, None)
    return spans


def decode_entities(tag_ids: Sequence[int], offsets: Sequence, word_ids: Sequence, names: Sequence[str], *,
                    bio_to_spans: Callable[[list[str]], Sequence] = bio_to_spans) -> set:
    """Character spans (start, end, type) of the tags predicted on each word's first WordPiece.

    ``bio_to_spans`` reads the word tags as (first, last + 1, type) entities (notebook 10 passes the
    learner's)."""
    firsts, word_end, previous = [], {}, None
    for k, word in enumerate(word_ids):
        if word is None:
            continue
        if word != previous:
            firsts.append(k)
        word_end[len(firsts) - 1] = offsets[k][1]
        previous = word
    tags = [names[int(tag_ids[k])] for k in firsts]
    return {(offsets[firsts[a]][0], word_end[b - 1], kind) for a, b, kind in bio_to_spans(tags)}


def entity_scores(gold: Sequence[set], pred: Sequence[set]) -> dict:
    """Exact-match entity precision, recall and F1 over reports (a span counts only with the same
    start, end and type), with the counts."""
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} reports but pred has {len(pred)}")
    tp = sum(len(set(g) & set(p)) for g, p in zip(gold, pred))
    n_pred, n_gold = sum(map(len, pred)), sum(map(len, gold))
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "tp": tp, "predicted": n_pred, "gold": n_gold}


class TokenTagger(nn.Module):
    """An encoder with a linear layer over every token: ``{"logits": (B, T, C)}``."""

    def __init__(self, encoder: nn.Module, num_tags: int, dropout: float = 0.1):
        super().__init__()
        self.encoder, self.dropout = encoder, nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_tags)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state  # (B, T, H)
        return {"logits": self.classifier(self.dropout(h))}


class SpanExtractor(nn.Module):
    """An encoder with a start and an end score per token: ``{"start_logits", "end_logits"}``, each (B, T)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.config.hidden_size, 2)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state  # (B, T, H)
        start, end = self.classifier(h).unbind(-1)
        if attention_mask is not None:  # padding can never be an answer
            start, end = (x.masked_fill(attention_mask == 0, -1e4) for x in (start, end))
        return {"start_logits": start, "end_logits": end}


def span_loss(outputs, batch: dict) -> torch.Tensor:
    """Mean of the cross-entropies of the start and end positions (0, the [CLS], for no answer)."""
    return (F.cross_entropy(outputs["start_logits"], batch["start_positions"])
            + F.cross_entropy(outputs["end_logits"], batch["end_positions"])) / 2


def qa_windows(tokenizer, question: str, context: str, answer: tuple[int, int] | None = None, *,
               max_length: int = 128, stride: int = 32, windows: bool = True) -> list[dict]:
    """The question + report pair as windows of at most ``max_length`` tokens, consecutive
    windows sharing ``stride`` report tokens (``windows=False``: the first one only, plain
    truncation). Each window: input_ids, token_type_ids, offsets (None outside the report) and
    start/end token positions of ``answer`` (character span), 0 ([CLS]) when the window does
    not hold it whole. Raises ValueError when the question leaves no room for the report."""
    q = tokenizer(question, add_special_tokens=False)["input_ids"]
    if len(q) + 3 + stride >= max_length:
        raise ValueError(f"max_length={max_length} leaves no room for the report after a question of "
                         f"{len(q)} tokens and stride={stride}: raise max_length or shorten the question")
    # The windows are cut here rather than by the tokenizer (return_overflowing_tokens), whose
    # overflow rules have changed between tokenizers versions: consecutive windows share exactly
    # `stride` report tokens, so every answer of at most stride + 1 tokens lies whole in one.
    report = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    room = max_length - len(q) - 3  # report tokens per window: [CLS] question [SEP] report [SEP]
    starts = [0]
    while windows and starts[-1] + room < len(report["input_ids"]):
        starts.append(starts[-1] + room - stride)
    out = []
    for s in starts:
        piece = report["input_ids"][s:s + room]
        offsets = [None] * (len(q) + 2) + [tuple(o) for o in report["offset_mapping"][s:s + room]] + [None]
        start = end = 0
        if answer is not None:
            inside = [k for k, o in enumerate(offsets) if o is not None and answer[0] <= o[0] and o[1] <= answer[1]]
            held = [o for o in offsets if o is not None]
            if inside and held[0][0] <= answer[0] and answer[1] <= held[-1][1]:
                start, end = inside[0], inside[-1]
        out.append({"input_ids": [tokenizer.cls_token_id, *q, tokenizer.sep_token_id, *piece, tokenizer.sep_token_id],
                    "token_type_ids": [0] * (len(q) + 2) + [1] * (len(piece) + 1), "offsets": offsets,
                    "start_positions": start, "end_positions": end})
    return out


def best_span(start_logits, end_logits, context_mask, max_answer_len: int = 20) -> tuple[int, int, float]:
    """(start, end, score) maximising start_logits[start] + end_logits[end] over start <= end <
    start + max_answer_len, both in the report (``context_mask``); (0, 0, -inf) if none is valid."""
    if max_answer_len < 1:
        raise ValueError(f"max_answer_len must be >= 1, got {max_answer_len}")
    s, e = torch.as_tensor(start_logits).float(), torch.as_tensor(end_logits).float()  # (T,)
    m = torch.as_tensor(context_mask).bool()
    T = len(s)
    i, j = torch.arange(T).unsqueeze(1), torch.arange(T).unsqueeze(0)
    valid = (j >= i) & (j - i < max_answer_len) & m.unsqueeze(1) & m.unsqueeze(0)  # (T, T)
    scores = (s.unsqueeze(1) + e.unsqueeze(0)).masked_fill(~valid, float("-inf"))
    k = int(scores.argmax())
    if not valid.any():
        return 0, 0, float("-inf")
    return k // T, k % T, float(scores.flatten()[k])


def answer(windows: Sequence[dict], start_logits: Sequence, end_logits: Sequence, context: str, *,
           max_answer_len: int = 20, threshold: float = 0.0,
           best_span: Callable[..., tuple[int, int, float]] = best_span) -> tuple[str, float]:
    """The answer text across ``windows`` ("" for no answer) and the margin null - best.

    The best span of every window (``best_span(start_logits, end_logits, context_mask,
    max_answer_len)``, 1-D tensors; notebook 10 passes the learner's) competes on its score; the
    null score is the lowest [CLS] score of the windows. No answer when null - best > ``threshold``."""
    best, null = (0, 0, float("-inf"), None), float("inf")
    for w, s, e in zip(windows, start_logits, end_logits):
        mask = torch.tensor([o is not None for o in w["offsets"]])  # (T,) the report's tokens
        i, j, score = best_span(torch.as_tensor(s[:len(mask)]), torch.as_tensor(e[:len(mask)]), mask, max_answer_len)
        null = min(null, float(s[0] + e[0]))
        if score > best[2]:
            best = (i, j, score, w)
    if best[3] is None:
        return "", float("inf")
    margin = null - best[2]
    if margin > threshold:
        return "", margin
    offsets = best[3]["offsets"]
    return context[offsets[best[0]][0]:offsets[best[1]][1]], margin


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces.

    Punctuation is every character Unicode classes as punctuation or a symbol (category P* or S*):
    all of SQuAD's ``string.punctuation``, and the degree sign the reports write ("125°C" and
    "125C" are one answer), which ``string.punctuation`` lacks. Letters such as µ stay."""
    s = "".join(ch for ch in s.lower() if unicodedata.category(ch)[0] not in "PS")
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal (both empty: a right "no answer")."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD's token F1 of the normalised answers; an empty answer scores 1 only against an empty one."""
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def qa_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]], *,
              normalize_answer: Callable[[str], str] = normalize_answer,
              token_f1: Callable[[str, str], float] = token_f1) -> dict:
    """EM and F1 (max over each question's gold answers; [] = unanswerable), in percent, for the
    answerable questions, the unanswerable ones and all, with their counts. ``normalize_answer`` and
    ``token_f1`` define EM and F1 (notebook 10 passes the learner's)."""
    if len(predictions) != len(golds):
        raise ValueError(f"predictions has {len(predictions)} answers but golds has {len(golds)}")
    rows = collections.defaultdict(list)
    for p, g in zip(predictions, golds):
        g = list(g) or [""]
        row = (max(float(normalize_answer(p) == normalize_answer(x)) for x in g), max(token_f1(p, x) for x in g))
        rows["answerable" if g != [""] else "unanswerable"].append(row)
        rows["overall"].append(row)
    return {k: {"n": len(v), "em": 100 * sum(r[0] for r in v) / len(v), "f1": 100 * sum(r[1] for r in v) / len(v)}
            for k, v in rows.items() if v}
