"""Measure the synthetic fab and write its data card (docs/data-card.md).

Run: ``python benchmarks/data_card.py`` (about a minute on 2 cores). Prints
the card, writes it to docs/data-card.md, and prints one JSON object with the
key figures as the last line.

Every figure is measured here on ``make_splits(fab)`` with the default sizes
(3000 / 500 / 1000) and seed 0:
- label distribution per fab and task (training split),
- report length in WordPiece tokens of the default checkpoint (test split),
- the most predictive single tokens: P(label | token in report), tokens seen
  in at least 2% of the training reports,
- the noise ceiling: how often the annotator's label equals the clean one,
- duplicates across splits (exact text, near-duplicate key, nearest TF-IDF
  cosine of each test report to the training split),
- entity spans per report by type and role (test split),
- generation speed,
- TF-IDF + logistic regression trained on fab A with 100, 500 and all
  training labels, tested on fab A (in-fab) and fabs B-E (cross-fab).
"""
from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bertlab.data import (  # noqa: E402
    ENTITY_ROLES,
    FABS,
    HELDOUT_RATE,
    LABEL_NOISE_RATE,
    LABELS,
    domain_corpus,
    generate_reports,
    make_splits,
    near_duplicate_key,
)
from bertlab.data.fabs import FAB_STYLES  # noqa: E402
from bertlab.pretrained import load_tokenizer  # noqa: E402

TASKS = tuple(LABELS)
BUDGETS = (100, 500)     # small label budgets, averaged over SUBSETS random draws
SUBSETS = 3
MIN_SUPPORT = 0.02       # a predictive token must occur in 2% of training reports


def bow(train, task):
    """TF-IDF (word 1-2 grams) + logistic regression: the course's baseline."""
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    X = vec.fit_transform([r.text for r in train])
    # One BLAS/OpenMP thread: on a busy 2-core machine more threads make lbfgs
    # ~20x slower (they spin waiting for each other), not faster.
    with threadpool_limits(1):
        clf = LogisticRegression(C=10.0, max_iter=3000).fit(X, [getattr(r, task) for r in train])
    return vec, clf


def accuracy(model, reports, task):
    vec, clf = model
    pred = clf.predict(vec.transform([r.text for r in reports]))
    return float(np.mean(pred == np.array([getattr(r, task) for r in reports])))


def predictive_tokens(token_sets, labels, k=3):
    """The k tokens with the highest P(label | token present), with that label and support."""
    count, joint = collections.Counter(), collections.defaultdict(collections.Counter)
    for toks, y in zip(token_sets, labels):
        for t in toks:
            count[t] += 1
            joint[t][y] += 1
    floor = MIN_SUPPORT * len(labels)
    rows = []
    for t, n in count.items():
        if n >= floor:
            y, m = joint[t].most_common(1)[0]
            rows.append((m / n, n, t, y))
    rows.sort(reverse=True)
    return [{"token": t, "label": y, "precision": round(p, 3), "support": n} for p, n, t, y in rows[:k]]


def pct(x):
    return f"{100 * x:.1f}%"


