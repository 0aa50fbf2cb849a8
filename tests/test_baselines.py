"""The baselines and the comparison harness: budgets, the metric table, the grid and its cache (BERT: test_frozen.py)."""
import numpy as np
import pytest
import torch

from bertlab import baselines, cache, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- the label budget


def test_stratified_budget_keeps_each_class_share():
    labels = [0] * 50 + [1] * 30 + [2] * 20  # shares 0.5, 0.3, 0.2
    picked = baselines.stratified_budget(labels, 7, seed=0)
    # exact shares 3.5, 2.1, 1.4 -> floors 3, 2, 1 (6); the one slot left goes to the largest remainder (class 0)
    assert np.bincount(np.asarray(labels)[picked]).tolist() == [4, 2, 1]
    assert len(picked) == len(set(picked)) == 7 and picked == sorted(picked)
    # a tie of remainders (2.5, 1.5, 1.0 -> 2, 1, 1 + one slot) goes to the smaller class id
    assert np.bincount(np.asarray(labels)[baselines.stratified_budget(labels, 5, seed=3)]).tolist() == [3, 1, 1]


def test_stratified_budget_random_labels_floor_or_ceil():
    labels = np.random.default_rng(0).integers(0, 8, 997)
    counts = np.bincount(labels)
    for budget in (8, 50, 333, 996):
        got = np.bincount(labels[baselines.stratified_budget(labels, budget, seed=1)], minlength=8)
        exact = budget * counts / len(labels)
        assert got.sum() == budget
        assert np.all((got == np.floor(exact)) | (got == np.ceil(exact))), (budget, got, exact)


def test_stratified_budget_is_seeded():
    labels = np.arange(300) % 3
    a, b, c = (baselines.stratified_budget(labels, 30, seed=s) for s in (0, 0, 1))
    assert a == b and a != c
    assert baselines.stratified_budget(labels, 300, seed=5) == list(range(300))
    for bad in (0, 301, 2.5, True):
        with pytest.raises(ValueError, match=r"budget must be an int in 1..len\(labels\) \(300\)"):
            baselines.stratified_budget(labels, bad)


# ---------------------------------------------------------------- the table and the grid


def test_summarize_mean_std_and_seeds():
    runs = [{"model": "a", "budget": 50, "seed": s, "macro_f1": v} for s, v in enumerate([0.2, 0.4, 0.9])]
    runs += [{"model": "a", "budget": 100, "seed": 0, "macro_f1": 0.5}]
    table = baselines.summarize(runs)
    assert table.loc[("a", 50), "mean"] == pytest.approx(0.5)
    assert table.loc[("a", 50), "std"] == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1))
    assert table.loc[("a", 50), "seeds"] == 3
    assert np.isnan(table.loc[("a", 100), "std"]), "one seed has no sample standard deviation"
    with pytest.raises(ValueError, match=r"lacks the columns \['accuracy'\]"):
        baselines.summarize(runs, metric="accuracy")


