"""The training loop: schedule, parameter groups, clipping, early stopping, determinism, errors, the cache."""
import pytest
import torch
import torch.nn.functional as F

from bertlab import artifacts, cache, train, vocab
from bertlab.model import BertConfig, BertModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_classifier(seed=0, num_labels=3):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    return train.SequenceClassifier(BertModel(cfg), num_labels)


def toy_data(n=48, seed=0):
    """Random token ids; the label is the first token's id mod 3 (learnable, not trivial)."""
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(4, 40, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    return train.TextDataset(ids, [x[0] % 3 for x in ids])


def states_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---------------------------------------------------------------- schedule and optimizer


@pytest.mark.parametrize("step, expected", [(0, 0.0), (1, 0.25), (2, 0.5), (4, 1.0), (7, 0.5), (9, 1 / 6), (10, 0.0), (13, 0.0)])
def test_warmup_linear_values(step, expected):
    assert train.warmup_linear(step, warmup_steps=4, total_steps=10) == pytest.approx(expected)


@pytest.mark.parametrize("warmup, total", [(3, 12), (0, 5), (5, 5)])
def test_scheduler_matches_transformers(warmup, total):
    from transformers import get_linear_schedule_with_warmup

    lrs = []
    for make in (lambda o: train.linear_warmup_scheduler(o, warmup, total),
                 lambda o: get_linear_schedule_with_warmup(o, warmup, total)):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = make(opt)
        seq = []
        for _ in range(total + 2):
            seq.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        lrs.append(seq)
    assert lrs[0] == pytest.approx(lrs[1], abs=1e-12), f"ours {lrs[0]} vs transformers {lrs[1]}"


def test_no_decay_group_is_exactly_biases_and_layernorm_weights():
    model = tiny_classifier()
    model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)  # frozen: in no group
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = train.param_groups(model, weight_decay=0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    got = {names[id(p)] for p in no_decay["params"]}
    expected = {n for n, _ in model.named_parameters() if n.endswith(".bias") or n.endswith("LayerNorm.weight")}
    assert got == expected
    # 3 LayerNorms (embeddings, after attention, after the FFN) x (weight, bias) + 8 Linear biases
    # (query, key, value, attention output, intermediate, output, pooler, classifier)
    assert len(got) == 3 * 2 + 8
    decayed = {names[id(p)] for p in decay["params"]}
    assert "encoder.embeddings.word_embeddings.weight" not in decayed | got
    assert "classifier.weight" in decayed and "encoder.encoder.layer.0.attention.self.query.weight" in decayed
    assert decayed | got | {"encoder.embeddings.word_embeddings.weight"} == set(names.values())


def test_gradient_is_clipped_to_max_norm():
    model = tiny_classifier()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = train.linear_warmup_scheduler(opt, 0, 10)
    batch = toy_data(8).collate([toy_data(8)[i] for i in range(8)])
    loss = train.train_step(model, batch, opt, sched, max_grad_norm=1e-3)["loss"]
    update = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert update.item() == pytest.approx(1e-3, rel=1e-3), "SGD with lr 1 moves the weights by exactly the clipped norm"
    assert loss == pytest.approx(1.0986, abs=0.05), "loss of a fresh 3-class head is about ln 3"
    assert all(p.grad is None for p in model.parameters()), "gradients are zeroed after the step"
    assert sched.get_last_lr()[0] == pytest.approx(0.9), "the scheduler stepped once"


# ---------------------------------------------------------------- data


def test_dynamic_padding_and_fixed_padding():
    data = train.TextDataset([[5, 6, 7], [8], [9, 10]], [0, 1, 2])
    batch = data.collate([data[0], data[1]])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [0, 1] and batch["index"].tolist() == [0, 1]
    assert data.with_padding(6).collate([data[1]])["input_ids"].shape == (1, 6)
    with pytest.raises(ValueError, match="pad_to=2 is shorter"):
        data.with_padding(2)


def test_encode_real_tokenizer_truncates_and_checks_labels():
    from bertlab.pretrained import load_tokenizer

    tok = load_tokenizer()
    data = train.encode(tok, ["VDD droop at 85C " * 40, "ok"], [1, 0], max_length=16, num_labels=2)
    assert [len(x) for x in data.input_ids] == [16, 3]
    assert data.input_ids[1][0] == tok.cls_token_id and data.input_ids[1][-1] == tok.sep_token_id
    with pytest.raises(ValueError, match=r"labels\[1\] is 2, out of range.*0\.\.1"):
        train.encode(tok, ["a", "b"], [0, 2], num_labels=2)
    with pytest.raises(ValueError, match="texts is empty"):
        train.encode(tok, [])
    with pytest.raises(ValueError, match="labels has 1 entries but texts has 2"):
        train.encode(tok, ["a", "b"], [0])


def test_collect_logits_restores_the_dataset_order():
    model = tiny_classifier().eval()
    data = toy_data(20)
    logits, labels = train.collect_logits(model, data, batch_size=6)
    assert labels.tolist() == data.labels
    with torch.no_grad():
        for i in (0, 7, 19):
            alone = model(torch.tensor([data.input_ids[i]]))
            assert torch.allclose(logits[i], alone[0], atol=1e-5), f"item {i} is out of place or wrongly padded"


class SlowVectors(torch.nn.Module):
    """Two vectors per item as a dict (B, H) each, slowly: the pass takes longer than the bar's one-second delay."""

    def __init__(self, seconds=0.0):
        super().__init__()
        self.model, self.seconds = tiny_classifier(), seconds

    def forward(self, input_ids, attention_mask=None):
        import time

        time.sleep(self.seconds)
        h = self.model.encoder(input_ids, attention_mask=attention_mask)[0]  # (B, T, H)
        return {"first": h[:, 0], "last": h[torch.arange(len(h)), attention_mask.sum(1) - 1]}


def test_collect_outputs_shows_a_bar_only_when_asked(capsys):
    data = toy_data(12)
    quiet, batch = train.collect_outputs(SlowVectors(), data, batch_size=4)
    assert capsys.readouterr().err == ""
    shown, _ = train.collect_outputs(SlowVectors(seconds=0.4), data, batch_size=4, progress=True)  # 3 batches, 1.2 s
    assert "outputs" in capsys.readouterr().err, "a pass over a second long must show its bar"
    assert quiet.keys() == shown.keys() == {"first", "last"}
    for k in quiet:
        assert torch.equal(quiet[k], shown[k]), f"{k}: the bar must not change the outputs"
    assert batch["labels"].tolist() == data.labels
    with torch.no_grad():  # in the dataset's order: item 5 alone gives row 5
        alone = SlowVectors().eval()(torch.tensor([data.input_ids[5]]), torch.ones(1, len(data.input_ids[5]), dtype=torch.long))
    assert torch.allclose(quiet["last"][5], alone["last"][0], atol=1e-5)
    with pytest.raises(ValueError, match="progress"):
        train.collect_outputs(SlowVectors(), data, progress="yes")


def test_classification_metrics_hand_computed():
    logits = F.one_hot(torch.tensor([0, 1, 1, 1]), 3).float()
    m = train.classification_metrics(logits, {"labels": torch.tensor([0, 0, 1, 2])})
    # F1 per class: 2/3 (tp 1, fn 1), 1/2 (tp 1, fp 2), 0 (fn 1)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


# ---------------------------------------------------------------- the loop


def test_fit_learns_and_is_deterministic():
    data = toy_data()
    cfg = train.TrainConfig(lr=1e-2, epochs=6, batch_size=8, patience=None)
    a, b, c = tiny_classifier(), tiny_classifier(), tiny_classifier()
    ra = train.fit(a, data, data, cfg, progress=False)
    train.fit(b, data, data, cfg, progress=False)
    train.fit(c, data, data, train.TrainConfig(lr=1e-2, epochs=6, batch_size=8, patience=None, seed=1), progress=False)
    assert states_equal(a, b), "two runs with one seed must give identical weights"
    assert not states_equal(a, c), "another seed shuffles and drops out differently"
    assert ra.history[-1]["val_accuracy"] > 0.9, ra.history
    assert ra.history[-1]["train_loss"] < ra.history[0]["train_loss"]
    assert len(ra.steps) == 6 * 6 and ra.steps[0]["lr"] == 0.0  # 48 / 8 batches per epoch; warm-up starts at 0
    assert max(s["lr"] for s in ra.steps) == pytest.approx(1e-2)
    assert not a.training, "fit leaves the model in eval mode"


def test_early_stopping_on_a_scripted_validation_curve(monkeypatch, tmp_path):
    curve = [0.5, 0.7, 0.6, 0.65, 0.9, 0.95]
    snapshots = []

    def scripted(model, data, **kw):  # the weights as fit saves them: the trained embedding rows folded back
        snapshots.append({k: v.clone() for k, v in vocab.plain_state_dict(model).items()})
        return {"loss": 1.0, "accuracy": 0.0, "macro_f1": curve[len(snapshots) - 1]}

    monkeypatch.setattr(train, "evaluate", scripted)
    model, data = tiny_classifier(), toy_data(16)
    ckpt = tmp_path / "best.safetensors"
    result = train.fit(model, data, data, train.TrainConfig(lr=1e-2, epochs=6, batch_size=8, patience=2),
                       checkpoint=ckpt, progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4], "2 epochs without improvement after epoch 2"
    assert result.stopped_early and result.best_epoch == 2 and result.best_score == 0.7
    saved, meta = cache.load_state(ckpt)
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshots[1][name]), f"{name}: the model must hold epoch 2's weights"
        assert torch.equal(saved[name], snapshots[1][name]), f"{name}: the checkpoint must hold epoch 2's weights"
    assert meta["epoch"] == 2


