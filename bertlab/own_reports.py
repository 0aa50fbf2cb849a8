"""Your own reports: the course's fine-tune on a CSV or JSON-lines file of your fab (``bertlab train``).

- :func:`read_reports`: the file read with ``datasets``, checked before anything trains:
  :class:`BadReports` names the file, the column and the rows of what is wrong.
- :func:`split_reports`: near-duplicates dropped (``bertlab.data.near_duplicate_key``), then a
  seeded, stratified train / validation / test split.
- :func:`train_own_model`: the shipped checkpoint (or ``--model``) fine-tuned with the course's
  one loop, ``bertlab.train.fit``, on notebook 04's recipe (``bertlab.artifacts.FINETUNE_DEFAULTS``);
  scored on the test split beside notebook 05's TF-IDF baseline with a paired bootstrap; saved
  with Hugging Face's ``save_pretrained`` and a model card (README.md, a confusion matrix PNG).
- :func:`export_folder`: the saved folder to ONNX for ``bertlab predict`` (``bertlab export --from``).

The model is ``transformers``' ``AutoModelForSequenceClassification`` of the checkpoint (for
BERT: ``BertForSequenceClassification``), so ``transformers.pipeline("text-classification",
model=folder)`` loads it without custom code. Its head differs from notebook 04's
``bertlab.train.SequenceClassifier`` in one place: the [CLS] vector passes through the
checkpoint's pretrained pooler (dense + tanh) before the linear layer, because that is the
head the standard class has. Everything else (data, loop, recipe) is the course's.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

#: Fewest reports a class needs: after the split, each of train, validation and test should hold some of it.
MIN_PER_CLASS = 10
#: A label column with more than this share of empty cells is "mostly empty": probably the wrong column.
MAX_MISSING_LABELS = 0.5
#: Rows listed in a message at most (the count is always given).
SHOW_ROWS = 10
#: The card's bootstrap: resamples of the test reports, and the interval's level.
N_BOOT, LEVEL = 1000, 0.95


class BadReports(ValueError):
    """The reports file cannot be trained on; the message names the file, the column and the rows."""


@dataclass
class Reports:
    """The usable rows of a reports file: texts, labels (names), and what was dropped and why."""

    path: Path
    text_column: str
    label_column: str
    texts: list[str]
    labels: list[str]
    rows: list[int]                       # each kept report's row in the file (1 = first data row)
    total_rows: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows dropped

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))


def _rows(rows: Sequence[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:SHOW_ROWS])
    return f"row {shown}" if len(rows) == 1 else f"rows {shown}" + (f" and {len(rows) - SHOW_ROWS} more"
                                                                  if len(rows) > SHOW_ROWS else "")


def _file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "json"
    raise BadReports(f"{path}: unknown file type {suffix or '(none)'}; give a .csv file (with a header row) or a "
                     ".jsonl file (one JSON object per line)")


def _load_table(path: Path, fmt: str) -> tuple[list[str], dict[str, list]]:
    """The file's columns and their values, read with ``datasets`` (its cache in a temporary folder, then removed)."""
    import csv

    import datasets
    import pyarrow

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    kwargs = {}
    if fmt == "csv":  # every cell as written: text, never a number or NaN ("007" stays "007", "" stays "")
        header = next(csv.reader([path.read_text(encoding="utf-8").split("\n", 1)[0]]), [])
        kwargs = {"keep_default_na": False,
                  "features": datasets.Features({name: datasets.Value("string") for name in header})}
    with tempfile.TemporaryDirectory(prefix="bertlab-reports-") as cache:
        try:
            table = datasets.load_dataset(fmt, data_files=str(path), split="train", cache_dir=cache, **kwargs)
        except (datasets.exceptions.DatasetGenerationError, pyarrow.ArrowException, ValueError) as err:
            cause = err.__cause__ or err
            raise BadReports(f"{path}: cannot be read as {'CSV' if fmt == 'csv' else 'JSON lines'}: "
                             f"{str(cause).splitlines()[0][:300]}") from err
        return list(table.column_names), table.to_dict()


