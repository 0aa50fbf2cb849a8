"""Frozen lower layers (bertlab.frozen): their states equal the full model's, the top layers at [CLS] equal the whole ones."""
import pytest
import torch
import torch.nn as nn

from bertlab import frozen, train
from bertlab.model import BertConfig, BertModel, extended_attention_mask
from bertlab.pretraining import IGNORE_INDEX

M = IGNORE_INDEX


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_bert(layers=3, seed=0):
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=32)).eval()


def toy_data(lengths=(5, 9, 3, 7), seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(4, 40, (n,), generator=g).tolist() for n in lengths]
    return train.TextDataset(ids, [i % 3 for i in range(len(ids))])


def toy_multitask_data(n=64, seed=0):
    """Random token ids; task a = first id mod 3, task b = second id mod 2 but missing for every third text."""
    from bertlab.multitask import MultiTaskDataset

    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(4, 40, (int(torch.randint(3, 10, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    labels = [[x[0] % 3, M if i % 3 == 0 else x[1] % 2] for i, x in enumerate(ids)]
    return MultiTaskDataset(ids, labels, ("a", "b"))


def padded_states(B=4, T=7, H=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, H, generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 4:] = 0  # a shorter report: its padding must not be attended to
    mask[3, 2:] = 0
    return x, mask


# ---------------------------------------------------------------- the states


def test_layer_states_are_the_full_models_hidden_states_from_one_pass():
    bert = tiny_bert()
    bert.train()
    data = toy_data()
    states = frozen.layer_states(bert, data, [3, 0, 2], batch_size=3, progress=False)
    assert sorted(states) == [0, 2, 3] and bert.training, "the model goes back to the mode it was in"
    assert [tuple(s.shape) for s in states[2].states] == [(5, 16), (9, 16), (3, 16), (7, 16)], "unpadded: (T_i, H)"
    bert.eval()
    with torch.no_grad():
        for i, ids in enumerate(data.input_ids):
            x = bert.embeddings(torch.tensor([ids]), torch.zeros(1, len(ids), dtype=torch.long))
            torch.testing.assert_close(states[0].states[i], x[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(states[3].states[i], bert(torch.tensor([ids]))[0][0], atol=1e-5, rtol=0)
            for layer in bert.encoder.layer[:2]:
                x = layer(x)
            torch.testing.assert_close(states[2].states[i], x[0], atol=1e-5, rtol=0)
    # several k in one pass give what separate passes (other batches, other padding) give
    for k in (0, 2, 3):
        alone = frozen.frozen_states(bert, data, k, batch_size=2, progress=False)
        for a, b in zip(states[k].states, alone.states):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert states[3].labels == [0, 1, 2, 0] and states[3].tasks is None


def test_states_keep_the_label_columns_of_a_multitask_dataset_and_select_tasks():
    bert = tiny_bert(layers=2)
    data = toy_multitask_data(12)
    states = frozen.frozen_states(bert, data, 1, progress=False)
    assert len(states) == 12 and states.tasks == ("a", "b") and states.lengths() == data.lengths()
    batch = states.collate([states[i] for i in range(3)])
    assert batch["labels"].tolist() == [data.labels[i] for i in range(3)] and batch["labels"].shape == (3, 2)
    T = max(data.lengths()[:3])
    assert batch["hidden_states"].shape == (3, T, 16) and batch["attention_mask"].tolist()[0] == \
        [1] * data.lengths()[0] + [0] * (T - data.lengths()[0])
    b = states.select("b")
    assert b.tasks == ("b",) and b.labels == [[row[1]] for row in data.labels]
    assert all(x is y for x, y in zip(b.states, states.states)), "select keeps the states, not copies"
    assert states.task_labels("b") == data.task_labels("b")
    sub = states.subset([5, 2]).select(["b", "a"])
    assert sub.labels == [[data.labels[5][1], data.labels[5][0]], [data.labels[2][1], data.labels[2][0]]]
    with pytest.raises(ValueError, match="tasks must be some of"):
        states.select(["c"])
    with pytest.raises(ValueError, match="select needs states with tasks"):
        frozen.frozen_states(bert, toy_data(), 1, progress=False).select("a")


def test_frozen_keys_and_values_sit_beside_the_states():
    bert = tiny_bert(layers=2)
    data = toy_data()
    plain = frozen.frozen_states(bert, data, 1, progress=False)
    kv = frozen.frozen_states(bert, data, 1, top_keys_values=True, progress=False)
    att = bert.encoder.layer[1].attention.self
    with torch.no_grad():
        for x, s in zip(plain.states, kv.states):
            assert s.shape == (len(x), 48), "x, keys and values side by side: 3H"
            torch.testing.assert_close(s, torch.cat([x, att.key(x), att.value(x)], -1), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- the top at [CLS]


def test_top_layer_at_cls_equals_the_whole_layer_at_cls_values_and_gradients():
    layer = tiny_bert(layers=2).encoder.layer[1]
    x, mask = padded_states()
    ext = extended_attention_mask(mask)
    whole = layer(x, ext)[:, :1]
    fast = frozen.top_layer_at_cls(layer, x, ext)
    assert fast.shape == (4, 1, 16)
    torch.testing.assert_close(fast, whole, atol=1e-5, rtol=0)
    grads = []
    for run in (lambda: layer(x, ext)[:, :1], lambda: frozen.top_layer_at_cls(layer, x, ext)):
        layer.zero_grad()
        run().pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in layer.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)
    # padding is masked: changing a padded position of report 1 leaves its [CLS] output alone
    x2 = x.clone()
    x2[1, 5] += 10.0
    torch.testing.assert_close(frozen.top_layer_at_cls(layer, x2, ext)[1], fast[1].detach())


@pytest.mark.parametrize("n_frozen", [0, 1, 2, 3])
def test_top_layers_on_frozen_states_equal_the_whole_model(n_frozen):
    bert = tiny_bert()
    data = toy_data()
    states = frozen.frozen_states(bert, data, n_frozen, batch_size=2, progress=False)
    top = frozen.TopLayers(bert, n_frozen, num_labels=3, dropout=0.0).eval()
    assert len(top.layers) == 3 - n_frozen and top.num_labels == 3 and top.tasks is None
    assert all(a is not b for a, b in zip(top.layers, bert.encoder.layer[n_frozen:])), "the top layers are copies"
    batch = states.collate([states[i] for i in range(len(data))])
    whole = data.collate([data[i] for i in range(len(data))])
    with torch.no_grad():
        got = top(batch["hidden_states"], batch["attention_mask"])
        expected = top.classifier(bert(whole["input_ids"], whole["attention_mask"])[0][:, 0])  # (B, C)
    assert got.shape == (4, 3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    logits, labels = train.collect_logits(top, states, batch_size=3)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert labels.tolist() == [0, 1, 2, 0]


def test_a_mapping_of_tasks_gives_one_head_each_and_a_dict_of_logits():
    from bertlab.multitask import MultiTaskModel

    bert = tiny_bert(layers=2)
    x, mask = padded_states()
    torch.manual_seed(5)
    model = frozen.TopLayers(bert, 1, {"severity": 3, "action": 6}).eval()
    torch.manual_seed(5)
    ref = MultiTaskModel(bert, {"severity": 3, "action": 6})
    out = model(x, mask)
    assert isinstance(out, dict) and list(out) == ["severity", "action"] and out["action"].shape == (4, 6)
    assert model.tasks == ("severity", "action") and isinstance(model.classifier, nn.ModuleDict)
    h = bert.encoder.layer[1](x, extended_attention_mask(mask))[:, 0]  # the whole top layer, [CLS] kept
    for t in out:
        torch.testing.assert_close(model.classifier[t].weight, ref.classifier[t].weight)  # MultiTaskModel's init
        torch.testing.assert_close(out[t], model.classifier[t](h), atol=1e-5, rtol=0)
    assert train.count_parameters(model) == train.count_parameters(bert.encoder.layer[1]) + 17 * 3 + 17 * 6
    groups = train.param_groups(model, head_lr=1e-3)  # head_lr reaches every head
    assert {id(p) for g in groups[2:] for p in g["params"]} == {id(p) for p in model.classifier.parameters()}


def test_frozen_keys_and_values_give_the_same_model_and_train_only_the_cls_path():
    bert = tiny_bert(layers=2)
    data = toy_data()
    plain = frozen.frozen_states(bert, data, 1, progress=False)
    kv = frozen.frozen_states(bert, data, 1, top_keys_values=True, progress=False)
    torch.manual_seed(0)
    full = frozen.TopLayers(bert, 1, 3).eval()
    fast = frozen.TopLayers(bert, 1, 3, train_keys_values=False).eval()
    fast.load_state_dict(full.state_dict())
    torch.testing.assert_close(train.collect_logits(fast, kv)[0], train.collect_logits(full, plain)[0], atol=1e-5, rtol=0)
    att = fast.layers[0].attention.self
    assert not any(p.requires_grad for p in [*att.key.parameters(), *att.value.parameters()])
    assert train.count_parameters(fast, trainable_only=True) == train.count_parameters(full) - 2 * (16 * 16 + 16)
    key_before = att.key.weight.clone()
    train.fit(fast, kv, None, train.TrainConfig(lr=1e-2, epochs=2, batch_size=2, warmup_ratio=0.0), progress=False)
    assert torch.equal(att.key.weight, key_before), "frozen keys stay as they were"
    with pytest.raises(ValueError, match="width 3H"):
        fast(plain[0]["hidden_states"][None], torch.ones(1, len(data.input_ids[0]), dtype=torch.long))


def test_training_the_top_leaves_bert_alone():
    bert = tiny_bert(layers=2)
    data = toy_data(lengths=[4, 6, 5, 8, 3, 7, 5, 6])
    states = frozen.frozen_states(bert, data, 1, progress=False)
    before = {k: v.clone() for k, v in bert.state_dict().items()}
    top = frozen.TopLayers(bert, 1, 3)
    first = top.layers[0].output.dense.weight.clone()
    train.fit(top, states, None, train.TrainConfig(lr=1e-2, epochs=2, batch_size=4, warmup_ratio=0.0), progress=False)
    assert not torch.equal(top.layers[0].output.dense.weight, first), "the copied top layer trains"
    assert all(torch.equal(v, bert.state_dict()[k]) for k, v in before.items()), "bert itself must not change"


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("n_frozen, num_labels, kwargs, match", [
    (4, 3, {}, r"n_frozen must be an int in 0..3"), (-1, 3, {}, "n_frozen"), (True, 3, {}, "n_frozen"),
    (1, 1, {}, "num_labels must be an int >= 2"), (1, 2.0, {}, "num_labels"), (1, {}, {}, "num_labels"),
    (1, {"a": 1}, {}, r"num_labels\['a'\]"), (1, {"a.b": 2}, {}, "num_labels"),
    (1, 3, {"dropout": 1.0}, "dropout"), (1, 3, {"train_keys_values": False}, "train_keys_values=False needs"),
])
def test_top_layers_rejects_bad_arguments_naming_them(n_frozen, num_labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        frozen.TopLayers(tiny_bert(), n_frozen, num_labels, **kwargs)


def test_states_reject_bad_arguments_naming_them():
    bert, data = tiny_bert(), toy_data()
    for ks, match in (([4], r"ks\[0\] must be an int in 0..3"), ([1, -1], r"ks\[1\]"), ([], "ks is empty")):
        with pytest.raises(ValueError, match=match):
            frozen.layer_states(bert, data, ks, progress=False)
    with pytest.raises(ValueError, match=r"ks\[0\] \(with top_keys_values\) must be an int in 0..2"):
        frozen.layer_states(bert, data, [3], top_keys_values=True, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        frozen.layer_states(bert, data, [1], batch_size=0, progress=False)
    with pytest.raises(ValueError, match=r"n_frozen must be an int in 0..3"):
        frozen.frozen_states(bert, data, 4, progress=False)
    with pytest.raises(TypeError, match="bert must be a bertlab.model.BertModel"):
        frozen.layer_states(nn.Linear(2, 2), data, [1], progress=False)
    with pytest.raises(TypeError, match="bert must be a bertlab.model.BertModel"):
        frozen.TopLayers(nn.Linear(2, 2), 1, 3)
    with pytest.raises(ValueError, match="labels has 1 entries for 2 states"):
        frozen.HiddenStates([torch.zeros(3, 16)] * 2, [0])
    with pytest.raises(ValueError, match="one row of 2 class ids"):
        frozen.HiddenStates([torch.zeros(3, 16)] * 2, [[0, 1], [0]], ("a", "b"))