def test_early_stopping_modes():
    stop = train.EarlyStopping(patience=1, mode="min")
    assert stop.update(1.0) and not stop.update(1.0) and stop.stop and stop.best_epoch == 1
    never = train.EarlyStopping(patience=None)
    assert all(not never.update(0.0) or i == 0 for i in range(5)) and not never.stop


def test_bad_arguments_name_the_argument():
    model = tiny_classifier()
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        train.TrainConfig(lr=0)
    with pytest.raises(ValueError, match="lr must be"):
        train.TrainConfig(lr=-1e-5)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        train.TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="config.metric 'f1' is not among the validation scores"):
        train.fit(model, toy_data(8), toy_data(8), train.TrainConfig(metric="f1"), progress=False)
    with pytest.raises(ValueError, match="train is empty"):
        train.fit(model, train.TextDataset([], []), progress=False)
    with pytest.raises(ValueError, match=r"train.labels\[1\] is 3, out of range"):
        train.fit(model, train.TextDataset([[5], [6]], [0, 3]), progress=False)
    with pytest.raises(ValueError, match=r"validation.labels\[0\] is -1"):
        train.fit(model, toy_data(8), train.TextDataset([[5]], [-1]), progress=False)
    with pytest.raises(ValueError, match="warmup_steps must be an int in 0..10"):
        train.linear_warmup_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1), 11, 10)


