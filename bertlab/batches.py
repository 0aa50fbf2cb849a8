"""Reports as token ids, and batches of them (notebook 04; every later notebook batches this way).

- :func:`encode`: tokenize reports into a :class:`TextDataset` of unpadded token ids and labels.
- :class:`TextDataset`: ``collate`` pads a batch to its own longest report (dynamic padding).
- :class:`LengthGroupedBatches`, :func:`make_loader`: shuffled batches of reports of similar
  length, so dynamic padding pads little.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from bertlab import args
from bertlab.pretraining import IGNORE_INDEX  # a label the loss skips: padding of per-token labels


class TextDataset(Dataset):
    """Token ids of each text (unpadded) and, optionally, labels and more per-item fields.

    ``labels`` hold one class id per text, or one per token (a list as long as the text's
    ids, ``IGNORE_INDEX`` where a token has none). ``token_type_ids`` (per token) give the
    segment of each token of a pair. :meth:`with_fields` adds per-item values such as a
    teacher's logits. ``collate`` pads a list of items to the longest one of the batch
    (``pad_to=None``) or to ``pad_to`` tokens: a batch is a dict of tensors ``input_ids``
    (B, T), ``attention_mask`` (B, T), ``index`` (B,) (each item's position in the dataset),
    ``labels`` (B,) or (B, T), ``token_type_ids`` (B, T), and each extra field (B, ...).
    """

    def __init__(self, input_ids: Sequence[Sequence[int]], labels: Sequence | None = None,
                 pad_id: int = 0, pad_to: int | None = None, *, token_type_ids: Sequence[Sequence[int]] | None = None,
                 fields: Mapping[str, Sequence] | None = None):
        for name, values in (("labels", labels), ("token_type_ids", token_type_ids), *(fields or {}).items()):
            if values is not None and len(values) != len(input_ids):
                raise ValueError(f"{name} has {len(values)} entries but input_ids has {len(input_ids)}; give one per text")
        args.optional(args.positive_int, "pad_to", pad_to)
        if pad_to is not None and input_ids and max(map(len, input_ids)) > pad_to:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest text ({max(map(len, input_ids))} tokens)")
        self.input_ids = [list(ids) for ids in input_ids]
        self.labels = None if labels is None else list(labels)
        self.token_type_ids = None if token_type_ids is None else [list(t) for t in token_type_ids]
        self.fields = dict(fields or {})
        self.pad_id, self.pad_to = pad_id, pad_to

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.input_ids[i], "index": i, **{k: v[i] for k, v in self.fields.items()}}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[i]
        return item

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def _new(self, input_ids, labels, token_type_ids, fields, pad_to) -> "TextDataset":
        return TextDataset(input_ids, labels, self.pad_id, pad_to, token_type_ids=token_type_ids, fields=fields)

    def with_padding(self, pad_to: int | None) -> "TextDataset":
        """The same texts, padded to ``pad_to`` tokens per batch (None: dynamic padding)."""
        return self._new(self.input_ids, self.labels, self.token_type_ids, self.fields, pad_to)

    def with_fields(self, **fields: Sequence) -> "TextDataset":
        """The same texts with more per-item values (one per text, e.g. ``teacher_logits=`` rows), batched as tensors."""
        return self._new(self.input_ids, self.labels, self.token_type_ids, {**self.fields, **fields}, self.pad_to)

    def subset(self, indices: Sequence[int]) -> "TextDataset":
        """The items at ``indices`` (e.g. a label budget), in that order."""
        def pick(values):
            return None if values is None else [values[i] for i in indices]

        return self._new(pick(self.input_ids), pick(self.labels), pick(self.token_type_ids),
                         {k: pick(v) for k, v in self.fields.items()}, self.pad_to)

    def collate(self, items: list[dict]) -> dict:
        T = self.pad_to or max(len(it["input_ids"]) for it in items)

        def padded(key, fill):  # (B, T)
            out = torch.full((len(items), T), fill, dtype=torch.long)
            for b, it in enumerate(items):
                out[b, :len(it[key])] = torch.as_tensor(it[key], dtype=torch.long)
            return out

        ids = padded("input_ids", self.pad_id)
        batch = {"input_ids": ids, "attention_mask": (torch.arange(T) < torch.tensor(
            [len(it["input_ids"]) for it in items]).unsqueeze(1)).long(),  # (B, T): 1 on real tokens
                 "index": torch.tensor([it["index"] for it in items])}
        if "token_type_ids" in items[0]:
            batch["token_type_ids"] = padded("token_type_ids", 0)
        if "labels" in items[0]:
            per_token = isinstance(items[0]["labels"], (list, tuple))
            batch["labels"] = padded("labels", IGNORE_INDEX) if per_token else torch.tensor([it["labels"] for it in items])
        for key in self.fields:
            values = [it[key] for it in items]
            batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)
        return batch


def encode(tokenizer, texts: Sequence[str], labels: Sequence[int] | None = None, *,
           max_length: int = 128, num_labels: int | None = None) -> TextDataset:
    """Tokenize ``texts`` (truncated to ``max_length`` tokens, [CLS] and [SEP] included), unpadded.

    ``labels`` are class ids; with ``num_labels`` each must lie in ``0..num_labels-1``.
    Raises ValueError naming the argument for an empty ``texts``, a non-string text, a
    length mismatch or a label out of range.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got a single str; wrap it in a list")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give at least one text to encode")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"texts[{bad}] must be a str, got {type(texts[bad]).__name__}")
    args.integer("max_length (room for [CLS] and [SEP])", max_length, low=2)
    if labels is not None:
        labels = [int(y) for y in labels]
        if len(labels) != len(texts):
            raise ValueError(f"labels has {len(labels)} entries but texts has {len(texts)}; give one label per text")
        check_labels(labels, num_labels, "labels")
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return TextDataset(ids, labels, pad_id=tokenizer.pad_token_id or 0)


