"""Deployment: a smaller, faster model for serving failure reports (notebook 09).

- :func:`quantize_torch`: dynamic INT8 quantization of every ``nn.Linear`` in PyTorch.
- :func:`export_onnx`, :func:`check_onnx`: ONNX export with dynamic batch and sequence
  axes, and a check that ONNX Runtime's logits equal PyTorch's at several shapes.
- :func:`ort_session`, :func:`quantize_onnx`: ONNX Runtime with graph optimisation, and its
  own INT8 quantization: dynamic (which also quantizes the word embeddings) or static (calibrated).
- :class:`TorchRunner`, :class:`OrtRunner`: a model as a function of padded (B, T) int64 arrays
  (:func:`pad_batch`) to logits; :func:`batch_logits` over many reports.
- :class:`Predictor`: reports in, failure types and probabilities out, with an LRU cache
  for repeated reports. The course's served model is ``bertlab.artifacts.exported_model``.

The trimmed vocabulary is :class:`bertlab.vocab.TrimmedVocabulary`; :mod:`bertlab.benchmark` measures what
each variant costs and buys. torch and ONNX Runtime get the same threads (:func:`set_threads`).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from bertlab import args, vocab

DEFAULT_THREADS = 2
INPUT_NAMES = ["input_ids", "attention_mask"]
#: Largest difference between ONNX Runtime's and PyTorch's fp32 logits that :func:`check_onnx` accepts.
ONNX_ATOL = 1e-4


@contextlib.contextmanager
def _silenced():
    """No warnings or library log lines (graded cells must not write to stderr)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization logs its advice on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def set_threads(threads: int = DEFAULT_THREADS) -> int:
    """Let torch use ``threads`` intra-op threads (ORT sessions from :func:`ort_session` use the same)."""
    torch.set_num_threads(args.positive_int("threads", threads))
    return threads


# ---------------------------------------------------------------- quantization and export