def main():
    t_start = time.perf_counter()
    tok = load_tokenizer()

    n_speed = 100_000
    t, cpu = time.perf_counter(), time.process_time()
    generate_reports(n_speed, "A")
    gen_s, gen_cpu = time.perf_counter() - t, time.process_time() - cpu

    t = time.perf_counter()
    splits = {fab: make_splits(fab) for fab in FABS}
    splits_s = time.perf_counter() - t

    card = {"label_noise_rate": LABEL_NOISE_RATE, "heldout_rate": HELDOUT_RATE,
            "generation": {"reports": n_speed, "seconds": round(gen_s, 2), "cpu_seconds": round(gen_cpu, 2),
                           "reports_per_s": round(n_speed / gen_s), "make_splits_5_fabs_s": round(splits_s, 2)},
            "fabs": {}}

    for fab, s in splits.items():
        f = card["fabs"][fab] = {}
        f["sizes"] = {"train": len(s.train), "validation": len(s.validation), "test": len(s.test)}
        f["labels"] = {task: {lab: round(c / len(s.train), 3) for lab, c in
                              collections.Counter(getattr(r, task) for r in s.train).most_common()}
                       for task in TASKS}
        lengths = np.array([len(ids) for ids in tok([r.text for r in s.test])["input_ids"]])
        f["tokens"] = {"mean": round(float(lengths.mean()), 1), "p5": int(np.percentile(lengths, 5)),
                       "median": int(np.median(lengths)), "p95": int(np.percentile(lengths, 95)),
                       "max": int(lengths.max()), "over_128": round(float((lengths > 128).mean()), 3)}
        token_sets = [set(tok.tokenize(r.text)) for r in s.train]
        f["predictive_tokens"] = {task: predictive_tokens(token_sets, [getattr(r, task) for r in s.train])
                                  for task in TASKS}
        f["noise_ceiling"] = {task: round(float(np.mean([getattr(r, task) == getattr(r, "clean_" + task)
                                                         for r in s.test])), 3) for task in TASKS}
        keys = {name: {near_duplicate_key(r.text) for r in part} for name, part in s.as_dict().items()}
        texts = {name: {r.text for r in part} for name, part in s.as_dict().items()}
        vec = TfidfVectorizer().fit([r.text for r in s.train])
        nearest = (vec.transform([r.text for r in s.test]) @ vec.transform([r.text for r in s.train]).T).max(axis=1)
        f["cross_split_duplicates"] = {
            "exact": len(texts["train"] & texts["test"]) + len(texts["train"] & texts["validation"])
            + len(texts["validation"] & texts["test"]),
            "near": len(keys["train"] & keys["test"]) + len(keys["train"] & keys["validation"])
            + len(keys["validation"] & keys["test"]),
            "max_test_train_cosine": round(float(nearest.max()), 3),
            "mean_test_train_cosine": round(float(nearest.mean()), 3)}
        roles = collections.Counter((e.label, e.role) for r in s.test for e in r.entities)
        f["entities_per_report"] = {f"{t}.{role}" if role else t: round(c / len(s.test), 2)
                                    for (t, role), c in sorted(roles.items())}
        f["complexity"] = {
            "several_phenomena": round(float(np.mean([len(r.phenomena) > 1 for r in s.test])), 3),
            "ruled_out_phenomenon": round(float(np.mean([len(r.ruled_out) > 0 for r in s.test])), 3),
            "heldout_paraphrase": round(float(np.mean([r.heldout for r in s.test])), 3)}

    # Bag-of-words baseline: learning curve on fab A, tested in-fab and cross-fab.
    rng = np.random.default_rng(0)
    bow_card = {}
    for task in TASKS:
        row = bow_card[task] = {}
        train = splits["A"].train
        for n in (*BUDGETS, len(train)):
            draws = [train] if n == len(train) else [
                [train[i] for i in rng.choice(len(train), n, replace=False)] for _ in range(SUBSETS)]
            acc = collections.defaultdict(list)
            for sub in draws:
                model = bow(sub, task)
                for fab in FABS:
                    acc[fab].append(accuracy(model, splits[fab].test, task))
            key = "all" if n == len(train) else str(n)
            cross = float(np.mean([np.mean(acc[f]) for f in FABS if f != "A"]))
            row[key] = {"in_fab": round(float(np.mean(acc["A"])), 3), "cross_fab": round(cross, 3),
                        **{f: round(float(np.mean(acc[f])), 3) for f in FABS if f != "A"}}
        # every fab, trained and tested on itself with all its labels
        row["in_fab_all_by_fab"] = {fab: round(accuracy(bow(splits[fab].train, task), splits[fab].test, task), 3)
                                    for fab in FABS}

    # Where bag-of-words fails: fab A failure type by what the report contains.
    model = bow(splits["A"].train, "failure_type")
    groups = {
        "one phenomenon, nothing ruled out": lambda r: len(r.phenomena) == 1 and not r.ruled_out,
        "one phenomenon, others ruled out": lambda r: len(r.phenomena) == 1 and bool(r.ruled_out),
        "several phenomena (one primary)": lambda r: len(r.phenomena) > 1,
        "uses held-out paraphrases": lambda r: r.heldout,
    }
    card["bow_failure_type_A_by_group"] = {}
    for name, keep in groups.items():
        rs = [r for r in splits["A"].test if keep(r)]
        card["bow_failure_type_A_by_group"][name] = {"n": len(rs), "accuracy": round(accuracy(model, rs, "failure_type"), 3),
                                                     "clean_accuracy": round(accuracy(model, rs, "clean_failure_type"), 3)}
    card["bow"] = bow_card

    docs = domain_corpus()
    n_sent = sum(len(d) for d in docs)
    card["corpus"] = {"documents": len(docs), "sentences": n_sent, "nsp_is_next_pairs": n_sent - len(docs),
                      "wordpiece_tokens": int(sum(len(tok.tokenize(s)) for d in docs for s in d))}
    card["benchmark_seconds"] = round(time.perf_counter() - t_start, 1)

    md = render(card, splits)
    print(md)
    out = ROOT / "docs" / "data-card.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(md)
    print(json.dumps(summary(card)))