# ---------------------------------------------------------------- the shared model


def test_finetuned_classifier_trains_once_then_loads(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
    small = dict(n_train=16, n_val=8, n_test=8, max_length=32, batch_size=8, epochs=1)
    model, tok, info = artifacts.finetuned_classifier(progress=False, **small)
    again, _, info2 = artifacts.finetuned_classifier(progress=False, **small)
    assert (info["cached"], info2["cached"]) == (False, True)
    assert states_equal(model, again)
    assert info["label_names"][0] == "voltage_degradation" and len(info["label_names"]) == 8
    assert len(info["history"]) == 1 and info["history"][0]["epoch"] == 1
    probs = train.predict_proba(again, tok, ["VDD_CORE sagged to 0.91V under load", "ok"], max_length=32)
    assert probs.shape == (2, 8) and torch.allclose(probs.sum(-1), torch.ones(2))
    with pytest.raises(TypeError, match="unknown settings"):
        artifacts.finetuned_classifier(n_epochs=3)
    with pytest.raises(ValueError, match="task must be one of"):
        artifacts.finetuned_classifier(task="colour")


def test_length_grouped_batches_cover_every_item_once_with_little_padding():
    lengths = [int(x) for x in torch.randint(3, 120, (200,), generator=torch.Generator().manual_seed(0))]
    sampler = train.LengthGroupedBatches(lengths, 8, torch.Generator().manual_seed(1), chunk_batches=5)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 25
    assert sorted(i for b in batches for i in b) == list(range(200)), "each item exactly once per epoch"
    def padded(bs):
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)

    random_batches = torch.randperm(200, generator=torch.Generator().manual_seed(1)).view(25, 8).tolist()
    # lengths uniform in 3..119: random batches of 8 pad to about 7/9 of 119 (+70%), sorted chunks of 40 far less
    assert padded(batches) < 1.25 * sum(lengths) < padded(random_batches) / 1.3
    again = list(train.LengthGroupedBatches(lengths, 8, torch.Generator().manual_seed(1), chunk_batches=5))
    assert again == batches, "deterministic for a seed"
    assert list(sampler) != batches, "a new order each epoch"


