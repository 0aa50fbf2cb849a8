"""Deployment: a smaller, faster model for serving failure reports (notebook 09).

- :func:`quantize_torch`: dynamic INT8 quantization of every ``nn.Linear`` in PyTorch.
- :func:`export_onnx`, :func:`check_onnx`: ONNX export with dynamic batch and sequence
  axes, and a check that ONNX Runtime's logits equal PyTorch's at several shapes.
- :func:`ort_session`, :func:`quantize_onnx`: ONNX Runtime with graph optimisation, and its
  own dynamic INT8 quantization (which also quantizes the word embeddings).
- :func:`size_mb`, :func:`latency_ms`: what the benchmark measures.
- :class:`Benchmark`: size, batch-1 latency p50/p95, batch-32 throughput and accuracy of
  every variant, measured in one run, as one table (as chapter 8 of *Natural Language
  Processing with Transformers* does).
- :class:`Predictor`: reports in, failure types and probabilities out, with an LRU cache
  for repeated reports. The course's served model is ``bertlab.artifacts.exported_model``.

The trimmed vocabulary of a served model is :class:`bertlab.vocab.TrimmedVocabulary`.

Fair timing: torch and ONNX Runtime get the same number of threads (``threads``, 2 by
default: torch intra-op threads, ORT ``intra_op_num_threads``; one inter-op thread each), and
the benchmark times each variant in its own fresh process, because on a 2-core machine two
thread pools in one process slow each other down.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import tempfile
import time
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
MB = 2 ** 20  # bytes in a MB as torch and the benchmark report it (MiB)
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


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """ONNX Runtime's dynamic INT8 quantization of the plain export ``src`` into ``dst``.

    Weights of MatMuls *and* the embedding tables (Gather) become int8, with one scale per
    output channel, so the file is about 4x smaller. Quantize the plain export and let the
    session optimise it: the quantizer fails on a graph first passed through ORT's BERT optimizer.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"no ONNX model at {src}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=dst.name, suffix=".tmp")
    os.close(fd)
    try:
        with _silenced():
            # one scale per output channel: closer to fp32's accuracy than one per tensor, for a few more scales
            quantize_dynamic(str(src), tmp, weight_type=QuantType.QInt8, per_channel=True)
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


# ---------------------------------------------------------------- what the benchmark measures


def size_mb(obj) -> float:
    """Size on disk in MB (2**20 bytes): of a file, or of a model's ``state_dict`` saved with ``torch.save``."""
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"size_mb: no file at {path}")
        return path.stat().st_size / MB
    if not isinstance(obj, nn.Module):
        raise TypeError(f"size_mb takes a file path or a torch.nn.Module, got {type(obj).__name__}")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.pt"
        torch.save(obj.state_dict(), path)
        return path.stat().st_size / MB


def latency_ms(predict: Callable, inputs: Sequence, *, warmup: int = 10, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Per-call latency of ``predict(x)`` over ``inputs``, in milliseconds.

    First ``warmup`` untimed calls (cycling through ``inputs``: caches, lazy
    initialisation, thread pools), then one timed call per input. Returns
    ``{"p50", "p95", "mean", "n"}``: the median and the 95th percentile (NumPy's linear
    interpolation) and the mean, as floats, and the number of timed calls.
    """
    inputs = list(inputs)
    if not inputs:
        raise ValueError("inputs is empty: give at least one input to time")
    args.integer("warmup", warmup, low=0)
    for i in range(warmup):
        predict(inputs[i % len(inputs)])
    times = []
    for x in inputs:
        start = clock()
        predict(x)
        times.append((clock() - start) * 1000)
    t = np.asarray(times)
    return {"p50": float(np.percentile(t, 50)), "p95": float(np.percentile(t, 95)), "mean": float(t.mean()), "n": len(t)}


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


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pad token-id lists to the longest: int64 arrays ``input_ids`` and ``attention_mask`` (B, T)."""
    T = max(len(x) for x in ids)
    out = np.full((len(ids), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), T), dtype=np.int64)
    for b, x in enumerate(ids):
        out[b, :len(x)] = x
        mask[b, :len(x)] = 1
    return out, mask


# ---------------------------------------------------------------- the benchmark


def load_torch(path: str, quantize: bool = False, threads: int = DEFAULT_THREADS) -> TorchRunner:
    """A :class:`TorchRunner` for a model saved whole with ``torch.save`` (quantized dynamically if asked)."""
    set_threads(threads)
    model = torch.load(path, weights_only=False, map_location="cpu")
    return TorchRunner(quantize_torch(model) if quantize else model)


def load_ort(path: str, threads: int = DEFAULT_THREADS) -> OrtRunner:
    return OrtRunner(ort_session(path, threads=threads))


