"""What BERT is compared with (notebook 05), and the harness that compares them.

- :func:`tfidf_logreg`: TF-IDF of words and word pairs, then logistic regression (scikit-learn).
- :class:`WordVocab`, :class:`BiLSTMClassifier`: a 2-layer bidirectional LSTM over word
  embeddings, trained from scratch with ``bertlab.train.fit``.
- BERT, the model they are compared with, comes from ``bertlab.frozen``: its lower layers frozen,
  their output computed once per report, only the top layers and the head trained (fast
  enough for many runs on a CPU).
- :func:`stratified_budget`: a label budget that keeps each class's share.
- :func:`run_grid`, :func:`summarize`, :func:`paired_differences`: every (model, budget, seed)
  run, its results cached; the mean and spread over seeds; two models' runs paired seed by seed.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from bertlab import args
from bertlab.train import TextDataset, check_labels

# ---------------------------------------------------------------- TF-IDF + logistic regression


def tfidf_logreg(C: float = 10.0, seed: int = 0):
    """An unfitted scikit-learn pipeline: TF-IDF (words and word pairs, sublinear tf) -> logistic regression.

    ``C`` is the inverse L2 strength. Fit it on raw texts: ``tfidf_logreg().fit(texts, labels)``.
    The SAGA solver: on these sparse features it reached the same validation scores as
    L-BFGS, in less time.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    args.number("C", C, low=0, low_open=True)
    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w[\w.]*\b"),
                         LogisticRegression(C=C, solver="saga", max_iter=5000, random_state=seed))


def tfidf_parameters(pipeline) -> int:
    """Learned numbers of a fitted :func:`tfidf_logreg`: the weights and biases (IDF values not counted)."""
    clf = pipeline[-1]
    return int(clf.coef_.size + clf.intercept_.size)


# ---------------------------------------------------------------- BiLSTM from scratch

_WORD = re.compile(r"[a-z_][a-z0-9_]*|\d+(?:[.,]\d+)*[a-z%°]*|[^\s\w]")
_DIGIT = re.compile(r"\d")


class WordVocab:
    """Lower-cased words, numbers and punctuation marks seen at least ``min_freq`` times in the training texts.

    A number keeps its unit and its shape but not its digits (``0.91V`` -> ``0.00v``), so
    a value never seen in training is not an unknown word. Id 0 is padding, 1 an unknown
    word. ``encode`` returns a ``bertlab.train.TextDataset``.
    """

    PAD, UNK = 0, 1

    def __init__(self, texts: Iterable[str], min_freq: int = 1):
        counts = Counter(w for t in texts for w in self.split(t))
        if not counts:
            raise ValueError("texts is empty: the vocabulary needs at least one training text")
        self.words = ["[PAD]", "[UNK]"] + sorted(w for w, c in counts.items() if c >= min_freq)
        self.ids = {w: i for i, w in enumerate(self.words)}

    @staticmethod
    def split(text: str) -> list[str]:
        return [_DIGIT.sub("0", w) for w in _WORD.findall(text.lower())]

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, texts: Sequence[str], labels: Sequence[int] | None = None, *, max_length: int = 128,
               num_labels: int | None = None) -> TextDataset:
        """Word ids of each text (at most ``max_length``), unknown words as 1."""
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty: give at least one text to encode")
        ids = [[self.ids.get(w, self.UNK) for w in self.split(t)][:max_length] or [self.UNK] for t in texts]
        if labels is not None:
            labels = [int(y) for y in labels]
            check_labels(labels, num_labels, "labels")
        return TextDataset(ids, labels, pad_id=self.PAD)


