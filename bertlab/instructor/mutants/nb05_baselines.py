"""Mutants of 05-baselines (see bertlab/instructor/mutants/__init__.py)."""
from bertlab.instructor.mutants import edit

REMAINDERS = 'quota[np.argsort(-(exact - quota), kind="stable")[:left]] += 1'
PICK = "picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]"
AGG = 'return frame.groupby(["model", "budget"])[metric].agg(mean="mean", std="std", seeds="count")'

SUMMARIZE_HEAD = '''def summarize(runs, metric="macro_f1"):
    """Mean, sample std and number of seeds of `metric` per (model, budget)."""
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
    "summarize": {
        # the population standard deviation
        "std with ddof=0": edit((AGG, 'return frame.groupby(["model", "budget"])[metric].agg(mean="mean", std=lambda s: s.std(ddof=0), seeds="count")')),
        # 0 instead of NaN for a single seed
        "std 0 for one seed": edit((AGG, AGG + ".fillna({'std': 0.0})")),
        # macro_f1 typed in: the metric argument is ignored
        "metric ignored": edit((AGG, AGG.replace("[metric]", '["macro_f1"]'))),
        # groups in order of appearance
        "unsorted groups": edit((AGG, AGG.replace('groupby(["model", "budget"])', 'groupby(["model", "budget"], sort=False)'))),
        # (model, budget) as columns, not as the index
        "flat index": edit((AGG, AGG + ".reset_index()")),
        # seeds counted as distinct seed values
        "distinct seeds": SUMMARIZE_HEAD + (
            "    frame = pd.DataFrame(list(runs))\n"
            "    g = frame.groupby(['model', 'budget'])\n"
            "    return pd.DataFrame({'mean': g[metric].mean(), 'std': g[metric].std(), 'seeds': g['seed'].nunique()})\n"),
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
    "summarize": {
        "a loop over the groups": SUMMARIZE_HEAD + (
            "    groups = {}\n"
            "    for r in runs:\n"
            "        groups.setdefault((r['model'], r['budget']), []).append(r[metric])\n"
            "    keys = sorted(groups)\n"
            "    rows = [{'mean': float(np.mean(groups[k])), 'std': float(np.std(groups[k], ddof=1)) if len(groups[k]) > 1 else np.nan,\n"
            "             'seeds': len(groups[k])} for k in keys]\n"
            "    return pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(keys, names=['model', 'budget']))\n"),
    },
}
