"""Multi-task heads and loss (bertlab.multitask): hand-computed losses, missing labels, data, metrics, training."""
import math

import pytest
import torch

from bertlab import artifacts, train
from bertlab import multitask as mt
from bertlab.data import LABELS, generate_reports
from bertlab.pretraining import IGNORE_INDEX

M = IGNORE_INDEX


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_encoder(seed=0, hf=False, vocab_size=40):
    torch.manual_seed(seed)
    if hf:
        from transformers import BertConfig, BertModel

        return BertModel(BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, max_position_embeddings=32))
    from bertlab.model import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=32))


def ids_batch(B=4, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 40, (B, T), generator=g), torch.ones(B, T, dtype=torch.long)


def ce_by_hand(z, y):
    """-log softmax(z)[y], written out, in float64."""
    z = z.double().tolist()
    return -(z[y] - math.log(sum(math.exp(v) for v in z)))


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("hf", [False, True])
def test_model_returns_one_logits_tensor_per_task_in_order(hf):
    model = mt.MultiTaskModel(tiny_encoder(hf=hf), {"severity": 3, "action": 6, "x": 2}).eval()
    ids, mask = ids_batch()
    out = model(ids, mask)
    assert list(out) == ["severity", "action", "x"], "tasks must come back in the order of num_labels"
    assert {t: tuple(z.shape) for t, z in out.items()} == {"severity": (4, 3), "action": (4, 6), "x": (4, 2)}
    # Every head reads the same [CLS] vector of the shared encoder.
    h = model.encoder(ids, attention_mask=mask)[0][:, 0]
    for t, head in model.classifier.items():
        torch.testing.assert_close(out[t], head(h))


def test_pooler_pooling_reads_the_pooler_output():
    model = mt.MultiTaskModel(tiny_encoder(), {"a": 3}, pooling="pooler").eval()
    ids, mask = ids_batch()
    pooled = model.encoder(ids, mask)[1]
    torch.testing.assert_close(model(ids, mask)["a"], model.classifier["a"](pooled))
    cls = mt.MultiTaskModel(tiny_encoder(), {"a": 3}).eval()
    cls.load_state_dict(model.state_dict())
    assert not torch.allclose(cls(ids, mask)["a"], model(ids, mask)["a"])


def test_num_labels_for_the_course_tasks():
    assert mt.num_labels_for() == {t: len(v) for t, v in LABELS.items()}
    assert mt.TASKS == ("failure_type", "severity", "root_cause", "action")
    with pytest.raises(ValueError, match="tasks"):
        mt.num_labels_for(["severity", "colour"])


@pytest.mark.parametrize("num_labels, kwargs, match", [
    ({}, {}, "num_labels"),
    ({"a": 1}, {}, r"num_labels\['a'\]"),
    ({"a": 2.0}, {}, r"num_labels\['a'\]"),
    ({"a.b": 2}, {}, "num_labels"),
    ({"a": 2}, {"pooling": "mean"}, "pooling"),
    ({"a": 2}, {"dropout": 1.0}, "dropout"),
])
def test_model_rejects_bad_arguments(num_labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mt.MultiTaskModel(tiny_encoder(), num_labels, **kwargs)


def test_no_wrapper_head_lr_reaches_every_head_of_the_model_itself():
    for name in ("PackedLogits", "PackedLoss", "PackedMetrics", "split_logits"):
        assert not hasattr(mt, name), f"{name}: fit takes the model's dict of logits as it is"
    model = mt.MultiTaskModel(tiny_encoder(), {"a": 3, "b": 2})
    groups = train.param_groups(model, head_lr=1e-3)  # all the heads are under "classifier."
    assert {id(p) for g in groups[2:] for p in g["params"]} == {id(p) for p in model.classifier.parameters()}


# ---------------------------------------------------------------- the loss

Z = {"a": torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 4.0, 1.0], [1.0, 1.0, 0.0]]),
     "b": torch.tensor([[0.5, -0.5], [2.0, 1.0], [0.0, 0.0], [-1.0, 3.0]])}