def test_head_learning_rate_groups():
    model = tiny_classifier()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = train.param_groups(model, 0.01, head_lr=1e-3)
    assert len(groups) == 4
    head = {names[id(p)] for g in groups if g.get("lr") == 1e-3 for p in g["params"]}
    assert head == {"classifier.weight", "classifier.bias"}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert no_decay == {n for n in names.values() if n.endswith(".bias") or n.endswith("LayerNorm.weight")}
    opt = torch.optim.AdamW(groups, lr=5e-5)
    sched = train.linear_warmup_scheduler(opt, 2, 4)
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2.5e-5, 2.5e-5, 5e-4, 5e-4]), "one multiplier for every group"
    with pytest.raises(ValueError, match="head_lr must be"):
        train.TrainConfig(head_lr=0)


# ---------------------------------------------------------------- only the used embedding rows trainable


def _low_id_data(n=48, seed=0):
    """Token ids 4..29 only: rows 30..39 of the tiny vocabulary are never used."""
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(4, 30, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    return train.TextDataset(ids, [x[0] % 3 for x in ids])


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_only_used_rows_trainable_trains_the_same(weight_decay):
    data = _low_id_data()
    cfg = train.TrainConfig(lr=1e-2, epochs=3, batch_size=8, patience=None, weight_decay=weight_decay)
    full, rows, inside = tiny_classifier(), tiny_classifier(), tiny_classifier()
    before = rows.encoder.embeddings.word_embeddings.weight.detach().clone()
    train.fit(full, data, data, cfg, progress=False)  # the default: the whole table
    embedding = rows.encoder.embeddings.word_embeddings
    train.fit(rows, data, data, train.TrainConfig(**{**cfg.__dict__, "used_embedding_rows_only": True}), progress=False)
    assert rows.encoder.embeddings.word_embeddings is embedding, "the model's own nn.Embedding is put back"
    with vocab.only_used_rows_trainable(inside, data.input_ids):  # the same, by hand
        assert inside.encoder.embeddings.word_embeddings is not embedding
        assert train.count_parameters(inside) == train.count_parameters(full) - (40 - 26) * 16, \
            "26 used ids (4..29) of 40: 14 rows of 16 fewer trainable weights"
        train.fit(inside, data, data, cfg, progress=False)
    assert states_equal(rows, inside), "the flag and the context manager by hand train the same"
    a, b = full.state_dict(), rows.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        if name.endswith("word_embeddings.weight"):
            torch.testing.assert_close(y[4:30], x[4:30], atol=1e-5, rtol=1e-4, msg="used rows: the same training")
            assert not torch.equal(y[4:30], before[4:30]), "the used rows were trained"
            unused = [*range(4), *range(30, 40)]
            assert torch.equal(y[unused], before[unused]), "rows no report uses stay as they were"
            if weight_decay == 0:
                torch.testing.assert_close(x[unused], before[unused], msg="without decay plain training leaves them too")
            else:
                assert x[unused].abs().sum() < before[unused].abs().sum(), "plain AdamW decays even unused rows"
        else:
            torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4, msg=name)


def test_only_used_rows_trainable_puts_the_rows_back_after_an_error():
    data = _low_id_data()
    model = tiny_classifier()
    embedding = model.encoder.embeddings.word_embeddings
    before = embedding.weight.detach().clone()
    with pytest.raises(RuntimeError, match="interrupted"):
        with vocab.only_used_rows_trainable(model, data.input_ids):
            with torch.no_grad():
                model.encoder.embeddings.word_embeddings.rows.add_(1.0)
            raise RuntimeError("interrupted")
    assert model.encoder.embeddings.word_embeddings is embedding
    assert embedding.weight.requires_grad and isinstance(embedding.weight, torch.nn.Parameter)
    assert torch.equal(embedding.weight[5], before[5] + 1) and torch.equal(embedding.weight[35], before[35]), \
        "the rows changed inside the block are written back, the others kept"
    out = model(torch.tensor([[5, 6, 35]]), torch.ones(1, 3, dtype=torch.long))
    assert out.shape == (1, 3)
    with pytest.raises(TypeError, match="word_embeddings"):
        with vocab.only_used_rows_trainable(torch.nn.Linear(2, 2), data.input_ids):
            pass
    with pytest.raises(ValueError, match="token ids in 0..39"):
        with vocab.only_used_rows_trainable(model, [[3, 41]]):
            pass