def quantize_torch(model: nn.Module) -> nn.Module:
    """A dynamic-INT8 copy of ``model`` on the CPU: ``nn.Linear`` weights stored as int8 with one
    scale per output channel (a row with small weights keeps its precision beside one with large
    ones), the activations quantized on the fly per batch. Embeddings and LayerNorms stay fp32."""
    from torch.ao.quantization import per_channel_dynamic_qconfig

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    with _silenced():  # torch.ao.quantization warns that it is deprecated; it still works
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu().eval(),
                                                      {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def _example_inputs(batch: int, length: int, vocab_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random reports: [CLS] ids... [SEP], the later rows padded (to test masks)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab_size, (batch, length), generator=g) if vocab_size > 1000 else \
        torch.randint(3, vocab_size, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(1, batch):
        n = max(2, length - (b * length) // (batch + 1))  # later rows shorter, padded
        mask[b, n:] = 0
        ids[b, n:] = 0
    ids[:, 0] = 101 if vocab_size > 102 else 1
    return ids, mask  # (B, T), (B, T)


def _input_vocab(model: nn.Module) -> int:
    """How many token ids ``model`` accepts."""
    if isinstance(model, vocab.TrimmedVocabulary):
        return len(model.id_map)
    config = getattr(getattr(model, "encoder", None), "config", None)
    return getattr(config, "vocab_size", 30522)


def export_onnx(model: nn.Module, path: str | os.PathLike, *, opset: int = 17,
                metadata: dict[str, str] | None = None) -> Path:
    """Export ``model(input_ids, attention_mask) -> logits`` to ONNX at ``path``; returns the path.

    Both inputs are int64 (batch, sequence) with **dynamic** batch and sequence axes, so
    one file serves any batch size and report length. Uses the TorchScript exporter
    (``dynamo=False``: its graph ran faster in ONNX Runtime than the dynamo one).
    ``metadata`` (str -> str) is stored in the file (e.g. label names). Written to a
    temporary name, then renamed, so a reader never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().eval()
    ids, mask = _example_inputs(2, 16, _input_vocab(model))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        with _silenced(), torch.no_grad():
            torch.onnx.export(model, (ids, mask), tmp, input_names=INPUT_NAMES, output_names=["logits"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                            "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}},
                              opset_version=opset, dynamo=False)
        _stamp(tmp, metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _stamp(path, metadata) -> None:
    """Write ``metadata`` (if any) into the ONNX file at ``path``, in place."""
    import onnx

    if metadata:
        proto = onnx.load(path)
        _set_metadata(proto, metadata)
        onnx.save(proto, path)


def _set_metadata(proto, metadata: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise TypeError(f"metadata[{k!r}] must be a str (JSON-encode other values), got {type(v).__name__}")
        entry = existing.get(k) or proto.metadata_props.add()
        entry.key, entry.value = k, v


def check_onnx(model: nn.Module, path: str | os.PathLike, shapes: Sequence[tuple[int, int]] = ((1, 7), (3, 40), (8, 128)),
               atol: float = ONNX_ATOL, threads: int = DEFAULT_THREADS) -> list[dict]:
    """Compare ONNX Runtime's logits with ``model``'s at each (batch, length) in ``shapes``.

    Returns one row per shape with the largest absolute difference; raises AssertionError
    when one exceeds ``atol`` (an export that baked in a shape fails here).
    """
    session = ort_session(path, threads=threads)
    model = copy.deepcopy(model).cpu().eval()
    rows = []
    inner = model.model if isinstance(model, vocab.TrimmedVocabulary) else model
    max_t = getattr(getattr(getattr(inner, "encoder", None), "config", None), "max_position_embeddings", None)
    for i, (b, t) in enumerate(shapes):
        t = min(t, max_t) if max_t else t  # a shape longer than the model's positions is tested at its longest
        ids, mask = _example_inputs(b, t, _input_vocab(model), seed=i)
        with torch.inference_mode():
            ref = model(ids, mask).numpy()
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        diff = float(np.abs(got - ref).max())
        rows.append({"batch": b, "length": t, "max |ORT - torch|": diff})
        if not diff <= atol:
            raise AssertionError(f"ONNX Runtime differs from PyTorch at batch {b}, length {t}: largest difference "
                                 f"{diff:.3g} > tolerance {atol:g}")
    return rows


def ort_session(path: str | os.PathLike, *, threads: int = DEFAULT_THREADS, optimize: bool = True):
    """An ONNX Runtime CPU session for ``path`` with ``threads`` intra-op threads (as torch).

    ``optimize``: every graph optimisation ORT has (constant folding, fusing LayerNorm,
    GELU, attention and MatMul+Add into single kernels); False runs the graph as exported.
    Raises FileNotFoundError for a missing file and ValueError for one ORT cannot read.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model at {path}")
    set_threads(threads)  # validates; torch and ORT then use the same count
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for a corrupt file
        raise ValueError(f"{path} is not an ONNX model ONNX Runtime can load: {str(err).splitlines()[0][:300]}") from err


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike,
                  calibration: Sequence[Sequence[int]] | None = None) -> Path:
    """ONNX Runtime's INT8 quantization of the plain export ``src`` into ``dst``: dynamic, or static
    when ``calibration`` (token-id lists of typical reports) is given.

    Dynamic: weights of MatMuls *and* the embedding tables (Gather) become int8, one scale per
    output channel; each activation's scale comes from the batch as it runs. Static: the MatMuls'
    weights as above, each activation's scale fixed once from its min/max over ``calibration``
    (quantize/dequantize pairs around the MatMuls; the embeddings stay fp32). Quantize the plain
    export: the quantizer fails on a graph first passed through ORT's BERT optimizer.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"no ONNX model at {src}")
    if calibration is not None and not any(len(ids) for ids in calibration):
        raise ValueError("calibration is empty: give the token ids of a few hundred typical reports, or None for "
                         "dynamic quantization")

    class Reports(CalibrationDataReader):  # one report at a time: the batches ORT's calibrator asks for
        def __init__(self):
            self.reports = iter([ids for ids in calibration if len(ids)])

        def get_next(self):
            ids = next(self.reports, None)
            return None if ids is None else dict(zip(INPUT_NAMES, pad_batch([ids])))

    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=dst.name, suffix=".tmp")
    os.close(fd)
    try:
        with _silenced():
            # one scale per output channel: closer to fp32's accuracy than one per tensor, for a few more scales
            if calibration is None:
                quantize_dynamic(str(src), tmp, weight_type=QuantType.QInt8, per_channel=True)
            else:
                quantize_static(str(src), tmp, Reports(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                                op_types_to_quantize=["MatMul"], extra_options={"ActivationSymmetric": True})
        meta = read_metadata(src)
        _stamp(tmp, meta)  # the quantizer drops the metadata
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dst


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata stored in an ONNX file (e.g. ``label_names``), without loading the weights."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


# ---------------------------------------------------------------- runners: (B, T) int64 arrays -> logits


class TorchRunner:
    """``runner(input_ids, attention_mask) -> logits`` as NumPy arrays, for a torch model on the CPU."""

    def __init__(self, model: nn.Module):
        self.model = model.cpu().eval()

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).float().numpy()


class OrtRunner:
    """``runner(input_ids, attention_mask) -> logits`` for an ONNX Runtime session."""

    def __init__(self, session):
        self.session = session

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices ``0..len(lengths)-1`` sorted by length (ties keep their order), in batches of
    ``batch_size``: reports of similar length share a batch, so little padding is computed."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def batch_logits(runner: Callable[[np.ndarray, np.ndarray], np.ndarray], ids: Sequence[Sequence[int]],
                 batch_size: int = 32) -> np.ndarray:
    """Logits (N, C) of ``runner`` (:class:`TorchRunner`, :class:`OrtRunner`) for ``ids``, in their order."""
    args.positive_int("batch_size", batch_size)
    if not len(ids):
        raise ValueError("ids is empty: give at least one report's token ids")
    chunks = length_sorted_batches([len(x) for x in ids], batch_size)
    sorted_logits = np.concatenate([runner(*pad_batch([ids[j] for j in chunk])) for chunk in chunks])
    out = np.empty_like(sorted_logits)
    out[[j for chunk in chunks for j in chunk]] = sorted_logits  # back in the order of ``ids``
    return out


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pad token-id lists to the longest: int64 arrays ``input_ids`` and ``attention_mask`` (B, T)."""
    T = max(len(x) for x in ids)
    out = np.full((len(ids), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), T), dtype=np.int64)
    for b, x in enumerate(ids):
        out[b, :len(x)] = x
        mask[b, :len(x)] = 1
    return out, mask


# ---------------------------------------------------------------- serving


@dataclass
class Prediction:
    """One report's prediction: the failure type, the probabilities of all types, whether it was truncated."""

    label: str
    probabilities: dict[str, float]
    truncated: bool = False
    tokens: int = 0


@dataclass
class Predictor:
    """Failure types for raw reports from any runner (ONNX Runtime or torch).

    Reports are tokenized (truncated to ``max_length`` tokens), batched ``batch_size`` at a
    time sorted by length (little padding), and the results of the last ``cache_size``
    distinct reports are kept: a repeated report costs a dictionary look-up.
    ``to_probabilities``: logits (B, C) -> probabilities; None: softmax (a Calibration's adds a temperature).
    """

    runner: Callable
    tokenizer: object
    label_names: Sequence[str]
    max_length: int = 128
    batch_size: int = 32
    cache_size: int = 1024
    to_probabilities: Callable[[np.ndarray], np.ndarray] | None = None
    hits: int = 0
    misses: int = 0
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, got a single str; wrap it in a list")
        texts = list(texts)
        out: list[Prediction | None] = [None] * len(texts)
        todo: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
            if t in self._cache:
                self._cache.move_to_end(t)
                out[i] = self._cache[t]
                self.hits += 1
            else:
                todo.setdefault(t, []).append(i)
        if todo:
            self.misses += len(todo)
            unique = list(todo)
            ids = self.tokenizer(unique, truncation=False)["input_ids"]
            for chunk in length_sorted_batches([len(x) for x in ids], self.batch_size):
                batch = [self._truncate(ids[k]) for k in chunk]
                probs = (self.to_probabilities or _softmax)(self.runner(*pad_batch(batch, self.tokenizer.pad_token_id or 0)))
                for k, p in zip(chunk, probs):
                    pred = Prediction(self.label_names[int(p.argmax())],
                                      {n: float(v) for n, v in zip(self.label_names, p)},
                                      truncated=len(ids[k]) > self.max_length, tokens=len(ids[k]))
                    for i in todo[unique[k]]:
                        out[i] = pred
                    self._remember(unique[k], pred)
        return out  # type: ignore[return-value]

    def clear_cache(self) -> None:
        """Forget every cached prediction (the hit and miss counts stay)."""
        self._cache.clear()

    def _truncate(self, ids: list[int]) -> list[int]:
        # Keep [CLS] + the first max_length - 2 tokens + [SEP], as the tokenizer's truncation does.
        return ids if len(ids) <= self.max_length else ids[:self.max_length - 1] + ids[-1:]

    def _remember(self, text: str, pred: Prediction) -> None:
        if self.cache_size <= 0:
            return
        self._cache[text] = pred
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def onnx_predictor(path: str | os.PathLike, *, threads: int = DEFAULT_THREADS, tokenizer=None, **kwargs) -> Predictor:
    """A :class:`Predictor` for an ONNX file written by :func:`export_onnx` with ``label_names`` metadata.

    Raises FileNotFoundError (missing file) or ValueError (not a model ORT can load, or no label names in it).
    """
    from bertlab import pretrained

    session = ort_session(path, threads=threads)
    meta = {p: v for p, v in session.get_modelmeta().custom_metadata_map.items()}
    if "label_names" not in meta:
        raise ValueError(f"{path} has no 'label_names' metadata: export it with bertlab.deploy.export_onnx(..., "
                         "metadata={'label_names': json.dumps(names)})")
    names = json.loads(meta["label_names"])
    kwargs.setdefault("max_length", int(meta.get("max_length", 128)))
    return Predictor(OrtRunner(session), tokenizer or pretrained.load_tokenizer(), names, **kwargs)


def model_metadata(label_names: Sequence[str], max_length: int, **extra) -> dict[str, str]:
    """The metadata :func:`onnx_predictor` reads: label names and the truncation length."""
    return {"label_names": json.dumps(list(label_names)), "max_length": str(int(max_length)),
            **{k: json.dumps(v) for k, v in extra.items()}}