def test_loss_equals_the_hand_computed_masked_mean_and_weighted_sum():
    labels = {"a": torch.tensor([0, M, 1, 2]), "b": torch.tensor([M, 0, M, M])}
    total, per_task = mt.multitask_loss(Z, labels, {"a": 0.5, "b": 2.0})
    la = (ce_by_hand(Z["a"][0], 0) + ce_by_hand(Z["a"][2], 1) + ce_by_hand(Z["a"][3], 2)) / 3  # 3 labelled, not 4
    lb = ce_by_hand(Z["b"][1], 0) / 1
    assert per_task["a"].item() == pytest.approx(la, rel=1e-6)
    assert per_task["b"].item() == pytest.approx(lb, rel=1e-6)
    assert total.item() == pytest.approx(0.5 * la + 2.0 * lb, rel=1e-6)
    # Default weights are 1; a task that weights leaves out keeps 1.
    assert mt.multitask_loss(Z, labels)[0].item() == pytest.approx(la + lb, rel=1e-6)
    assert mt.multitask_loss(Z, labels, {"b": 0.0})[0].item() == pytest.approx(la, rel=1e-6)


def test_a_missing_label_is_not_counted_as_wrong():
    labels = {"a": torch.tensor([0, M, 1, 2]), "b": torch.tensor([1, 0, M, 1])}
    base, per = mt.multitask_loss(Z, labels)
    # Whatever the model says about a report without a label, the loss is the same ...
    worse = {t: z.clone() for t, z in Z.items()}
    worse["a"][1] = torch.tensor([-50.0, 50.0, -50.0])
    worse["b"][2] = torch.tensor([100.0, -100.0])
    assert torch.equal(mt.multitask_loss(worse, labels)[0], base)
    # ... it equals the loss on the labelled reports alone (not diluted by the missing ones) ...
    keep = torch.tensor([0, 2, 3])
    only = mt.multitask_loss({"a": Z["a"][keep]}, {"a": labels["a"][keep]})[0]
    assert per["a"].item() == pytest.approx(only.item(), rel=1e-6)
    # ... and no gradient reaches its logits.
    z = {t: v.clone().requires_grad_(True) for t, v in Z.items()}
    mt.multitask_loss(z, labels)[0].backward()
    assert torch.all(z["a"].grad[1] == 0) and torch.all(z["b"].grad[2] == 0)
    assert z["a"].grad[0].abs().sum() > 0


def test_a_task_without_any_label_contributes_zero_not_nan():
    labels = {"a": torch.tensor([0, 1, 2, 0]), "b": torch.full((4,), M)}
    z = {t: v.clone().requires_grad_(True) for t, v in Z.items()}
    total, per = mt.multitask_loss(z, labels, {"a": 1.0, "b": 3.0})
    assert per["b"].item() == 0.0 and math.isfinite(total.item())
    assert total.item() == pytest.approx(per["a"].item(), rel=1e-6)
    total.backward()
    assert torch.all(z["b"].grad == 0) and torch.isfinite(z["a"].grad).all()
    # Even when no task has a label, the loss is 0 and backward works (an empty batch of labels).
    none = {t: torch.full((4,), M) for t in Z}
    z2 = {t: v.clone().requires_grad_(True) for t, v in Z.items()}
    total2, _ = mt.multitask_loss(z2, none)
    total2.backward()
    assert total2.item() == 0.0


def test_loss_trains_the_heads_through_the_shared_encoder():
    model = mt.MultiTaskModel(tiny_encoder(), {"a": 3, "b": 2})
    ids, mask = ids_batch()
    total, _ = mt.multitask_loss(model(ids, mask), {"a": torch.tensor([0, 1, 2, 0]), "b": torch.tensor([M] * 4)})
    total.backward()
    assert model.classifier["a"].weight.grad.abs().sum() > 0
    assert torch.all(model.classifier["b"].weight.grad == 0), "a task without labels must not move its head"
    assert model.encoder.encoder.layer[0].output.dense.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("labels, weights, match", [
    ({"a": torch.tensor([0, 1, 2, 0]), "b": torch.tensor([0, 1, 0, 1]), "c": torch.tensor([0, 0, 0, 0])}, None,
     "labels has tasks"),
    ({"a": torch.tensor([0, 1, 2, 0])}, None, r"labels has no entry.*'b'"),
    ({"a": torch.tensor([0, 1, 3, 0]), "b": torch.tensor([0, 1, 0, 1])}, None, r"labels\['a'\] holds 3"),
    ({"a": torch.tensor([0, 1, 2, 0]), "b": torch.tensor([0, -1, 0, 1])}, None, r"labels\['b'\] holds -1"),
    ({"a": torch.tensor([0, 1, 2]), "b": torch.tensor([0, 1, 0, 1])}, None, r"labels\['a'\] must be .* shape \(4,\)"),
    ({"a": torch.tensor([0.0, 1, 2, 0]), "b": torch.tensor([0, 1, 0, 1])}, None, r"labels\['a'\] must be an integer"),
    ({"a": torch.tensor([0, 1, 2, 0]), "b": torch.tensor([0, 1, 0, 1])}, {"c": 1.0}, "weights has tasks"),
    ({"a": torch.tensor([0, 1, 2, 0]), "b": torch.tensor([0, 1, 0, 1])}, {"a": -0.5}, r"weights\['a'\]"),
    ({"a": torch.tensor([0, 1, 2, 0]), "b": torch.tensor([0, 1, 0, 1])}, {"b": float("nan")}, r"weights\['b'\]"),
    ({"a": torch.tensor([0, 1, 2, 0]), "b": torch.tensor([0, 1, 0, 1])}, [1.0, 2.0], "weights must be"),
])
def test_loss_rejects_bad_arguments_naming_them(labels, weights, match):
    with pytest.raises(ValueError, match=match):
        mt.multitask_loss(Z, labels, weights)


