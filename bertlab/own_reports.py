"""Your own reports (``bertlab train``): a CSV or JSON-lines file of your fab, read and checked before anything trains.

- :func:`read_reports`: the file read with ``datasets``; :class:`BadReports` names the file,
  the column and the rows of what is wrong (the checks are listed there).
- :func:`split_reports`: near-duplicates dropped (``bertlab.data.near_duplicate_key``), then a
  seeded, stratified train / validation / test split.

:mod:`bertlab.own_model` fine-tunes on them and writes the model, in Hugging Face's formats, with its card.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

#: Fewest reports a class needs: after the split, each of train, validation and test should hold some of it.
MIN_PER_CLASS = 10
#: A label column with more than this share of empty cells is "mostly empty": probably the wrong column.
MAX_MISSING_LABELS = 0.5
#: Rows listed in a message at most (the count is always given).
SHOW_ROWS = 10


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
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its parse errors reach the user as BadReports, once
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


def add_train_arguments(p) -> None:
    """``bertlab train``'s arguments (its subparser in ``bertlab.cli``; here, so that the parser imports no torch)."""
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