# ---------------------------------------------------------------- models with other outputs, no wrappers


class TokenTagger(torch.nn.Module):
    """A tiny BERT and a linear layer per token: logits (B, T, C)."""

    def __init__(self, num_labels=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=32, max_position_embeddings=32))
        self.classifier = torch.nn.Linear(16, num_labels)

    def forward(self, input_ids, attention_mask=None):
        return self.classifier(self.encoder(input_ids, attention_mask=attention_mask)[0])  # (B, T, C)


def test_fit_trains_a_token_tagger_with_the_default_loss():
    """Per-token labels (the token's id mod 3), IGNORE_INDEX on the first token of each text."""
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(4, 40, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist() for _ in range(64)]
    tags = [[train.IGNORE_INDEX] + [i % 3 for i in x[1:]] for x in ids]
    data, val = train.TextDataset(ids[:48], tags[:48]), train.TextDataset(ids[48:], tags[48:])
    batch = data.collate([data[0], data[1]])
    assert batch["labels"].shape == batch["input_ids"].shape and (batch["labels"][:, 0] == train.IGNORE_INDEX).all()
    model = TokenTagger()
    before = train.evaluate(model, val)
    result = train.fit(model, data, val, train.TrainConfig(lr=1e-2, epochs=3, batch_size=8, patience=None), progress=False)
    after = train.evaluate(model, val)
    assert result.history[-1]["train_loss"] < 0.5 * result.history[0]["train_loss"], result.history
    assert before["accuracy"] < 0.6 < 0.9 < after["accuracy"], (before, after)
    # The accuracy counts the labelled tokens only: what the argmax of the outputs gives on them.
    outputs, full = train.collect_outputs(model, val)
    keep = full["labels"] != train.IGNORE_INDEX
    assert keep.sum() == sum(len(x) - 1 for x in ids[48:])
    assert after["accuracy"] == pytest.approx((outputs.argmax(-1)[keep] == full["labels"][keep]).float().mean().item())