@dataclass
class Variant:
    """One model to benchmark: how to load it (``kind`` 'torch' or 'ort', a file) and its size on disk."""

    name: str
    kind: str            # "torch": a whole module saved with torch.save; "ort": an ONNX file
    path: str
    quantize: bool = False   # torch only: dynamic INT8 after loading
    size_mb: float = math.nan

    def load(self, threads: int = DEFAULT_THREADS):
        if self.kind == "torch":
            return load_torch(self.path, self.quantize, threads)
        if self.kind == "ort":
            return load_ort(self.path, threads)
        raise ValueError(f"Variant.kind must be 'torch' or 'ort', got {self.kind!r}")


def _measure(variant: Variant, ids: list[list[int]], labels: list[int], threads: int, n_latency: int,
             warmup: int, batch_size: int) -> dict:
    """Everything about one variant except its size: runs in the benchmark's child process."""
    from bertlab import env

    env.quiet()
    runner = variant.load(threads)
    singles = [pad_batch([x]) for x in ids[:n_latency]]
    lat = latency_ms(lambda b: runner(*b), singles, warmup=warmup)
    batches = [pad_batch(ids[i:i + batch_size]) for i in range(0, len(ids), batch_size)]
    runner(*batches[0])  # warm-up at batch size
    start = time.perf_counter()
    preds = np.concatenate([runner(*b).argmax(-1) for b in batches])
    seconds = time.perf_counter() - start
    return {"p50_ms": lat["p50"], "p95_ms": lat["p95"], f"reports/s (batch {batch_size})": len(ids) / seconds,
            "accuracy": float((preds == np.asarray(labels)).mean())}