def check_labels(labels: Sequence[int], num_labels: int | None, name: str = "labels") -> None:
    """Raise ValueError naming ``name`` when a label is not an int in ``0..num_labels-1``."""
    args.optional(args.positive_int, "num_labels", num_labels)
    for i, y in enumerate(labels):
        if y < 0 or (num_labels is not None and y >= num_labels):
            upper = "" if num_labels is None else f"..{num_labels - 1}"
            raise ValueError(f"{name}[{i}] is {y}, out of range: class ids must be 0{upper}"
                             + ("" if num_labels is None else f" for {num_labels} classes"))


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Batches of indices whose items have similar lengths, in a random order (a batch sampler).

    Each epoch: shuffle all indices, cut them into chunks of ``batch_size * chunk_batches``,
    sort each chunk by length, cut it into batches, shuffle the batches. Dynamic padding
    then pads each batch to a length close to its items' own. ``partial_last``: the one
    batch smaller than ``batch_size`` (when the items do not fill the last) comes last, where
    accelerate can split a batch among processes (``bertlab.train.fit`` sets it for several).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator, chunk_batches: int = 16,
                 partial_last: bool = False):
        self.lengths, self.batch_size, self.generator = list(lengths), batch_size, generator
        self.chunk, self.partial_last = batch_size * chunk_batches, partial_last

    def __len__(self) -> int:
        return sum(math.ceil(min(self.chunk, len(self.lengths) - i) / self.batch_size)
                   for i in range(0, len(self.lengths), self.chunk))

    def __iter__(self):
        perm = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches = []
        for i in range(0, len(perm), self.chunk):
            chunk = sorted(perm[i:i + self.chunk], key=self.lengths.__getitem__)
            batches += [chunk[j:j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        order = torch.randperm(len(batches), generator=self.generator).tolist()
        if self.partial_last:
            order.sort(key=lambda b: len(batches[b]) < self.batch_size)  # stable: the full ones keep their order
        for b in order:
            yield batches[b]


def make_loader(data: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                group_by_length: bool = False, order: Sequence[int] | None = None) -> DataLoader:
    """A DataLoader over ``data`` with its ``collate``.

    ``shuffle``: a new random order each epoch from a generator seeded by ``seed``;
    with ``group_by_length`` too, batches of similar length (:class:`LengthGroupedBatches`).
    ``order`` fixes the order of the items instead (e.g. sorted by length for evaluation).
    """
    args.positive_int("batch_size", batch_size)
    collate = getattr(data, "collate", None)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    if shuffle and group_by_length:
        if not hasattr(data, "lengths"):
            raise ValueError("group_by_length needs a dataset with lengths(), e.g. from bertlab.train.encode")
        return DataLoader(data, batch_sampler=LengthGroupedBatches(data.lengths(), batch_size, generator),
                          collate_fn=collate)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      sampler=list(order) if order is not None else None, collate_fn=collate)
