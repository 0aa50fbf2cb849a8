"""The deployment benchmark (notebook 09): size, latency, throughput and accuracy of every variant.

- :func:`size_mb`, :func:`latency_ms`: what the benchmark measures (the two functions notebook 09
  has the learner write).
- :class:`Variant`, :func:`course_variants`: the models compared, saved to disk (torch fp32 and
  INT8, ONNX Runtime fp32 and INT8, a trimmed vocabulary), made by :mod:`bertlab.deploy`.
- :class:`Benchmark`: size, batch-1 latency p50/p95, batch-32 throughput and accuracy of
  every variant, measured in one run, as one table (as chapter 8 of *Natural Language
  Processing with Transformers* does); :func:`best_variant` reads the table.

Fair timing: torch and ONNX Runtime get the same number of threads (``threads``, 2 by
default: torch intra-op threads, ORT ``intra_op_num_threads``; one inter-op thread each), and
the benchmark times each variant in its own fresh process, because two thread pools in one
process on a small machine slow each other down.
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from bertlab import args, deploy, vocab

MB = 2 ** 20  # bytes in a MB as torch and the benchmark report it (MiB)


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


# ---------------------------------------------------------------- the benchmark


def load_torch(path: str, quantize: bool = False, threads: int = deploy.DEFAULT_THREADS) -> deploy.TorchRunner:
    """A :class:`TorchRunner` for a model saved whole with ``torch.save`` (quantized dynamically if asked)."""
    deploy.set_threads(threads)
    model = torch.load(path, weights_only=False, map_location="cpu")
    return deploy.TorchRunner(deploy.quantize_torch(model) if quantize else model)


def load_ort(path: str, threads: int = deploy.DEFAULT_THREADS) -> deploy.OrtRunner:
    return deploy.OrtRunner(deploy.ort_session(path, threads=threads))


@dataclass
class Variant:
    """One model to benchmark: how to load it (``kind`` 'torch' or 'ort', a file) and its size on disk."""

    name: str
    kind: str            # "torch": a whole module saved with torch.save; "ort": an ONNX file
    path: str
    quantize: bool = False   # torch only: dynamic INT8 after loading
    size_mb: float = math.nan

    def load(self, threads: int = deploy.DEFAULT_THREADS):
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
    singles = [deploy.pad_batch([x]) for x in ids[:n_latency]]
    lat = latency_ms(lambda b: runner(*b), singles, warmup=warmup)
    chunks = deploy.length_sorted_batches([len(x) for x in ids], batch_size)  # as the Predictor batches
    batches = [deploy.pad_batch([ids[j] for j in chunk]) for chunk in chunks]
    runner(*batches[-1])  # warm-up at batch size (the longest reports)
    start = time.perf_counter()
    sorted_preds = np.concatenate([runner(*b).argmax(-1) for b in batches])
    seconds = time.perf_counter() - start
    preds = np.empty_like(sorted_preds)
    preds[[j for chunk in chunks for j in chunk]] = sorted_preds  # back in the order of ``labels``
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
        code = ("import pickle, sys; from bertlab.benchmark import _measure; "
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
    the same for every variant), the throughput at ``batch_size`` over all reports, in
    batches of similar length as :class:`bertlab.deploy.Predictor` forms them (which also gives
    the accuracy), and the size on disk. Returns a pandas DataFrame, one row per variant, with
    the ratios to the first variant (the baseline).
    """

    def __init__(self, ids: Sequence[Sequence[int]], labels: Sequence[int], *, threads: int = deploy.DEFAULT_THREADS,
                 n_latency: int = 200, warmup: int = 20, batch_size: int = 32, isolate: bool = True):
        if len(ids) != len(labels) or not ids:
            raise ValueError(f"ids and labels must be equally long and not empty, got {len(ids)} and {len(labels)}")
        deploy.set_threads(threads)
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
    return Variant(name, "torch", str(path), quantize, size_mb(deploy.quantize_torch(model) if quantize else model))


def onnx_variant(path: str | os.PathLike, name: str) -> Variant:
    return Variant(name, "ort", str(path), size_mb=size_mb(path))


def course_variants(teacher: nn.Module, student: nn.Module, folder: str | os.PathLike, *, keep_ids=None,
                    tokenizer=None, label_names: Sequence[str] = (), max_length: int = 128,
                    check: bool = True) -> list[Variant]:
    """The variants notebook 09 and ``benchmarks/deploy.py`` compare, saved under ``folder``.

    teacher fp32 and torch INT8; student fp32, torch INT8, ONNX Runtime fp32 and INT8; with
    ``keep_ids`` (and ``tokenizer`` for its special tokens) also the student ORT INT8 with a
    trimmed vocabulary (:class:`bertlab.vocab.TrimmedVocabulary`). The ONNX exports are checked against
    PyTorch (:func:`bertlab.deploy.check_onnx`) unless ``check`` is False.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = deploy.model_metadata(label_names, max_length) if label_names else None
    variants = [save_torch_variant(teacher, folder / "teacher.pt", "teacher fp32"),
                save_torch_variant(teacher, folder / "teacher.pt", "teacher torch INT8", quantize=True),
                save_torch_variant(student, folder / "student.pt", "student fp32"),
                save_torch_variant(student, folder / "student.pt", "student torch INT8", quantize=True)]
    fp32 = deploy.export_onnx(student, folder / "student.onnx", metadata=meta)
    if check:
        deploy.check_onnx(student, fp32)
    variants.append(onnx_variant(fp32, "student ORT fp32"))
    variants.append(onnx_variant(deploy.quantize_onnx(fp32, folder / "student.int8.onnx"), "student ORT INT8"))
    if keep_ids is not None:
        if tokenizer is None:
            raise ValueError("keep_ids needs the tokenizer (for [UNK] and the special tokens)")
        trimmed = vocab.TrimmedVocabulary(student, keep_ids, tokenizer.unk_token_id, tokenizer.all_special_ids)
        path = deploy.export_onnx(trimmed, folder / "student.trimmed.onnx", metadata=meta)
        if check:
            deploy.check_onnx(trimmed, path)
        variants.append(onnx_variant(deploy.quantize_onnx(path, folder / "student.trimmed.int8.onnx"),
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