def _cell(value) -> str | None:
    """A cell as text; None when it is empty (missing, NaN or blank)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = value if isinstance(value, str) else (json.dumps(value) if isinstance(value, (list, dict)) else str(value))
    return text if text.strip() else None


def read_reports(path: str | os.PathLike, text_column: str = "text", label_column: str = "failure_type", *,
                 min_per_class: int = MIN_PER_CLASS) -> Reports:
    """The reports and labels of a CSV (header row) or JSON-lines file, checked.

    Raises :class:`BadReports` for: a missing or empty file, bytes that are not UTF-8 (the
    line), a missing column (the columns there are), empty texts (the rows), a label column
    more than half empty, a single class, a class with fewer than ``min_per_class`` reports.
    Rows with an empty label, when they are a minority, are dropped and counted in ``dropped``.
    Rows are counted from 1 at the first data row (for a CSV, the line after the header).
    """
    from bertlab import args

    args.integer("min_per_class", min_per_class, low=3)  # one report each for train, validation and test
    path = Path(path)
    if not path.is_file():
        raise BadReports(f"{path}: no such file")
    fmt = _file_format(path)
    data = path.read_bytes()
    if not data.strip():
        raise BadReports(f"{path}: the file is empty; it needs a header row and one report per row" if fmt == "csv"
                         else f"{path}: the file is empty; it needs one JSON object per line")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        col = err.start - (data.rfind(b"\n", 0, err.start) + 1)
        raise BadReports(f"{path} line {line}: byte 0x{data[err.start]:02x} at byte {col + 1} of the line is not "
                         "UTF-8; re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    header, _, body = data.decode("utf-8").partition("\n")
    if fmt == "csv" and not body.strip():
        raise BadReports(f"{path}: no reports: the file has a header ({header.strip()}) but no rows")
    columns, table = _load_table(path, fmt)
    n = len(next(iter(table.values()), []))
    for name, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
        if name not in columns:
            raise BadReports(f"{path}: no column {name!r} ({flag}); the columns are: {', '.join(map(repr, columns))}")
    if text_column == label_column:
        raise BadReports(f"{path}: --text-column and --label-column are both {text_column!r}; give two columns")
    texts = [_cell(v) for v in table[text_column]]
    labels = [_cell(v) for v in table[label_column]]
    empty_text = [i + 1 for i, t in enumerate(texts) if t is None]
    if empty_text:
        raise BadReports(f"{path}: column {text_column!r} is empty in {len(empty_text)} of {n} rows "
                         f"({_rows(empty_text)}); fill in the reports or remove those rows")
    no_label = [i + 1 for i, y in enumerate(labels) if y is None]
    if len(no_label) > MAX_MISSING_LABELS * n:
        raise BadReports(f"{path}: column {label_column!r} is empty in {len(no_label)} of {n} rows "
                         f"({_rows(no_label)}): is it the label column? (--label-column)")
    keep = [i for i, y in enumerate(labels) if y is not None]
    reports = Reports(path, text_column, label_column, [texts[i].strip() for i in keep], [labels[i].strip() for i in keep],
                      [i + 1 for i in keep], n, {"no label": len(no_label)} if no_label else {})
    counts = Counter(reports.labels)
    if len(counts) < 2:
        raise BadReports(f"{path}: column {label_column!r} has one class only ({next(iter(counts))!r} in all "
                         f"{len(reports.labels)} labelled rows); a classifier needs at least two")
    rare = sorted((c, k) for k, c in counts.items() if c < min_per_class)
    if rare:
        listed = ", ".join(f"{k!r} ({c}: {_rows([r for r, y in zip(reports.rows, reports.labels) if y == k])})"
                           for c, k in rare)
        raise BadReports(f"{path}: column {label_column!r} has {len(rare)} class(es) with fewer than {min_per_class} "
                         f"reports: {listed}. Label more reports, merge or remove those classes, or lower "
                         "--min-per-class (each class needs reports in train, validation and test)")
    return reports


@dataclass
class Split:
    """Indices into a :class:`Reports` for each split, and how many near-duplicates were dropped first."""

    train: list[int]
    validation: list[int]
    test: list[int]
    near_duplicates: int


def split_reports(reports: Reports, *, validation_size: float = 0.1, test_size: float = 0.2, seed: int = 0) -> Split:
    """Drop near-duplicates (the first report of each ``near_duplicate_key`` stays), then split, stratified by label.

    With near-duplicates gone, no report in validation or test is a copy of a training one up to
    case, digits, punctuation and spacing. Deterministic for ``seed``.
    Raises :class:`BadReports` when a class is too small once the duplicates are gone.
    """
    from sklearn.model_selection import train_test_split

    from bertlab import args
    from bertlab.data import near_duplicate_key

    args.number("validation_size", validation_size, 0, 1, low_open=True, high_open=True)
    args.number("test_size", test_size, 0, 1, low_open=True, high_open=True)
    if validation_size + test_size >= 0.9:
        raise ValueError(f"validation_size + test_size must leave at least 10% to train, got "
                         f"{validation_size} + {test_size}")
    seen, unique = set(), []
    for i, text in enumerate(reports.texts):
        key = near_duplicate_key(text) or text
        if key not in seen:
            seen.add(key)
            unique.append(i)
    labels = [reports.labels[i] for i in unique]
    counts = Counter(labels)
    small = {k: c for k, c in counts.items() if c < 3}
    if small:
        raise BadReports(f"{reports.path}: after dropping {len(reports.texts) - len(unique)} near-duplicate reports, "
                         f"class(es) {small} have fewer than 3 reports (one each for train, validation, test)")
    n_test = max(round(test_size * len(unique)), len(counts))  # stratification needs a report of each class
    n_val = max(round(validation_size * len(unique)), len(counts))
    try:
        rest, test = train_test_split(unique, test_size=n_test, stratify=labels, random_state=seed)
        train, val = train_test_split(rest, test_size=n_val, stratify=[reports.labels[i] for i in rest],
                                      random_state=seed)
    except ValueError as err:
        raise BadReports(f"{reports.path}: cannot split {len(unique)} reports of {len(counts)} classes into "
                         f"train/validation/test with each class in each: {err}") from err
    return Split(sorted(train), sorted(val), sorted(test), len(reports.texts) - len(unique))


# ---------------------------------------------------------------- scoring


def bootstrap_difference(metric, y_true, pred_a, pred_b, n_boot: int = N_BOOT, level: float = LEVEL,
                         seed: int = 0) -> tuple[float, float, float]:
    """``metric(y, a) - metric(y, b)`` on the test reports, and its percentile interval at ``level``
    over ``n_boot`` resamples of the reports (the same resample for both models: paired).

    The method notebook 05 has the learner implement (Koehn 2004); written here again because the
    learner's graded version stays in the notebook.
    """
    y, a, b = (np.asarray(v) for v in (y_true, pred_a, pred_b))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        diffs.append(metric(y[i], a[i]) - metric(y[i], b[i]))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(diffs, [tail, 100 - tail])
    return float(metric(y, a) - metric(y, b)), float(lo), float(hi)


def macro_f1(y_true, y_pred) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


# ---------------------------------------------------------------- the model as bertlab serves it


class LogitsOf(nn.Module):
    """A ``transformers`` sequence classifier as ``forward(input_ids, attention_mask) -> logits`` (B, C):
    the signature ``bertlab.deploy`` exports and runs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.encoder = model.base_model  # where bertlab.deploy reads the vocabulary size and positions

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def new_classifier(label_names: Sequence[str], model_name: str | None = None, seed: int = 0):
    """The checkpoint's encoder under ``AutoModelForSequenceClassification``'s head for ``label_names``
    (the head drawn with ``seed``; its config carries id2label and label2id)."""
    from transformers import AutoModelForSequenceClassification

    from bertlab import pretrained

    encoder = pretrained.load_encoder(model_name)
    config = encoder.config.__class__.from_dict({**encoder.config.to_dict(), "num_labels": len(label_names),
                                                 "id2label": dict(enumerate(label_names)),
                                                 "label2id": {n: i for i, n in enumerate(label_names)}})
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    missing, unexpected = model.base_model.load_state_dict(encoder.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise ValueError(f"the checkpoint {pretrained.model_name_or_dir(model_name)} does not fit "
                         f"{type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


# ---------------------------------------------------------------- training and the card


def _write_card(out: Path, summary: dict, name: str) -> None:
    s, d, t, b = summary, summary["data"], summary["test"], summary["baseline"]
    names = s["label_names"]
    balance = "\n".join(f"| {k} | {d['classes'][k]} | {d['classes'][k] / d['labelled']:.1%} | "
                        f"{t['per_class_f1'][k]:.3f} | {b['per_class_f1'][k]:.3f} |" for k in names)
    dropped = ", ".join(f"{v} {k}" for k, v in d["dropped"].items() if v) or "none"
    lo, hi = s["difference"]["interval"]
    verdict = ("the fine-tuned model is better: the interval lies above 0" if lo > 0 else
               "the baseline is better: the interval lies below 0" if hi < 0 else
               "no clear winner: the interval contains 0")
    front = "\n".join(["---", "library_name: transformers", "pipeline_tag: text-classification",
                       f"base_model: {s['base_model']}", "tags:", "- bertlab", "- failure-reports", "---"])
    text = f"""{front}

# {name}: failure-report classifier

Fine-tuned by `bertlab train` from `{s['base_model']}` on `{d['file']}` (column `{d['text_column']}` ->
`{d['label_column']}`), with the bertlab course's training loop (`bertlab.train.fit`: AdamW, warm-up and
linear decay, clipping, early stopping on validation macro-F1) and notebook 04's recipe.

## Data
- {d['rows']} rows in the file; dropped: {dropped}; {d['used']} reports used.
- Split (stratified, seed {s['seed']}): {d['train']} train, {d['validation']} validation, {d['test']} test.
  Near-duplicates (equal up to case, digits, punctuation and spacing) were dropped before splitting,
  so no test report is a copy of a training one.

| class | reports | share | F1 (this model) | F1 (TF-IDF baseline) |
|---|---|---|---|---|
{balance}

## Results on the {d['test']} test reports
| model | macro-F1 | accuracy |
|---|---|---|
| this model | {t['macro_f1']:.3f} | {t['accuracy']:.3f} |
| TF-IDF + logistic regression (`bertlab.baselines.tfidf_logreg`) | {b['macro_f1']:.3f} | {b['accuracy']:.3f} |

Difference in macro-F1 (this model - baseline): {s['difference']['macro_f1']:+.3f}, {LEVEL:.0%} paired bootstrap
interval [{lo:+.3f}, {hi:+.3f}] ({N_BOOT} resamples of the test reports): {verdict}.
A test split this small gives wide intervals; label more reports to narrow them.

![confusion matrix](confusion_matrix.png)

## Training
{s['train']['epochs_run']} validation(s), best at epoch {s['train']['best_epoch']} (validation macro-F1
{s['train']['best_score']:.3f}); {s['train']['seconds']:.0f} s of training on {s['train']['device']}.
Settings: {json.dumps(s['config'])}.

## Use
```python
from transformers import pipeline
clf = pipeline("text-classification", model="{name}")  # the folder
clf(["a failure report ..."], truncation=True)  # the model was trained on the first {s['max_length']} tokens
```
or, from the command line: `bertlab export --from {name}`, then `bertlab predict reports.txt --model {name}`.

## Limits
Scores hold for reports like the test split: the same fab, period and writing style. A new fab,
product or report template shifts the data; re-check on a labelled sample before trusting it there.
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def _confusion_png(path: Path, y_true, y_pred, names) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bertlab import plots

    ax = plots.confusion_matrix(y_true, y_pred, names, title="Test split: share of each true class")
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=120)
    plt.close(ax.figure)


def train_own_model(reports: Reports, *, model_name: str | None = None,
                    validation_size: float = 0.1, test_size: float = 0.2, seed: int = 0, progress: bool = True,
                    **overrides) -> dict:
    """Fine-tune on ``reports`` and score on its test split beside TF-IDF: ``(summary, model, tokenizer,
    (y_test, predictions))``, what :func:`save_own_model` writes.

    ``overrides`` change notebook 04's recipe (:data:`bertlab.artifacts.FINETUNE_DEFAULTS`:
    ``epochs``, ``lr``, ``batch_size``, ``max_length``...) and the loop's ``max_steps`` (None: the recipe's).
    Writes nothing.
    """
    from sklearn.metrics import accuracy_score, f1_score

    from bertlab import artifacts, baselines, pretrained, train

    recipe = {k: v for k, v in artifacts.FINETUNE_DEFAULTS.items() if not k.startswith("n_") and k != "data_seed"}
    unknown = sorted(set(overrides) - set(recipe) - {"max_steps"})
    if unknown:
        raise TypeError(f"unknown settings {unknown}; known: {sorted(recipe) + ['max_steps']}")
    cfg = {**recipe, "seed": seed, **{k: v for k, v in overrides.items() if v is not None}}
    split = split_reports(reports, validation_size=validation_size, test_size=test_size, seed=seed)
    names = reports.classes
    ids = {n: i for i, n in enumerate(names)}
    y = [ids[k] for k in reports.labels]
    tokenizer = pretrained.load_tokenizer(model_name)
    tokenizer.model_max_length = cfg["max_length"]  # what pipeline(..., truncation=True) then keeps, as bertlab does

    def encode(index):
        return train.encode(tokenizer, [reports.texts[i] for i in index], [y[i] for i in index],
                            max_length=cfg["max_length"], num_labels=len(names))

    data = {k: encode(getattr(split, k)) for k in ("train", "validation", "test")}
    model = new_classifier(names, model_name, seed=cfg["seed"])
    config = artifacts.train_config(cfg, used_embedding_rows_only=True)
    result = train.fit(model, data["train"], data["validation"], config, progress=progress)
    logits, _ = train.collect_logits(model, data["test"], batch_size=config.eval_batch_size)
    y_test = np.array([y[i] for i in split.test])
    pred = logits.argmax(-1).cpu().numpy()
    tfidf = baselines.tfidf_logreg(seed=cfg["seed"]).fit([reports.texts[i] for i in split.train],
                                                         [y[i] for i in split.train])
    pred_tfidf = tfidf.predict([reports.texts[i] for i in split.test])
    diff, lo, hi = bootstrap_difference(macro_f1, y_test, pred, pred_tfidf, seed=cfg["seed"])

    def scores(p):
        per = f1_score(y_test, p, labels=list(range(len(names))), average=None, zero_division=0)
        return {"macro_f1": macro_f1(y_test, p), "accuracy": float(accuracy_score(y_test, p)),
                "per_class_f1": {n: float(f) for n, f in zip(names, per)}}

    counts = Counter(reports.labels)
    summary = {
        "base_model": artifacts.model_key(model_name), "label_names": names, "max_length": cfg["max_length"],
        "seed": cfg["seed"], "config": {k: cfg[k] for k in sorted(cfg)},
        "data": {"file": reports.path.name, "text_column": reports.text_column, "label_column": reports.label_column,
                 "rows": reports.total_rows,
                 "dropped": {**reports.dropped, "near-duplicate": split.near_duplicates},
                 "used": len(split.train) + len(split.validation) + len(split.test),
                 "labelled": len(reports.labels), "classes": {n: counts[n] for n in names},
                 "train": len(split.train), "validation": len(split.validation), "test": len(split.test),
                 "test_rows": [reports.rows[i] for i in split.test]},
        "test": scores(pred), "baseline": scores(pred_tfidf),
        "difference": {"macro_f1": diff, "interval": [lo, hi], "level": LEVEL, "n_boot": N_BOOT},
        "train": {"epochs_run": len(result.history), "best_epoch": result.best_epoch, "best_score": result.best_score,
                  "stopped_early": result.stopped_early, "seconds": result.seconds,
                  "device": str(next(model.parameters()).device), "history": result.history},
    }
    return summary, model, tokenizer, (y_test, pred)


def save_own_model(out: str | os.PathLike, summary: dict, model, tokenizer, test_predictions) -> Path:
    """Write ``model`` (``save_pretrained``: config with id2label, safetensors), ``tokenizer``, the card
    (README.md), confusion_matrix.png and training_summary.json to ``out``, atomically (a temporary folder
    beside it, renamed)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        model.cpu().save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _confusion_png(tmp / "confusion_matrix.png", *test_predictions, summary["label_names"])
        (tmp / "training_summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        _write_card(tmp, summary, out.name)
        if out.exists():
            out.rmdir()  # empty (checked before training)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def train_command(args) -> int:
    """``bertlab train``: 0 when the model and card are written, 2 when nothing could be (the reason on stderr)."""
    import sys

    from bertlab import env

    env.quiet()
    try:
        reports = read_reports(args.input, args.text_column, args.label_column, min_per_class=args.min_per_class)
        out = Path(args.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise FileExistsError(f"{out} exists and is not empty: give a new --out folder")
        summary, model, tokenizer, test_predictions = train_own_model(
            reports, model_name=args.model, validation_size=args.validation_size, test_size=args.test_size,
            seed=args.seed, progress=not args.quiet, epochs=args.epochs, max_steps=args.max_steps,
            batch_size=args.batch_size, max_length=args.max_length)
    except (BadReports, FileExistsError, ValueError) as err:
        print(f"bertlab: {err}\nbertlab: nothing was written.", file=sys.stderr, flush=True)
        return 2
    save_own_model(out, summary, model, tokenizer, test_predictions)
    t, b, d = summary["test"], summary["baseline"], summary["difference"]
    print(f"{out}: test macro-F1 {t['macro_f1']:.3f} (TF-IDF baseline {b['macro_f1']:.3f}; difference "
          f"{d['macro_f1']:+.3f}, {LEVEL:.0%} interval [{d['interval'][0]:+.3f}, {d['interval'][1]:+.3f}]) on "
          f"{summary['data']['test']} test reports; model card: {out / 'README.md'}")
    return 0


def add_train_arguments(p) -> None:
    """``bertlab train``'s arguments (its subparser in ``bertlab.cli``)."""
    p.add_argument("input", type=Path, help="a .csv file (header row) or a .jsonl file (one JSON object per line)")
    p.add_argument("--text-column", required=True, help="the column holding the report's text")
    p.add_argument("--label-column", required=True, help="the column holding its class (e.g. failure_type)")
    p.add_argument("--out", required=True, type=Path, help="a new folder for the model, its tokenizer and its card")
    p.add_argument("--model", default=None, help="checkpoint to fine-tune: a folder or hub id (default: $BERTLAB_MODEL, "
                                                 "else the shipped all-MiniLM-L6-v2)")
    p.add_argument("--min-per-class", type=int, default=MIN_PER_CLASS,
                   help=f"stop when a class has fewer reports than this (default {MIN_PER_CLASS}, at least 3)")
    p.add_argument("--validation-size", type=float, default=0.1, help="share of the reports for validation (0.1)")
    p.add_argument("--test-size", type=float, default=0.2, help="share of the reports for the test split (0.2)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: notebook 04's recipe, 2)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (default: the epochs decide)")
    p.add_argument("--batch-size", type=int, default=None, help="reports per step (default: the recipe's, 16)")
    p.add_argument("--max-length", type=int, default=None, help="tokens read per report (default: the recipe's, 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the head and the batches (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# ---------------------------------------------------------------- export


def export_folder(folder: str | os.PathLike, *, int8: bool = True) -> Path:
    """``folder/model.onnx``: the model saved by ``bertlab train`` for ``bertlab predict`` (label names and
    max_length in its metadata), checked against PyTorch before quantizing (INT8 unless ``int8`` is False)."""
    from transformers import AutoModelForSequenceClassification

    from bertlab import deploy

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: give a folder written by 'bertlab train'")
    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    summary = folder / "training_summary.json"
    max_length = json.loads(summary.read_text())["max_length"] if summary.is_file() else 128
    meta = deploy.model_metadata(names, max_length)
    target = folder / "model.onnx"
    with tempfile.TemporaryDirectory(dir=folder) as d:
        fp32 = deploy.export_onnx(LogitsOf(model), Path(d) / "model.onnx", metadata=meta)
        deploy.check_onnx(LogitsOf(model), fp32)
        if int8:
            deploy.quantize_onnx(fp32, target)
        else:
            os.replace(fp32, target)
    return target