def test_loss_rejects_logits_of_different_batch_sizes():
    with pytest.raises(ValueError, match=r"logits\['b'\] has 3 rows"):
        mt.multitask_loss({"a": Z["a"], "b": Z["b"][:3]}, {"a": torch.tensor([0, 1, 2, 0]), "b": torch.tensor([0, 1, 0])})


# ---------------------------------------------------------------- data


def test_report_labels_maps_names_and_hides_the_asked_fraction():
    reports = generate_reports(20, "A", seed=0)
    labels = mt.report_labels(reports)
    assert list(labels) == list(mt.TASKS)
    assert labels["severity"] == [LABELS["severity"].index(r.severity) for r in reports]
    hidden = mt.report_labels(reports, missing={"root_cause": 0.25}, seed=1)
    assert sum(y == M for y in hidden["root_cause"]) == 5
    assert hidden["failure_type"] == labels["failure_type"]
    assert all(h in (M, y) for h, y in zip(hidden["root_cause"], labels["root_cause"]))
    assert hidden == mt.report_labels(reports, missing={"root_cause": 0.25}, seed=1), "not deterministic"
    records = [{"severity": "high"}, {"severity": None}, {"severity": ""}]
    assert mt.report_labels(records, ["severity"]) == {"severity": [2, M, M]}


@pytest.mark.parametrize("kwargs, match", [
    ({"tasks": ["colour"]}, "tasks"),
    ({"missing": {"colour": 0.5}}, "missing has tasks"),
    ({"missing": {"severity": 1.5}}, r"missing\['severity'\]"),
])
def test_report_labels_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mt.report_labels(generate_reports(3, "A"), **kwargs)


@pytest.fixture(scope="module")
def tokenizer():
    from bertlab.pretrained import load_tokenizer

    return load_tokenizer()


def test_encode_multitask_batches_one_label_column_per_task(tokenizer):
    texts = ["vdd droop at burn-in", "pll lost lock", "leakage on die 4"]
    data = mt.encode_multitask(tokenizer, texts, {"severity": ["high", None, 0], "action": [M, "monitor", 5]},
                               max_length=16)
    assert data.tasks == ("severity", "action") and len(data) == 3
    assert data.task_labels("severity") == [2, M, 0] and data.task_labels("action") == [M, 3, 5]
    batch = data.collate([data[i] for i in range(3)])
    assert batch["labels"].tolist() == [[2, M], [M, 3], [0, 5]]
    assert batch["input_ids"].shape[0] == 3 and batch["input_ids"][0, 0] == tokenizer.cls_token_id
    part = data.subset([2, 0])
    assert isinstance(part, mt.MultiTaskDataset) and part.tasks == data.tasks and part.labels == [[0, 5], [2, M]]
    assert data.with_padding(16).tasks == data.tasks
    custom = mt.encode_multitask(tokenizer, texts[:1], {"x": [1]}, num_labels={"x": 2})
    assert custom.labels == [[1]]