def summary(card) -> dict:
    """The key figures, one line of JSON."""
    ft = card["bow"]["failure_type"]
    return {
        "label_noise_rate": card["label_noise_rate"],
        "noise_ceiling": {fab: f["noise_ceiling"] for fab, f in card["fabs"].items()},
        "bow_accuracy_A": {task: {k: {"in_fab": v["in_fab"], "cross_fab": v["cross_fab"]}
                                  for k, v in row.items() if k != "in_fab_all_by_fab"}
                           for task, row in card["bow"].items()},
        "bow_in_fab_all_by_fab": {task: row["in_fab_all_by_fab"] for task, row in card["bow"].items()},
        "failure_type_gap_to_ceiling_A": round(card["fabs"]["A"]["noise_ceiling"]["failure_type"] - ft["all"]["in_fab"], 3),
        "failure_type_cross_fab_drop_A": round(ft["all"]["in_fab"] - ft["all"]["cross_fab"], 3),
        "tokens": {fab: f["tokens"] for fab, f in card["fabs"].items()},
        "cross_split_duplicates": {fab: f["cross_split_duplicates"] for fab, f in card["fabs"].items()},
        "top_token_precision": {fab: {task: f["predictive_tokens"][task][0]["precision"] for task in TASKS}
                                for fab, f in card["fabs"].items()},
        "generation": card["generation"],
        "corpus": card["corpus"],
        "benchmark_seconds": card["benchmark_seconds"],
    }