class BiLSTMClassifier(nn.Module):
    """Word embeddings -> 2-layer bidirectional LSTM -> [last forward state; last backward state] -> linear.

    ``forward(input_ids, attention_mask)`` with LongTensors (B, T), padding on the right,
    returns logits (B, C). Each direction is its own one-layer ``nn.LSTM`` (the same
    parameters as ``nn.LSTM(..., num_layers=2, bidirectional=True)``); the backward one reads
    each report's tokens reversed *within its length*, so padding is always read after
    the real tokens and a report's logits do not depend on its batch. (Packed sequences
    do the same but ran slower on a CPU.)
    """

    def __init__(self, vocab_size: int, num_labels: int, embed_dim: int = 300, hidden_size: int = 256,
                 num_layers: int = 2, dropout: float = 0.3):
        super().__init__()
        args.integer("num_labels", num_labels, low=2)
        self.num_labels, self.hidden_size = num_labels, hidden_size
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=WordVocab.PAD)
        sizes = [embed_dim] + [2 * hidden_size] * (num_layers - 1)
        self.forward_lstms = nn.ModuleList(nn.LSTM(n, hidden_size, batch_first=True) for n in sizes)
        self.backward_lstms = nn.ModuleList(nn.LSTM(n, hidden_size, batch_first=True) for n in sizes)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden_size, num_labels)

    def forward(self, input_ids, attention_mask=None, **_):
        if attention_mask is None:
            attention_mask = (input_ids != WordVocab.PAD).long()
        B, T = input_ids.shape
        lengths = attention_mask.sum(1).clamp(min=1)  # (B,)
        pos = torch.arange(T, device=input_ids.device)[None, :]  # (1, T)
        rev = torch.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)  # (B, T): reverse within length

        def flip(x):  # reverses the real tokens of each row; its own inverse
            return x.gather(1, rev[..., None].expand_as(x))

        x = self.dropout(self.embedding(input_ids))  # (B, T, E)
        for i, (fwd, bwd) in enumerate(zip(self.forward_lstms, self.backward_lstms)):
            out_f, _ = fwd(x)  # (B, T, hidden)
            out_b = flip(bwd(flip(x))[0])  # (B, T, hidden), back in reading order
            x = torch.cat([out_f, out_b], dim=-1)  # (B, T, 2 * hidden)
            if i < len(self.forward_lstms) - 1:
                x = self.dropout(x)
        last_f = out_f[torch.arange(B, device=x.device), lengths - 1]  # (B, hidden): after the last real token
        last_b = out_b[:, 0]  # (B, hidden): after reading back to the first token
        return self.classifier(self.dropout(torch.cat([last_f, last_b], dim=-1)))  # (B, C)


# ---------------------------------------------------------------- the comparison harness


