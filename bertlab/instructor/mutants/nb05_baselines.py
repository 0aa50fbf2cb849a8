"""Mutants of 05-baselines (see bertlab/instructor/mutants/__init__.py)."""
from bertlab.instructor.mutants import edit

REMAINDERS = 'quota[np.argsort(-(exact - quota), kind="stable")[:left]] += 1'
PICK = "picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]"
DRAW = "idx = rng.integers(0, n, size=n)  # n reports drawn with replacement; both models scored on them"
DIFF = "diffs[k] = metric(y_true[idx], pred_a[idx]) - metric(y_true[idx], pred_b[idx])"
QUANTILES = "low, high = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])"
WHOLE = "return float(metric(y_true, pred_a) - metric(y_true, pred_b)), float(low), float(high)"
BOOTSTRAP_HEAD = '''def paired_bootstrap(metric, y_true, pred_a, pred_b, n_boot=1000, level=0.95, seed=0):
    """metric(a) - metric(b) on the whole test set, and its `level` interval from `n_boot` paired resamples."""
'''

MUTANTS = {
    "stratified_budget": {
        # rounded shares: the total can miss the budget
        "rounded shares": edit(("quota = np.floor(exact).astype(int)", "quota = np.round(exact).astype(int)"),
                               (REMAINDERS, "")),
        # ascending sort reversed: ties of remainders go to the larger class id
        "ties to the larger id": edit((REMAINDERS, 'quota[np.argsort(exact - quota, kind="stable")[::-1][:left]] += 1')),
        # the first reports of each class, no random draw
        "first reports in order": edit((PICK, "picked = [np.flatnonzero(labels == c)[:q] for c, q in zip(classes, quota)]")),
        # the indices in class order, not sorted
        "not sorted": edit(("return sorted(int(i) for i in np.concatenate(picked))", "return [int(i) for i in np.concatenate(picked)]")),
        # the slots left over go to the largest classes, not the largest remainders
        "left-over slots to the largest classes": edit((REMAINDERS, 'quota[np.argsort(-counts, kind="stable")[:left]] += 1')),
        # budget == len(labels) refused
        "budget check off by one": edit(("if not 1 <= budget <= n:", "if not 1 <= budget < n:")),
        # drawn with replacement: the same report twice
        "with replacement": edit((PICK, "picked = [rng.choice(np.flatnonzero(labels == c), q) for c, q in zip(classes, quota)]")),
    },
    "paired_bootstrap": {
        # each model scored on its own draw: the interval counts each report's luck twice
        "unpaired": edit((DIFF, "other = rng.integers(0, n, size=n)\n"
                                "        diffs[k] = metric(y_true[idx], pred_a[idx]) - metric(y_true[other], pred_b[other])")),
        # a permutation: every draw is the test set itself, the interval has no width
        "without replacement": edit((DRAW, "idx = rng.permutation(n)")),
        # the 90% percentiles whatever the level
        "percentiles 5 and 95": edit((QUANTILES, "low, high = np.quantile(diffs, [0.05, 0.95])")),
        # 95% typed in: level ignored
        "level ignored": edit((QUANTILES, "low, high = np.quantile(diffs, [0.025, 0.975])")),
        # the mean of the resampled differences instead of the difference on the whole test set
        "mean of the draws": edit((WHOLE, "return float(diffs.mean()), float(low), float(high)")),
        # the labels left in order: each prediction compared with another report's label
        "labels not resampled": edit((DIFF, "diffs[k] = metric(y_true, pred_a[idx]) - metric(y_true, pred_b[idx])")),
        # a fresh generator: the same seed gives another interval
        "seed ignored": edit(("rng = np.random.default_rng(seed)", "rng = np.random.default_rng()")),
        # the high end of the draw taken as inclusive: the last report is never drawn
        "never draws the last report": edit((DRAW, "idx = rng.integers(0, n - 1, size=n)")),
        # b - a
        "sign reversed": edit((DIFF, "diffs[k] = metric(y_true[idx], pred_b[idx]) - metric(y_true[idx], pred_a[idx])"),
                              (WHOLE, "return float(metric(y_true, pred_b) - metric(y_true, pred_a)), float(low), float(high)")),
    },
}

ALTERNATIVES = {
    "stratified_budget": {
        "one generator per class, remainders by sorted pairs": edit(
            (REMAINDERS, "for _, j in sorted((-(e - q), j) for j, (e, q) in enumerate(zip(exact, quota)))[:left]:\n"
                         "        quota[j] += 1"),
            (PICK, "picked = [np.random.default_rng([seed, int(j)]).choice(np.flatnonzero(labels == c), q, replace=False)\n"
                   "              for j, (c, q) in enumerate(zip(classes, quota))]")),
    },
    "paired_bootstrap": {
        "all draws at once, percentiles in per cent": BOOTSTRAP_HEAD + (
            "    y, a, b = (np.asarray(v) for v in (y_true, pred_a, pred_b))\n"
            "    draws = np.random.default_rng(seed).choice(len(y), size=(n_boot, len(y)), replace=True)\n"
            "    deltas = [metric(y[i], a[i]) - metric(y[i], b[i]) for i in draws]\n"
            "    tail = 100 * (1 - level) / 2\n"
            "    low, high = np.percentile(deltas, [tail, 100 - tail])\n"
            "    return float(metric(y, a) - metric(y, b)), float(low), float(high)\n"),
    },
}
