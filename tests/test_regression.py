"""The severity score's regression head (bertlab.regression): hand-computed losses and metrics, the head, training."""
import math
from types import SimpleNamespace

import pytest
import torch

from bertlab import frozen, train
from bertlab import multitask as mt
from bertlab import regression as rg
from bertlab.data import SEVERITIES, generate_reports
from bertlab.model import BertConfig, BertModel
from bertlab.pretraining import IGNORE_INDEX

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAN = float("nan")


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=32)).eval()


def toy_scored_states(bert, n=48, seed=0, top_keys_values=False):
    """Random token ids; task a = first id mod 3, task b = second id mod 2 (missing for every third text);
    the score = first id / 10, a number the model can read off the text."""
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(4, 40, (int(torch.randint(3, 10, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    labels = [[x[0] % 3, IGNORE_INDEX if i % 3 == 0 else x[1] % 2] for i, x in enumerate(ids)]
    states = frozen.frozen_states(bert, mt.MultiTaskDataset(ids, labels, ("a", "b")), 1,
                                  top_keys_values=top_keys_values, progress=False)
    return rg.ScoredStates.of(states, [x[0] / 10 for x in ids])


# ---------------------------------------------------------------- the score and its scale


def test_severity_scores_add_the_four_factors():
    worst = SimpleNamespace(clean_failure_type="current_spike", clean_root_cause="latch_up", stage="customer_return",
                            impact="lot")  # 2 + 2 + 2 + 2
    mildest = SimpleNamespace(clean_failure_type="signal_integrity", clean_root_cause="test_setup_error",
                              stage="wafer_sort", impact="single")  # 0 - 3 - 1 - 1
    assert rg.severity_scores([worst, mildest]) == [8.0, -5.0]
    reports = generate_reports(300, seed=3)
    scores = rg.severity_scores(reports)
    # the generator's severity class is the score cut at SEVERITY_CUTS: severity_from_score gives it back
    assert [SEVERITIES[i] for i in rg.severity_from_score(scores).tolist()] == [r.clean_severity for r in reports]
    with pytest.raises(ValueError, match=r"reports\[0\] must be a bertlab.data.FailureReport"):
        rg.severity_scores([{"text": "a dict, not a report"}])


def test_score_scale_standardizes_and_inverts():
    scale = rg.ScoreScale.of([1, 3, 1, 3])
    assert (scale.mean, scale.std) == (2.0, 1.0)
    torch.testing.assert_close(scale.to_z([1.0, 3.0, 2.5]), torch.tensor([-1.0, 1.0, 0.5]))
    torch.testing.assert_close(scale.from_z(scale.to_z([-5.0, 8.0])), torch.tensor([-5.0, 8.0]))
    z = rg.ScoreScale.of([0.0, 4.0, 2.0]).to_z([0.0, 4.0, 2.0])
    assert abs(float(z.mean())) < 1e-6 and abs(float(z.pow(2).mean()) - 1) < 1e-6, "unit variance after scaling"
    with pytest.raises(ValueError, match="scores must hold at least 2 values"):
        rg.ScoreScale.of([2.0, 2.0])
    with pytest.raises(ValueError, match="std must be a finite number > 0"):
        rg.ScoreScale(1.0, 0.0)


# ---------------------------------------------------------------- the loss


def test_regression_loss_by_hand_mse_and_huber_missing_targets_skipped():
    pred, target = torch.tensor([1.0, 2.0, 4.0, 7.0]), torch.tensor([0.0, 2.0, 1.0, NAN])
    # residuals 1, 0, 3 (the NaN target is skipped): MSE (1 + 0 + 9) / 3
    assert math.isclose(float(rg.regression_loss(pred, target)), 10 / 3, rel_tol=1e-6)
    # Huber, delta 1: r^2 / 2 = 0.5, 0, and 1 * (3 - 0.5) = 2.5 beyond delta
    assert math.isclose(float(rg.regression_loss(pred, target, "huber")), 3.0 / 3, rel_tol=1e-6)
    # delta 2: 0.5, 0, 2 * (3 - 1) = 4
    assert math.isclose(float(rg.regression_loss(pred, target, "huber", delta=2.0)), 4.5 / 3, rel_tol=1e-6)
    p = pred.clone().requires_grad_()
    rg.regression_loss(p, target, "huber").backward()
    torch.testing.assert_close(p.grad, torch.tensor([1.0, 0.0, 1.0, 0.0]) / 3)  # a wrong report pulls with at most delta
    none = torch.full((4,), NAN)
    p = pred.clone().requires_grad_()
    loss = rg.regression_loss(p, none)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(p.grad.abs().sum()) == 0.0, "no target: 0, not NaN, and no gradient"


@pytest.mark.parametrize("pred, target, kwargs, match", [
    (torch.zeros(3), torch.zeros(4), {}, "pred .3,. and target .4,. must have the same shape"),
    (torch.zeros(3, 1), torch.zeros(3), {}, r"pred must be a float tensor of shape \(B,\)"),
    (torch.zeros(3), torch.zeros(3, dtype=torch.long), {}, "target must be a float tensor"),
    (torch.zeros(3), torch.zeros(3), {"kind": "mae"}, "kind must be one of"),
    (torch.zeros(3), torch.zeros(3), {"delta": 0.0}, "delta must be a finite number > 0"),
])
def test_regression_loss_rejects_bad_arguments_naming_them(pred, target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        rg.regression_loss(pred, target, **kwargs)


# ---------------------------------------------------------------- states, model, loss of a batch


def test_scored_states_carry_a_score_per_report_through_subset_and_select():
    data = toy_scored_states(tiny_bert(), n=6)
    batch = data.collate([data[i] for i in (4, 1)])
    torch.testing.assert_close(batch["score"], torch.tensor([data.scores[4], data.scores[1]]))
    assert batch["labels"].shape == (2, 2) and batch["score"].dtype == torch.float32
    part = data.subset([5, 0]).select("b")
    assert isinstance(part, rg.ScoredStates) and part.tasks == ("b",) and part.scores == [data.scores[5], data.scores[0]]
    with pytest.raises(ValueError, match="scores has 2 entries for 6 states"):
        rg.ScoredStates.of(data, [1.0, 2.0])
    with pytest.raises(ValueError, match="tasks must name the label columns"):
        rg.ScoredStates([torch.zeros(3, 16)], [0], None, [1.0])


def test_scored_top_layers_add_one_number_per_report_on_the_same_cls_vector():
    bert = tiny_bert()
    data = toy_scored_states(bert, n=4)
    batch = data.collate([data[i] for i in range(4)])
    torch.manual_seed(5)
    plain = frozen.TopLayers(bert, 1, {"a": 3, "b": 2}).eval()
    torch.manual_seed(5)
    model = rg.ScoredTopLayers(bert, 1, {"a": 3, "b": 2}).eval()
    out = model(batch["hidden_states"], batch["attention_mask"])
    assert list(out) == ["a", "b", "score"] and out["score"].shape == (4,) and out["a"].shape == (4, 3)
    h = model.features(batch["hidden_states"], batch["attention_mask"])
    torch.testing.assert_close(out["score"], h @ model.classifier["score"].weight[0] + model.classifier["score"].bias)
    plain_out = plain(batch["hidden_states"], batch["attention_mask"])  # the same seed: the same tasks' heads
    torch.testing.assert_close(out["a"], plain_out["a"])
    assert model.classifier["score"].bias.item() == 0 and float(model.classifier["score"].weight.detach().std()) < 0.05
    assert train.count_parameters(model) == train.count_parameters(plain) + 16 + 1
    groups = train.param_groups(model, head_lr=1e-3)  # head_lr reaches the score head too
    assert {id(p) for g in groups[2:] for p in g["params"]} >= {id(p) for p in model.classifier["score"].parameters()}
    for bad in (3, {"score": 2}):
        with pytest.raises(ValueError, match="num_labels must be a dict"):
            rg.ScoredTopLayers(bert, 1, bad)


def test_scored_loss_adds_the_weighted_score_loss_to_the_tasks_losses():
    outputs = {"a": torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), "score": torch.tensor([1.0, -1.0])}
    batch = {"labels": torch.tensor([[0], [IGNORE_INDEX]]), "score": torch.tensor([0.0, 1.0])}
    ce = -math.log(math.exp(2) / (math.exp(2) + 2))  # report 0 only: report 1 has no label for a
    out = rg.scored_loss(outputs, batch, weight=0.5)  # MSE (1 + 4) / 2 = 2.5
    assert math.isclose(float(out["a_loss"]), ce, rel_tol=1e-6) and math.isclose(float(out["score_loss"]), 2.5)
    assert math.isclose(float(out["loss"]), ce + 0.5 * 2.5, rel_tol=1e-6)
    huber = rg.scored_loss(outputs, batch, kind="huber", task_weights={"a": 2.0})  # (0.5 + 1.5) / 2
    assert math.isclose(float(huber["loss"]), 2 * ce + 1.0, rel_tol=1e-6)


# ---------------------------------------------------------------- training and evaluation


def test_fit_scored_learns_the_score_and_weight_zero_is_the_classification_model():
    bert = tiny_bert()
    data = toy_scored_states(bert, n=64, top_keys_values=True)
    scale = rg.ScoreScale.of(data.scores)
    z = rg.ScoredStates.of(data, scale.to_z(data.scores).tolist())
    config = train.TrainConfig(lr=3e-2, epochs=8, batch_size=8, warmup_ratio=0.0, seed=1)
    torch.manual_seed(0)
    model = rg.ScoredTopLayers(bert, 1, {"a": 3, "b": 2}, dropout=0.0, train_keys_values=False)
    before = rg.evaluate_scored(model, z, scale)["score"]
    result = rg.fit_scored(model, z, config, progress=False)
    after = rg.evaluate_scored(model, z, scale)
    assert after["score"]["rmse"] < 0.5 * before["rmse"], (before, after["score"])
    assert {"train_loss", "train_score_loss", "train_a_loss"} <= set(result.history[-1])
    assert set(after) == {"a", "b", "score"} and after["b"]["n"] == 64 - 22  # every third b label is missing
    # weight 0: the same training as the classification model alone (the score head takes no part)
    torch.manual_seed(0)
    zero = rg.ScoredTopLayers(bert, 1, {"a": 3, "b": 2}, train_keys_values=False)
    rg.fit_scored(zero, z, config, weight=0.0, progress=False)
    torch.manual_seed(0)
    alone = frozen.TopLayers(bert, 1, {"a": 3, "b": 2}, train_keys_values=False)
    mt.fit_multitask(alone, frozen.HiddenStates(z.states, z.labels, z.tasks), None, config, progress=False)
    for t in ("a", "b"):
        torch.testing.assert_close(zero.classifier[t].weight, alone.classifier[t].weight)


def test_fit_scored_rejects_bad_arguments_naming_them():
    bert = tiny_bert()
    data = toy_scored_states(bert, n=8)
    model = rg.ScoredTopLayers(bert, 1, {"a": 3, "b": 2})
    for kwargs, match in (({"weight": -1.0}, "weight must be a finite number >= 0"), ({"kind": "l1"}, "kind"),
                          ({"delta": -1.0}, "delta"), ({"task_weights": {"c": 1.0}}, "weights has tasks")):
        with pytest.raises(ValueError, match=match):
            rg.fit_scored(model, data, progress=False, **kwargs)
    with pytest.raises(ValueError, match="train_data.tasks"):
        rg.fit_scored(model, data.select("a"), progress=False)
    with pytest.raises(ValueError, match="train_data must be bertlab.regression.ScoredStates"):
        rg.fit_scored(model, frozen.HiddenStates(data.states, data.labels, data.tasks), progress=False)
    with pytest.raises(ValueError, match="model must be a bertlab.regression.ScoredTopLayers"):
        rg.fit_scored(frozen.TopLayers(bert, 1, {"a": 3, "b": 2}), data, progress=False)


def test_score_metrics_by_hand():
    m = rg.score_metrics(torch.tensor([1.0, 2.0, 3.0, 4.0, 9.0]), [1.0, 2.0, 3.0, 5.0, NAN])
    # errors 0, 0, 0, -1; the target's variance (1-2.75)^2 + ... = 8.75 / 4
    assert m["n"] == 4 and m["mae"] == pytest.approx(0.25) and m["rmse"] == pytest.approx(0.5)
    assert m["spearman"] == pytest.approx(1.0) and m["r2"] == pytest.approx(1 - 0.25 / (8.75 / 4))
    assert rg.score_metrics([3.0, 2.0, 1.0], [1.0, 2.0, 3.0])["spearman"] == pytest.approx(-1.0)
    # ties share their average rank: ranks (1.5, 1.5, 3) against (1, 2, 3), correlation 1.5 / sqrt(1.5 * 2)
    assert rg.score_metrics([1.0, 1.0, 2.0], [1.0, 2.0, 3.0])["spearman"] == pytest.approx(1.5 / math.sqrt(3))
    # the order is what counts, not the values: any increasing map of the predictions keeps rho
    assert rg.score_metrics([0.1, 5.0, 7.0, 100.0], [1.0, 2.0, 3.0, 4.0])["spearman"] == pytest.approx(1.0)
    assert math.isnan(rg.score_metrics([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])["spearman"]), "constant predictions: NaN"
    with pytest.raises(ValueError, match="pred has 2 values but target has 3"):
        rg.score_metrics([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="target must hold at least 2 scores"):
        rg.score_metrics([1.0, 2.0], [1.0, NAN])


def test_severity_from_score_cuts_half_way_between_the_integers():
    got = rg.severity_from_score([-5.0, 0.0, 0.5, 0.51, 2.0, 2.5, 2.51, 8.0])
    assert got.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