@pytest.mark.parametrize("labels, kwargs, match", [
    ({"colour": [0, 1]}, {}, "unknown task 'colour'"),
    ({"severity": [0, 3]}, {}, r"labels\['severity'\]\[1\] is 3, out of range"),
    ({"severity": [0, -2]}, {}, r"labels\['severity'\]\[1\] is -2"),
    ({"severity": [0, "huge"]}, {}, r"labels\['severity'\]\[1\] is 'huge'"),
    ({"severity": [0]}, {}, r"labels\['severity'\] has 1 entries"),
    ({"severity": [0, 1]}, {"num_labels": {"action": 6}}, "num_labels has tasks"),
    ({}, {}, "labels must be"),
])
def test_encode_multitask_rejects_bad_labels_naming_them(tokenizer, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mt.encode_multitask(tokenizer, ["a report", "another"], labels, **kwargs)


# ---------------------------------------------------------------- metrics and training


def test_task_metrics_skip_missing_labels():
    logits = {"a": torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0]]),
              "b": torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])}
    labels = {"a": torch.tensor([0, 1, M, 2]), "b": torch.full((4,), M)}
    scores = mt.task_metrics(logits, labels)
    assert scores["a"]["n"] == 3 and scores["a"]["accuracy"] == pytest.approx(2 / 3)
    # macro-F1 over classes 0,1,2: class 0 P=1/2 R=1 F=2/3, class 1 F=1, class 2 F=0.
    assert scores["a"]["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert scores["b"]["n"] == 0 and math.isnan(scores["b"]["accuracy"])
    batch = {"labels": torch.stack([labels["a"], labels["b"]], 1)}  # (B, K): one column per task
    means = mt.batch_metrics(logits, batch)
    assert means["accuracy"] == pytest.approx(2 / 3), "the mean must skip tasks without labels"
    assert means["a_accuracy"] == pytest.approx(2 / 3) and means["a_macro_f1"] == pytest.approx(scores["a"]["macro_f1"])


def test_batch_loss_reads_the_dict_of_logits_and_the_label_columns():
    labels = {"a": torch.tensor([0, M, 1, 2]), "b": torch.tensor([M, 0, M, 1])}
    batch = {"labels": torch.stack([labels["a"], labels["b"]], 1), "index": torch.arange(4)}
    out = mt.batch_loss(Z, batch, weights={"a": 0.5})
    total, per_task = mt.multitask_loss(Z, labels, {"a": 0.5})
    assert set(out) == {"loss", "a_loss", "b_loss"}, "the per-task losses are logged as parts"
    assert out["loss"].item() == pytest.approx(total.item()) and out["b_loss"].item() == pytest.approx(per_task["b"].item())
    with pytest.raises(ValueError, match=r"labels must be \(B, 2\)"):
        mt.batch_loss(Z, {"labels": labels["a"]})


def toy_multitask_data(n=64, seed=0):
    """Random token ids; task a = first id mod 3, task b = second id mod 2 but missing for every third text."""
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(4, 40, (int(torch.randint(3, 10, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    labels = [[x[0] % 3, M if i % 3 == 0 else x[1] % 2] for i, x in enumerate(ids)]
    return mt.MultiTaskDataset(ids, labels, ("a", "b"))


def test_fit_multitask_trains_every_head_with_train_fit():
    data = toy_multitask_data()
    model = mt.MultiTaskModel(tiny_encoder(), {"a": 3, "b": 2})
    before = mt.evaluate_multitask(model, data)
    config = train.TrainConfig(lr=1e-2, head_lr=2e-2, epochs=4, batch_size=8, patience=None, warmup_ratio=0.0)
    result = mt.fit_multitask(model, data.subset(range(48)), data.subset(range(48, 64)), config, progress=False)
    after = mt.evaluate_multitask(model, data)
    assert not model.training and not model.encoder.training
    assert len(result.history) == 4
    assert {"val_a_macro_f1", "val_b_accuracy", "val_macro_f1", "train_a_loss", "train_b_loss"} <= set(result.history[-1])
    assert after["a"]["loss"] < before["a"]["loss"] and after["b"]["loss"] < before["b"]["loss"]
    assert after["b"]["n"] == sum(y != M for y in data.task_labels("b"))
    row = result.history[-1]
    assert row["val_macro_f1"] == pytest.approx((row["val_a_macro_f1"] + row["val_b_macro_f1"]) / 2)


def test_fit_multitask_rejects_datasets_of_other_tasks():
    model = mt.MultiTaskModel(tiny_encoder(), {"b": 2, "a": 3})
    with pytest.raises(ValueError, match=r"train_data.tasks \['a', 'b'\] must be the model's tasks"):
        mt.fit_multitask(model, toy_multitask_data(8), progress=False)
    with pytest.raises(ValueError, match="train_data must be a MultiTaskDataset"):
        mt.fit_multitask(model, train.TextDataset([[1, 2]], [0]), progress=False)
    with pytest.raises(ValueError, match="weights has tasks"):
        mt.fit_multitask(mt.MultiTaskModel(tiny_encoder(), {"a": 3, "b": 2}), toy_multitask_data(8),
                         weights={"c": 1.0}, progress=False)


# ---------------------------------------------------------------- the fast variant: bertlab.frozen


def test_fit_multitask_trains_top_layers_on_frozen_states_alone_or_together():
    from bertlab import frozen
    from bertlab.model import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=32)).eval()
    data = toy_multitask_data()
    states = frozen.frozen_states(bert, data, 1, top_keys_values=True, progress=False)
    config = train.TrainConfig(lr=1e-2, head_lr=2e-2, epochs=4, batch_size=8, patience=None, warmup_ratio=0.0)
    for tasks in (("a", "b"), ("b",)):
        torch.manual_seed(0)
        model = frozen.TopLayers(bert, 1, {t: {"a": 3, "b": 2}[t] for t in tasks}, train_keys_values=False)
        part = states.select(tasks)
        before = mt.evaluate_multitask(model, part)
        result = mt.fit_multitask(model, part.subset(range(48)), part.subset(range(48, 64)), config, progress=False)
        after = mt.evaluate_multitask(model, part)
        assert not model.training and len(result.history) == 4 and "val_b_macro_f1" in result.history[-1]
        assert all(after[t]["loss"] < before[t]["loss"] for t in tasks), (before, after)
        assert after["b"]["n"] == sum(y != M for y in data.task_labels("b")), "missing labels are not scored"
        logits, labels = mt.collect_multitask_logits(model, part)
        assert list(logits) == list(tasks) and labels["b"].tolist() == data.task_labels("b")
    with pytest.raises(ValueError, match="a frozen.TopLayers reads frozen.HiddenStates"):
        mt.fit_multitask(model, mt.MultiTaskDataset(data.input_ids, [[r[1]] for r in data.labels], ("b",)), progress=False)
    with pytest.raises(TypeError, match="MultiTaskModel or a bertlab.frozen.TopLayers with a"):
        mt.fit_multitask(frozen.TopLayers(bert, 1, 2), states, progress=False)


# ---------------------------------------------------------------- the course's cached model


def test_multitask_classifier_trains_once_then_loads(monkeypatch, tmp_path):
    from bertlab import cache
    from bertlab.data import make_splits

    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
    small = dict(n_train=16, n_val=8, n_test=8, max_length=32, batch_size=8, epochs=1,
                 tasks=["severity", "root_cause"], missing={"root_cause": 0.5}, weights={"root_cause": 0.5})
    model, tok, info = artifacts.multitask_classifier(progress=False, **small)
    again, _, info2 = artifacts.multitask_classifier(progress=False, **small)
    assert (info["cached"], info2["cached"]) == (False, True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert model.tasks == ("severity", "root_cause") and info["label_names"]["severity"] == ["low", "medium", "high"]
    assert {"val_severity_macro_f1", "val_root_cause_accuracy"} <= set(info["history"][0])
    test = make_splits(**info["splits"]).test
    data = mt.encode_multitask(tok, [r.text for r in test], mt.report_labels(test, model.tasks), max_length=32)
    scores = mt.evaluate_multitask(again, data)
    assert scores["root_cause"]["n"] == len(test), "test reports keep every label"
    with pytest.raises(TypeError, match="unknown settings"):
        artifacts.multitask_classifier(n_epochs=3)
    with pytest.raises(ValueError, match="tasks"):
        artifacts.multitask_classifier(tasks=["colour"])
    with pytest.raises(ValueError, match="weights has tasks"):
        artifacts.multitask_classifier(tasks=["severity"], weights={"action": 1.0})
    with pytest.raises(ValueError, match=r"missing\['severity'\]"):
        artifacts.multitask_classifier(missing={"severity": 2})