class SpanFinder(torch.nn.Module):
    """Extractive QA: a start and an end score per token, as a dict (no wrapper packing them into one tensor)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=32, max_position_embeddings=32))
        self.qa = torch.nn.Linear(16, 2)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        h = self.encoder(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]  # (B, T, H)
        start, end = self.qa(h).unbind(-1)  # (B, T) each
        return {"start_logits": start, "end_logits": end}


def span_loss(outputs, batch):
    """The mean of the start and end cross-entropies (as transformers' BertForQuestionAnswering)."""
    pad = batch["attention_mask"] == 0
    start, end = (outputs[k].masked_fill(pad, -1e4) for k in ("start_logits", "end_logits"))
    return {"loss": (F.cross_entropy(start, batch["start_positions"]) + F.cross_entropy(end, batch["end_positions"])) / 2,
            "start": F.cross_entropy(start, batch["start_positions"]), "end": F.cross_entropy(end, batch["end_positions"])}


def span_match(outputs, batch):
    pad = batch["attention_mask"] == 0  # validation outputs are padded to the longest text of the whole set
    start = outputs["start_logits"].masked_fill(pad, -1e4).argmax(-1)
    end = outputs["end_logits"].masked_fill(pad, -1e4).argmax(-1)
    return {"exact": ((start == batch["start_positions"]) & (end == batch["end_positions"])).float().mean().item()}


def qa_data(n, seed):
    """[CLS] q q [SEP] context [SEP]: the answer starts at token 4 and ends at token 5, placed in the context."""
    g = torch.Generator().manual_seed(seed)
    ids, types, starts, ends = [], [], [], []
    for _ in range(n):
        context = torch.randint(6, 40, (int(torch.randint(5, 14, (1,), generator=g)),), generator=g).tolist()
        s = int(torch.randint(0, len(context) - 1, (1,), generator=g))
        e = int(torch.randint(s + 1, len(context), (1,), generator=g))
        context[s], context[e] = 4, 5
        question = torch.randint(6, 40, (2,), generator=g).tolist()
        ids.append([1, *question, 2, *context, 2])
        types.append([0] * 4 + [1] * (len(context) + 1))
        starts.append(4 + s)
        ends.append(4 + e)
    return train.TextDataset(ids, token_type_ids=types).with_fields(start_positions=starts, end_positions=ends)


def test_fit_trains_extractive_qa_with_a_loss_of_outputs_and_batch():
    data, val = qa_data(64, seed=0), qa_data(32, seed=1)
    batch = data.collate([data[0], data[1]])
    assert batch["token_type_ids"].shape == batch["input_ids"].shape and batch["start_positions"].shape == (2,)
    model = SpanFinder()
    before = train.evaluate(model, val, loss_fn=span_loss, metrics_fn=span_match)
    result = train.fit(model, data, val, train.TrainConfig(lr=1e-2, epochs=3, batch_size=8, patience=None, metric="exact"),
                       loss_fn=span_loss, metrics_fn=span_match, progress=False)
    assert before["exact"] < 0.2 and result.history[-1]["val_exact"] > 0.9, result.history
    assert {"train_loss", "train_start", "train_end", "val_loss", "val_exact"} <= set(result.history[-1])
    assert {"loss", "start", "end"} <= set(result.steps[0]), "the loss's parts are logged per step"
    assert result.history[-1]["train_loss"] == pytest.approx(
        (result.history[-1]["train_start"] + result.history[-1]["train_end"]) / 2, rel=1e-5)


def test_the_default_loss_and_metrics_take_a_model_output():
    from transformers.modeling_outputs import SequenceClassifierOutput

    z, y = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]]), torch.tensor([0, 1])
    out = SequenceClassifierOutput(logits=z)
    assert train.cross_entropy(out, {"labels": y}).item() == pytest.approx(F.cross_entropy(z, y).item())
    assert train.classification_metrics(out, {"labels": y})["accuracy"] == 0.5

    class Typed(torch.nn.Module):  # returns what transformers' heads return
        def __init__(self):
            super().__init__()
            self.inner = tiny_classifier()

        def forward(self, input_ids, attention_mask=None):
            return SequenceClassifierOutput(logits=self.inner(input_ids, attention_mask))

    typed, plain, data = Typed(), tiny_classifier(), toy_data()
    cfg = train.TrainConfig(lr=1e-2, epochs=2, batch_size=8, patience=None)
    ra, rb = train.fit(typed, data, data, cfg, progress=False), train.fit(plain, data, data, cfg, progress=False)
    assert states_equal(typed.inner, plain), "a ModelOutput of the same logits trains the same weights"
    assert ra.history[-1]["val_accuracy"] == rb.history[-1]["val_accuracy"]


def test_max_steps_and_eval_every_with_a_dataloader_and_a_validation_function():
    data = toy_data()  # 48 items: 6 batches of 8 per pass
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, collate_fn=data.collate,
                                         generator=torch.Generator().manual_seed(0))
    calls = []

    def validation(model):
        calls.append(model.training)
        return {"score": float(len(calls))}  # improves every time

    result = train.fit(tiny_classifier(), loader, validation, train.TrainConfig(max_steps=14, eval_every=4, metric="score"),
                       progress=False)
    assert [s["step"] for s in result.steps] == list(range(1, 15)), "exactly max_steps steps, cycling through the data"
    assert [s["epoch"] for s in result.steps] == [1] * 6 + [2] * 6 + [3] * 2
    assert [r["step"] for r in result.history] == [4, 8, 12, 14], "every eval_every steps, and after the last"
    assert len(calls) == 4 and result.best_score == 4.0 and not result.stopped_early
    assert all(r["val_score"] == i + 1 for i, r in enumerate(result.history))


def test_make_accelerator_switches_precision_in_one_process():
    # Accelerate's process-wide state refuses a second precision; a notebook may train with and without one.
    assert train.make_accelerator("no", device="cpu").mixed_precision == "no"
    assert train.make_accelerator("bf16", device="cpu").mixed_precision == "bf16"
    assert train.make_accelerator("no", device="cpu").mixed_precision == "no"
