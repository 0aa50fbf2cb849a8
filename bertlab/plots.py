"""Plots the notebooks share: training curves (after a run, or live during pre-training), a confusion
matrix, a learning curve."""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np


def training_curves(history: Sequence[dict], steps: Sequence[dict] | None = None, title: str = ""):
    """Left: the loss of every step (and each epoch's validation loss) with the learning rate.
    Right: the validation accuracy and macro-F1 per epoch. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, (ax, ax_metric) = plt.subplots(1, 2, figsize=(11, 3.6))
    if steps:
        x = [s["step"] for s in steps]
        ax.plot(x, [s["loss"] for s in steps], lw=0.8, alpha=0.8, label="training loss (each step)")
        per_epoch = max(s["step"] for s in steps if s["epoch"] == 1)
        if any("val_loss" in h for h in history):
            ax.plot([h["epoch"] * per_epoch for h in history], [h["val_loss"] for h in history], "o-",
                    label="validation loss (end of epoch)")
        lr = ax.twinx()
        lr.plot(x, [s["lr"] for s in steps], color="grey", ls="--", lw=1)
        lr.set_ylabel("learning rate (dashed)")
        ax.set_xlabel("optimizer step")
    else:
        ax.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], "o-", label="training loss")
        if any("val_loss" in h for h in history):
            ax.plot([h["epoch"] for h in history], [h["val_loss"] for h in history], "o-", label="validation loss")
        ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.legend(loc="upper right", fontsize=8)
    for key, label in (("val_accuracy", "accuracy"), ("val_macro_f1", "macro-F1")):
        if any(key in h for h in history):
            ax_metric.plot([h["epoch"] for h in history], [h[key] for h in history], "o-", label=label)
    ax_metric.set(xlabel="epoch", ylabel="validation score", ylim=(0, 1))
    ax_metric.set_xticks([h["epoch"] for h in history])
    ax_metric.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix(y_true, y_pred, labels: Sequence[str], ax=None, title: str = ""):
    """Seaborn heatmap of the confusion matrix, each row normalised to the share of its true class.

    Cells show the share; the row labels carry each class's count. Returns the axes.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns
    from sklearn.metrics import confusion_matrix as sk_confusion

    counts = sk_confusion(y_true, y_pred, labels=list(range(len(labels))))
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 6))
    sns.heatmap(share, annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=ax,
                xticklabels=labels, yticklabels=[f"{name} ({n})" for name, n in zip(labels, counts.sum(1))])
    ax.set(xlabel="predicted", ylabel="true (count)", title=title or "Confusion matrix (share of each true class)")
    ax.tick_params(axis="x", rotation=45)
    for t in ax.get_xticklabels():
        t.set_horizontalalignment("right")
    return ax


def learning_curve(summary, metric_label: str = "macro-F1", ax=None, title: str = "",
                   points: dict[str, tuple[float, float]] | None = None):
    """Mean ± one standard deviation over seeds against the label budget (log x), one line per model.

    ``summary`` is ``bertlab.baselines.summarize(...)``: index (model, budget), columns mean, std, seeds.
    ``points`` adds single runs as stars: ``{label: (budget, score)}``.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2))
    for model, rows in summary.groupby(level="model", sort=False):
        budgets = rows.index.get_level_values("budget")
        ax.errorbar(budgets, rows["mean"], yerr=rows["std"].fillna(0), marker="o", capsize=3, label=model)
    for label, (x, y) in (points or {}).items():
        ax.plot([x], [y], "*", ms=14, color="black", label=label)
    ax.set_xscale("log")
    budgets = sorted(set(summary.index.get_level_values("budget")) | {x for x, _ in (points or {}).values()})
    ax.set_xticks(budgets)
    ax.set_xticklabels([str(b) for b in budgets])
    ax.minorticks_off()
    ax.set(xlabel="labelled training reports (log scale)", ylabel=f"test {metric_label}",
           title=title or "Learning curve: mean ± 1 std over seeds")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


class LivePlot:
    """A figure of the training curves, redrawn in place in a notebook (a display handle).

    Panels: MLM loss, MLM accuracy and, when ``nsp`` is True, NSP accuracy; dashed lines
    mark ``baseline`` (a dict like :func:`bertlab.pretrain_loop.unigram_baseline`'s). Drawn with matplotlib's
    object API, so it never lands in pyplot's figure list (no duplicate at the end of a cell).
    """

    def __init__(self, baseline: dict | None = None, nsp: bool = True, title: str = ""):
        from matplotlib.figure import Figure

        self.baseline = baseline or {}
        self.panels = [("mlm_loss", "MLM loss"), ("mlm_acc", "MLM accuracy")] + ([("nsp_acc", "NSP accuracy")] if nsp else [])
        self.fig = Figure(figsize=(4.2 * len(self.panels), 3.2), layout="constrained")
        self.axes = self.fig.subplots(1, len(self.panels))
        if title:
            self.fig.suptitle(title)
        self.handle = None

    def _png(self):
        from IPython.display import Image

        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=80)
        return Image(data=buf.getvalue(), format="png")

    def update(self, result) -> None:
        """Redraw from ``result.history`` (``result``: a :class:`bertlab.train.TrainResult`; a ``fit``
        callback): per panel, ``train_<key>`` and ``val_<key>`` against ``step``. Shown in place in a
        notebook. Outside IPython (a plain script, where IPython may not even be installed) the figure
        is only redrawn: ``self.fig`` holds it, and the progress bar reports the progress."""
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            display = get_ipython = None
        for ax, (key, label) in zip(self.axes, self.panels):
            ax.clear()
            for prefix, style, name in (("train_", dict(alpha=0.5), "train"), ("val_", dict(marker="o", ms=3), "held out")):
                points = [r for r in result.history if prefix + key in r]
                if points:
                    ax.plot([r["step"] for r in points], [r[prefix + key] for r in points], color="tab:blue",
                            label=name, **style)
            if key in self.baseline:
                ax.axhline(self.baseline[key], color="tab:red", ls="--",
                           label="chance" if key == "nsp_acc" else "unigram")
            ax.set(title=label, xlabel="step")
            if key != "mlm_loss":
                ax.set_ylim(0, 1)
            ax.legend(loc="best", fontsize=8)
        if display is None or get_ipython() is None:
            return
        if self.handle is None:
            self.handle = display(self._png(), display_id=True)
        else:
            self.handle.update(self._png())