def stratified_budget(labels: Sequence[int], budget: int, seed: int = 0) -> list[int]:
    """``budget`` distinct indices into ``labels`` drawn so that each class keeps its share.

    Class c gets ``budget * n_c / n`` reports rounded down, and the slots left over go to the
    classes with the largest remainders (ties: the smaller class id), so every class gets
    its exact share rounded down or up (Hamilton's method). Within a class the reports are
    a random draw for ``seed``. Returned sorted. ``budget == len(labels)`` returns every
    index. Raises ValueError naming ``budget`` when it is not an int in 1..len(labels).
    """
    labels = np.asarray(labels)
    n = len(labels)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or not 1 <= budget <= n:
        raise ValueError(f"budget must be an int in 1..len(labels) ({n}), got {budget!r}")
    classes, counts = np.unique(labels, return_counts=True)
    exact = budget * counts / n
    quota = np.floor(exact).astype(int)
    left = budget - quota.sum()
    quota[np.argsort(-(exact - quota), kind="stable")[:left]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return sorted(int(i) for i in np.concatenate(picked))


def summarize(runs, metric: str = "macro_f1") -> "pd.DataFrame":  # noqa: F821
    """Mean, sample standard deviation (ddof 1) and number of seeds of ``metric`` per (model, budget).

    ``runs`` is a list of dicts (or a DataFrame) with keys ``model``, ``budget``, ``seed`` and ``metric``.
    """
    frame = _runs_frame(runs, metric)
    return frame.groupby(["model", "budget"])[metric].agg(mean="mean", std="std", seeds="count")


def paired_differences(runs, model: str, baseline: str, metric: str = "accuracy") -> "pd.DataFrame":  # noqa: F821
    """``metric`` of ``model`` and of ``baseline`` per (budget, seed), and ``model - baseline``, as a DataFrame.

    ``runs`` are :func:`run_grid` results (dicts or a DataFrame with ``model``, ``budget``,
    ``seed`` and ``metric``). Runs with the same budget and seed drew the same labelled
    reports, initial weights and batch order, so their difference isolates what differs
    between the two models (e.g. the encoder they start from, notebook 07). Columns:
    ``baseline``, ``model``, ``"difference"``; index (budget, seed). Raises ValueError when a
    column or one of the two models is missing, or when a (budget, seed) of one has no partner.
    """
    import pandas as pd

    frame = _runs_frame(runs, metric)
    sides = {}
    for name in (baseline, model):
        rows = frame[frame["model"] == name]
        if rows.empty:
            raise ValueError(f"runs has no run of {name!r}; models: {sorted(frame['model'].unique())}")
        sides[name] = rows.set_index(["budget", "seed"])[metric]
    unpaired = sides[baseline].index.symmetric_difference(sides[model].index)
    if len(unpaired):
        raise ValueError(f"(budget, seed) pairs run for one model only: {list(unpaired)}")
    out = pd.DataFrame({baseline: sides[baseline], model: sides[model].reindex(sides[baseline].index)})
    out["difference"] = out[model] - out[baseline]
    return out


def _runs_frame(runs, metric: str) -> "pd.DataFrame":  # noqa: F821
    """``runs`` (dicts or a DataFrame) as a DataFrame; ValueError when it lacks model, budget, seed or ``metric``."""
    import pandas as pd

    frame = runs if isinstance(runs, pd.DataFrame) else pd.DataFrame(list(runs))
    missing = {"model", "budget", "seed", metric} - set(frame.columns)
    if missing:
        raise ValueError(f"runs lacks the columns {sorted(missing)}")
    return frame


def _cached_json(name: str, config: dict, compute: Callable[[], dict]) -> tuple[dict, bool]:
    """A JSON result from the model cache, or ``compute()`` written there atomically."""
    from bertlab import cache

    path = cache.path_for(name, config, suffix=".json")
    if path.is_file():
        return json.loads(path.read_text()), True
    value = compute()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({**value, "config": config}, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return value, False


def run_grid(models: dict[str, Callable[[list[int], int], dict]], labels: Sequence[int], budgets: Sequence[int],
             seeds: Sequence[int], *, cache_config: dict | None = None, progress: bool = True) -> list[dict]:
    """Run every model at every label budget with every seed; one dict per run.

    ``models[name](indices, seed)`` trains on the training items at ``indices`` (from
    :func:`stratified_budget` of ``labels``) and returns a dict of results (e.g.
    ``macro_f1``, ``train_seconds``). With ``cache_config`` (what the results depend on:
    data, settings), each run's results are cached under it and only missing runs are
    computed; a cached run has ``cached`` True.
    """
    from tqdm.auto import tqdm

    for name in ("budgets", "seeds"):
        if not list(locals()[name]):
            raise ValueError(f"{name} is empty")
    grid = [(m, b, s) for m in models for b in budgets for s in seeds]
    out = []
    for model, budget, seed in tqdm(grid, desc="runs", disable=not progress):
        indices = stratified_budget(labels, budget, seed)

        def compute():
            return models[model](indices, seed)

        if cache_config is None:
            result, hit = compute(), False
        else:
            result, hit = _cached_json("run", {**cache_config, "model": model, "budget": budget, "seed": seed}, compute)
        result = {k: v for k, v in result.items() if k != "config"}
        out.append({"model": model, "budget": budget, "seed": seed, **result, "cached": hit})
    return out
