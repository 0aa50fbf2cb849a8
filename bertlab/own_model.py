"""Your own model (``bertlab train``): the course's fine-tune on your reports, saved in Hugging Face's formats.

- :func:`train_own_model`: the shipped checkpoint (or ``--model``) fine-tuned with the course's
  one loop, ``bertlab.train.fit``, on notebook 04's recipe (``bertlab.artifacts.FINETUNE_DEFAULTS``),
  on the reports :mod:`bertlab.own_reports` read and split; scored on the test split beside
  notebook 05's TF-IDF baseline with a paired bootstrap (:func:`bootstrap_difference`).
- :func:`save_own_model`: ``save_pretrained`` (config with id2label, safetensors, tokenizer), a
  model card (README.md), a confusion matrix PNG; written atomically.
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
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from bertlab.own_reports import BadReports, Reports, read_reports, split_reports

#: The card's bootstrap: resamples of the test reports, and the interval's level.
N_BOOT, LEVEL = 1000, 0.95


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
    """Macro-F1 over the classes in ``y_true`` or ``y_pred`` (scikit-learn's ``f1_score(average="macro",
    zero_division=0)``), from counts: fast enough to run a thousand times for the bootstrap."""
    y, p = np.asarray(y_true), np.asarray(y_pred)
    classes = np.union1d(y, p)
    tp = np.array([np.sum((y == c) & (p == c)) for c in classes])
    wrong = np.array([np.sum(y == c) + np.sum(p == c) for c in classes]) - 2 * tp  # fp + fn
    return float(np.mean(np.where(tp > 0, 2 * tp / np.maximum(2 * tp + wrong, 1), 0.0)))


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
                    **overrides) -> tuple:
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
    umask = os.umask(0)
    os.umask(umask)
    try:
        model.cpu().save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _confusion_png(tmp / "confusion_matrix.png", *test_predictions, summary["label_names"])
        (tmp / "training_summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        _write_card(tmp, summary, out.name)
        for path in [tmp, *tmp.iterdir()]:  # mkdtemp and safetensors make them private; a model folder is shared
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
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

    from bertlab import env, pretrained

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
    except (BadReports, FileExistsError, ValueError, pretrained.CheckpointNotFoundError) as err:
        print(f"bertlab: {err}\nbertlab: nothing was written.", file=sys.stderr, flush=True)
        return 2
    save_own_model(out, summary, model, tokenizer, test_predictions)
    t, b, d = summary["test"], summary["baseline"], summary["difference"]
    print(f"{out}: test macro-F1 {t['macro_f1']:.3f} (TF-IDF baseline {b['macro_f1']:.3f}; difference "
          f"{d['macro_f1']:+.3f}, {LEVEL:.0%} interval [{d['interval'][0]:+.3f}, {d['interval'][1]:+.3f}]) on "
          f"{summary['data']['test']} test reports; model card: {out / 'README.md'}")
    dropped = ", ".join(f"{n} {why}" for why, n in summary["data"]["dropped"].items() if n)
    if dropped:
        print(f"bertlab: dropped before splitting: {dropped} (rows of {summary['data']['rows']}; see the card)",
              file=sys.stderr)
    return 0


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