def render(card, splits) -> str:
    g = card["generation"]
    out = ["# Data card: the synthetic fab", "",
           "Generated by `python benchmarks/data_card.py`; do not edit by hand. Every figure below is "
           "measured on `make_splits(fab)` (3000 train / 500 validation / 1000 test, seed 0) unless stated. "
           "The generative story, the label dependencies and the noise model are documented in "
           "`bertlab/data/__init__.py`.", "",
           "## The fabs", "", "| fab | style | train / val / test |", "|---|---|---|"]
    for fab, f in card["fabs"].items():
        sz = f["sizes"]
        out.append(f"| {fab} | {FAB_STYLES[fab].description} | {sz['train']} / {sz['validation']} / {sz['test']} |")
    out += ["", "Example reports (test split, first of each fab) with their clean labels (failure type, "
            "severity, root cause, action; an annotator's differing label in brackets):", ""]
    for fab in FABS:
        r = splits[fab].test[0]
        labels = ", ".join(getattr(r, "clean_" + t) + (f" [{getattr(r, t)}]" if t in r.noisy else "") for t in TASKS)
        out.append(f"- **{fab}** ({labels}): {r.text}")

    out += ["", "## Label distribution (training split)", ""]
    for task in TASKS:
        labs = LABELS[task]
        out += [f"**{task}**", "", "| fab | " + " | ".join(labs) + " |", "|---|" + "---|" * len(labs)]
        for fab, f in card["fabs"].items():
            out.append(f"| {fab} | " + " | ".join(pct(f["labels"][task].get(lab, 0)) for lab in labs) + " |")
        out.append("")

    out += ["## Length in WordPiece tokens (default checkpoint, with [CLS] and [SEP]; test split)", "",
            "| fab | mean | p5 | median | p95 | max | > 128 |", "|---|---|---|---|---|---|---|"]
    for fab, f in card["fabs"].items():
        t = f["tokens"]
        out.append(f"| {fab} | {t['mean']} | {t['p5']} | {t['median']} | {t['p95']} | {t['max']} | {pct(t['over_128'])} |")

    out += ["", "## Most predictive single tokens", "",
            f"P(label | token in report) on the training split, for tokens in at least {pct(MIN_SUPPORT)} "
            "of the reports: no single token gives the failure type away.", "",
            "| fab | task | token -> label (precision, reports) |", "|---|---|---|"]
    for fab, f in card["fabs"].items():
        for task in TASKS:
            cells = ", ".join(f"`{p['token']}` -> {p['label']} ({p['precision']:.2f}, {p['support']})"
                              for p in f["predictive_tokens"][task])
            out.append(f"| {fab} | {task} | {cells} |")

    out += ["", "## Noise ceiling", "",
            f"Annotator noise flips each label with probability {card['label_noise_rate']} (see the package "
            "docstring). The ceiling is the accuracy of a model that recovers every clean label, measured "
            "against the noisy test labels.", "", "| fab | " + " | ".join(TASKS) + " |", "|---|" + "---|" * len(TASKS)]
    for fab, f in card["fabs"].items():
        out.append(f"| {fab} | " + " | ".join(pct(f["noise_ceiling"][t]) for t in TASKS) + " |")

    out += ["", "## Difficulty and leakage", "",
            "| fab | several phenomena | phenomenon ruled out | held-out paraphrase | exact dup. across splits "
            "| near dup. across splits | nearest test->train TF-IDF cosine (max / mean) |", "|---|---|---|---|---|---|---|"]
    for fab, f in card["fabs"].items():
        c, d = f["complexity"], f["cross_split_duplicates"]
        out.append(f"| {fab} | {pct(c['several_phenomena'])} | {pct(c['ruled_out_phenomenon'])} | "
                   f"{pct(c['heldout_paraphrase'])} | {d['exact']} | {d['near']} | "
                   f"{d['max_test_train_cosine']} / {d['mean_test_train_cosine']} |")

    cols = [t for t in ("DEVICE", "WAFER", "DIE")] + [f"{t}.{r}" for t, rs in ENTITY_ROLES.items() for r in rs]
    out += ["", "## Entity spans and their roles (test split)", "",
            "Mean spans per report. A span's role is the slot of the report it filled: a measured value "
            "of a failing phenomenon, an in-spec reading that rules one out, the spec it is compared with, a "
            "test condition; the domain of the primary, a secondary or a ruled-out phenomenon. Roles are the "
            "generator's truth (annotator noise touches the class labels only).", "",
            "| fab | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for fab, f in card["fabs"].items():
        out.append(f"| {fab} | " + " | ".join(f"{f['entities_per_report'].get(c, 0):.2f}" for c in cols) + " |")

    out += ["", "## Bag-of-words baseline", "",
            "TF-IDF (word 1-2 grams, sublinear tf, min_df 2) + logistic regression (C = 10), trained on fab A "
            f"with 100, 500 (mean of {SUBSETS} random draws) or all 3000 training labels; accuracy on the "
            "noisy test labels of fab A (in-fab) and of fabs B-E (cross-fab, mean and each).", ""]
    for task in TASKS:
        row = card["bow"][task]
        ceiling = card["fabs"]["A"]["noise_ceiling"][task]
        out += [f"**{task}** (fab A noise ceiling {pct(ceiling)})", "",
                "| labels | in-fab (A) | cross-fab mean | B | C | D | E |", "|---|---|---|---|---|---|---|"]
        for k in ("100", "500", "all"):
            v = row[k]
            out.append(f"| {k} | {pct(v['in_fab'])} | {pct(v['cross_fab'])} | "
                       + " | ".join(pct(v[f]) for f in "BCDE") + " |")
        out += ["", "Trained and tested on each fab with all its labels: "
                + ", ".join(f"{fab} {pct(a)}" for fab, a in row["in_fab_all_by_fab"].items()), ""]
    out += ["Where bag-of-words fails (fab A, failure type, all labels):", "",
            "| test reports | n | accuracy | accuracy on clean labels |", "|---|---|---|---|"]
    for name, v in card["bow_failure_type_A_by_group"].items():
        out.append(f"| {name} | {v['n']} | {pct(v['accuracy'])} | {pct(v['clean_accuracy'])} |")

    c = card["corpus"]
    out += ["", "## Domain corpus", "",
            f"`domain_corpus()`: {c['documents']} documents (datasheets, procedures, lab notebooks, mechanism "
            f"notes, glossary), {c['sentences']} sentences, {c['nsp_is_next_pairs']} consecutive (IsNext) "
            f"sentence pairs, {c['wordpiece_tokens']} WordPiece tokens. It shares vocabulary with the reports, "
            "including the held-out paraphrases (in glossary entries), but contains no report sentence.", "",
            "## Generation speed", "",
            f"{g['reports']:,} reports of fab A in {g['seconds']} s wall clock, {g['cpu_seconds']} s CPU "
            f"({g['reports_per_s']:,} reports/s); "
            f"`make_splits` for all five fabs in {g['make_splits_5_fabs_s']} s. This benchmark ran in "
            f"{card['benchmark_seconds']} s.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