def _measure_in_subprocess(job: tuple) -> dict:
    """:func:`_measure` in a fresh Python process (its own thread pools), arguments and result pickled."""
    import pickle
    import subprocess
    import sys

    threads = job[3]
    with tempfile.TemporaryDirectory() as d:
        inp, out = Path(d) / "args.pkl", Path(d) / "row.pkl"
        inp.write_bytes(pickle.dumps(job))
        code = ("import pickle, sys; from bertlab.deploy import _measure; "
                "a = pickle.load(open(sys.argv[1], 'rb')); pickle.dump(_measure(*a), open(sys.argv[2], 'wb'))")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run([sys.executable, "-c", code, str(inp), str(out)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"measuring {job[0].name!r} failed in its process:\n{proc.stderr[-3000:]}")
        return pickle.loads(out.read_bytes())


class Benchmark:
    """Size, latency, throughput and accuracy of every variant, measured in one run.

    ``ids`` are the token ids of the test reports (unpadded, truncated as in training) and
    ``labels`` their class ids. :meth:`run` measures, for each :class:`Variant`, in a fresh
    process (``isolate``) with ``threads`` threads: the batch-1 latency p50 and p95 over the
    first ``n_latency`` reports after ``warmup`` calls (model only: tokenization excluded,
    the same for every variant), the throughput at ``batch_size`` over all reports (which
    also gives the accuracy), and the size on disk. Returns a pandas DataFrame, one row per
    variant, with the ratios to the first variant (the baseline).
    """

    def __init__(self, ids: Sequence[Sequence[int]], labels: Sequence[int], *, threads: int = DEFAULT_THREADS,
                 n_latency: int = 200, warmup: int = 20, batch_size: int = 32, isolate: bool = True):
        if len(ids) != len(labels) or not ids:
            raise ValueError(f"ids and labels must be equally long and not empty, got {len(ids)} and {len(labels)}")
        set_threads(threads)
        self.ids, self.labels = [list(x) for x in ids], [int(y) for y in labels]
        self.threads, self.n_latency, self.warmup, self.batch_size, self.isolate = threads, n_latency, warmup, batch_size, isolate

    def measure(self, variant: Variant) -> dict:
        """One row of the table: ``variant``'s size and what :func:`_measure` returns."""
        job = (variant, self.ids, self.labels, self.threads, self.n_latency, self.warmup, self.batch_size)
        row = _measure_in_subprocess(job) if self.isolate else _measure(*job)
        return {"variant": variant.name, "size_mb": variant.size_mb, **row}

    def run(self, variants: Sequence[Variant], progress: bool = True):
        import pandas as pd
        from tqdm.auto import tqdm

        rows = []
        for v in tqdm(variants, desc="benchmark", unit="variant", disable=not progress):
            rows.append(self.measure(v))
        table = pd.DataFrame(rows).set_index("variant")
        base = table.iloc[0]
        table["speed-up (p50)"] = base["p50_ms"] / table["p50_ms"]
        table["smaller"] = base["size_mb"] / table["size_mb"]
        table["accuracy Δ (points)"] = 100 * (table["accuracy"] - base["accuracy"])
        return table


def save_torch_variant(model: nn.Module, path: str | os.PathLike, name: str, quantize: bool = False) -> Variant:
    """Save ``model`` whole (for the benchmark's child process) and measure its size (of the INT8 copy if ``quantize``)."""
    path = Path(path)
    torch.save(copy.deepcopy(model).cpu().eval(), path)
    return Variant(name, "torch", str(path), quantize, size_mb(quantize_torch(model) if quantize else model))


def onnx_variant(path: str | os.PathLike, name: str) -> Variant:
    return Variant(name, "ort", str(path), size_mb=size_mb(path))


def domain_vocabulary(tokenizer, texts: Sequence[str]) -> set[int]:
    """The token ids that occur in ``texts`` (e.g. the training reports and the domain corpus)."""
    ids = tokenizer(list(texts), truncation=False)["input_ids"]
    return {i for x in ids for i in x}


def course_variants(teacher: nn.Module, student: nn.Module, folder: str | os.PathLike, *, keep_ids=None,
                    tokenizer=None, label_names: Sequence[str] = (), max_length: int = 128,
                    check: bool = True) -> list[Variant]:
    """The variants notebook 09 and ``benchmarks/deploy.py`` compare, saved under ``folder``.

    teacher fp32 and torch INT8; student fp32, torch INT8, ONNX Runtime fp32 and INT8; with
    ``keep_ids`` (and ``tokenizer`` for its special tokens) also the student ORT INT8 with a
    trimmed vocabulary (:class:`bertlab.vocab.TrimmedVocabulary`). The ONNX exports are checked against
    PyTorch (:func:`check_onnx`) unless ``check`` is False.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = model_metadata(label_names, max_length) if label_names else None
    variants = [save_torch_variant(teacher, folder / "teacher.pt", "teacher fp32"),
                save_torch_variant(teacher, folder / "teacher.pt", "teacher torch INT8", quantize=True),
                save_torch_variant(student, folder / "student.pt", "student fp32"),
                save_torch_variant(student, folder / "student.pt", "student torch INT8", quantize=True)]
    fp32 = export_onnx(student, folder / "student.onnx", metadata=meta)
    if check:
        check_onnx(student, fp32)
    variants.append(onnx_variant(fp32, "student ORT fp32"))
    variants.append(onnx_variant(quantize_onnx(fp32, folder / "student.int8.onnx"), "student ORT INT8"))
    if keep_ids is not None:
        if tokenizer is None:
            raise ValueError("keep_ids needs the tokenizer (for [UNK] and the special tokens)")
        trimmed = vocab.TrimmedVocabulary(student, keep_ids, tokenizer.unk_token_id, tokenizer.all_special_ids)
        path = export_onnx(trimmed, folder / "student.trimmed.onnx", metadata=meta)
        if check:
            check_onnx(trimmed, path)
        variants.append(onnx_variant(quantize_onnx(path, folder / "student.trimmed.int8.onnx"),
                                     "student ORT INT8, trimmed vocabulary"))
    return variants


def best_variant(table, baseline: str | None = None, max_accuracy_drop: float = 1.0) -> dict:
    """The deployed variant that best beats the baseline on both latency and size.

    Among the variants whose accuracy is within ``max_accuracy_drop`` points of the
    baseline (the first row unless ``baseline``), the one with the largest
    ``min(p50 speed-up, size reduction)``; when none is accurate enough, the same choice
    over all of them, with ``within_accuracy`` False. Returns its name and its ratios to
    the baseline (``p50_ratio`` = baseline p50 / its p50, ``size_ratio`` likewise,
    ``accuracy_delta_points`` = its accuracy minus the baseline's, in points).
    """
    baseline = baseline or table.index[0]
    base = table.loc[baseline]
    others = table.drop(index=baseline)
    drop = 100 * (base["accuracy"] - others["accuracy"])
    ok = others[drop <= max_accuracy_drop + 1e-9]
    pool = ok if len(ok) else others
    score = pd_min(base["p50_ms"] / pool["p50_ms"], base["size_mb"] / pool["size_mb"])
    pick = score.idxmax()
    row = table.loc[pick]
    return {"variant": pick, "baseline": baseline,
            "p50_ratio": float(base["p50_ms"] / row["p50_ms"]), "p95_ratio": float(base["p95_ms"] / row["p95_ms"]),
            "size_ratio": float(base["size_mb"] / row["size_mb"]),
            "accuracy_delta_points": float(100 * (row["accuracy"] - base["accuracy"])),
            "within_accuracy": bool(len(ok) > 0)}


def pd_min(a, b):
    """Elementwise minimum of two aligned pandas Series."""
    return a.where(a < b, b)


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
    """

    runner: Callable
    tokenizer: object
    label_names: Sequence[str]
    max_length: int = 128
    batch_size: int = 32
    cache_size: int = 1024
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
            order = sorted(range(len(unique)), key=lambda k: len(ids[k]))
            for s in range(0, len(order), self.batch_size):
                chunk = order[s:s + self.batch_size]
                batch = [self._truncate(ids[k]) for k in chunk]
                probs = _softmax(self.runner(*pad_batch(batch, self.tokenizer.pad_token_id or 0)))
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
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def onnx_predictor(path: str | os.PathLike, *, threads: int = DEFAULT_THREADS, tokenizer=None, **kwargs) -> Predictor:
    """A :class:`Predictor` for an ONNX file written by :func:`export_onnx` with ``label_names`` metadata.

    Raises FileNotFoundError (missing file) or ValueError (not a model ORT can load, or
    no label names in it).
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