def test_run_grid_calls_each_run_once_and_caches(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
    labels = [0, 1] * 20
    calls = []

    def model(indices, seed):
        calls.append((len(indices), seed))
        return {"macro_f1": len(indices) / 100 + seed}

    first = baselines.run_grid({"m": model}, labels, [4, 10], [0, 1], cache_config={"data": "toy"}, progress=False)
    assert sorted(calls) == [(4, 0), (4, 1), (10, 0), (10, 1)]
    second = baselines.run_grid({"m": model}, labels, [4, 10], [0, 1], cache_config={"data": "toy"}, progress=False)
    assert len(calls) == 4, "cached runs are not recomputed"
    assert [r["macro_f1"] for r in first] == [r["macro_f1"] for r in second] == [0.04, 1.04, 0.1, 1.1]
    assert not any(r["cached"] for r in first) and all(r["cached"] for r in second)
    baselines.run_grid({"m": model}, labels, [4], [2], cache_config={"data": "toy"}, progress=False)
    assert len(calls) == 5, "a missing seed is computed"
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    with pytest.raises(ValueError, match="seeds is empty"):
        baselines.run_grid({"m": model}, labels, [4], [], progress=False)


# ---------------------------------------------------------------- the models


def test_tfidf_logreg_learns_words_and_counts_parameters():
    texts = ["vdd droop on core", "core voltage droop", "clock jitter high", "pll jitter on clock"] * 5
    labels = [0, 0, 1, 1] * 5
    model = baselines.tfidf_logreg(seed=0).fit(texts, labels)
    assert model.predict(["droop at vdd", "jitter seen"]).tolist() == [0, 1]
    vocab = len(model[0].vocabulary_)
    assert baselines.tfidf_parameters(model) == vocab + 1, "binary: one weight per feature and a bias"
    with pytest.raises(ValueError, match="C must be a finite number > 0"):
        baselines.tfidf_logreg(C=0)


def test_word_vocab():
    vocab = baselines.WordVocab(["VDD_CORE droop, 0.91V", "droop again"])
    assert vocab.split("VDD_CORE droop, 0.91V at -40°C on DUT_1070") == \
        ["vdd_core", "droop", ",", "0.00v", "at", "-", "00°c", "on", "dut_0000"]
    data = vocab.encode(["droop unseen", ""], [1, 0])
    assert data.input_ids[0] == [vocab.ids["droop"], vocab.UNK]
    assert data.input_ids[1] == [vocab.UNK], "an empty text becomes one unknown word, not an empty sequence"
    with pytest.raises(ValueError, match="texts is empty"):
        baselines.WordVocab([])


def test_bilstm_shape_parameters_and_padding_invariance():
    torch.manual_seed(0)
    model = baselines.BiLSTMClassifier(vocab_size=50, num_labels=8).eval()
    lstm = 2 * 4 * 256 * (300 + 256 + 2) + 2 * 4 * 256 * (512 + 256 + 2)  # 2 directions x 4 gates, 2 layers
    assert train.count_parameters(model) == 50 * 300 + lstm + 512 * 8 + 8
    data = train.TextDataset([[5, 6, 7, 8, 9], [10, 11]], [0, 1])
    batch = data.collate([data[0], data[1]])
    with torch.no_grad():
        both = model(batch["input_ids"], batch["attention_mask"])
        alone = model(torch.tensor([[10, 11]]), torch.tensor([[1, 1]]))
    assert both.shape == (2, 8)
    assert torch.allclose(both[1], alone[0], atol=1e-5), "padding must not change a report's logits"


def test_bilstm_trains_with_the_course_loop():
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(2, 30, (int(torch.randint(4, 10, (1,), generator=g)),), generator=g).tolist() for _ in range(64)]
    labels = [int(5 in x or 6 in x) for x in ids]  # is a "keyword" anywhere in the report?
    data = train.TextDataset(ids, labels)
    torch.manual_seed(0)
    model = baselines.BiLSTMClassifier(30, 2, embed_dim=16, hidden_size=16)
    train.fit(model, data, None, train.TrainConfig(lr=2e-2, epochs=10, batch_size=16, weight_decay=0.0), progress=False)
    scores = train.evaluate(model, data)
    assert scores["accuracy"] > 0.9, scores


# ---------------------------------------------------------------- paired differences


def test_paired_differences_pairs_runs_by_budget_and_seed():
    runs = [{"model": m, "budget": b, "seed": s, "accuracy": acc}
            for m, b, s, acc in [("original", 150, 1, 0.50), ("adapted", 150, 0, 0.45), ("original", 150, 0, 0.40),
                                 ("adapted", 150, 1, 0.30), ("other", 150, 0, 0.99)]]
    out = baselines.paired_differences(runs, "adapted", "original")
    assert list(out.columns) == ["original", "adapted", "difference"]
    assert out.loc[(150, 0), "difference"] == pytest.approx(0.05)
    assert out.loc[(150, 1), "difference"] == pytest.approx(-0.20)
    assert out.loc[(150, 1), "adapted"] == pytest.approx(0.30)


def test_paired_differences_rejects_unpaired_or_unknown_runs():
    runs = [{"model": "a", "budget": 10, "seed": 0, "accuracy": 0.5}, {"model": "b", "budget": 10, "seed": 1, "accuracy": 0.4}]
    with pytest.raises(ValueError, match="one model only"):
        baselines.paired_differences(runs, "a", "b")
    with pytest.raises(ValueError, match="no run of 'c'"):
        baselines.paired_differences(runs, "c", "b")
    with pytest.raises(ValueError, match="macro_f1"):
        baselines.paired_differences(runs, "a", "b", metric="macro_f1")
