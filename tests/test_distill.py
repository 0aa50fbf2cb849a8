"""Distillation: the KD loss on hand-computed cases, the student's initialisation, the training loop."""
import math

import pytest
import torch
import torch.nn.functional as F

from bertlab import artifacts, distill, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_teacher(layers=6, seed=0, hf=True):
    """A 6-layer, 16-wide classifier (transformers' BertModel, or the course's own)."""
    torch.manual_seed(seed)
    if hf:
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)
        encoder = BertModel(cfg)
    else:
        from bertlab.model import BertConfig, BertModel

        encoder = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=32))
    return train.SequenceClassifier(encoder, 3).eval()


# ---------------------------------------------------------------- the loss


def by_hand(s, t, y, T, alpha):
    """The loss written out with explicit sums, in float64."""
    s, t = s.double(), t.double()
    p_t = torch.exp(t / T) / torch.exp(t / T).sum(-1, keepdim=True)
    log_p_s = s / T - torch.log(torch.exp(s / T).sum(-1, keepdim=True))
    kl = (p_t * (torch.log(p_t) - log_p_s)).sum(-1).mean()
    ce = -(s - torch.log(torch.exp(s).sum(-1, keepdim=True)))[torch.arange(len(y)), y].mean()
    return alpha * T * T * kl + (1 - alpha) * ce


S = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 4.0, 1.0]])
Tz = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0], [0.0, 3.0, 3.5]])
Y = torch.tensor([0, 2, 1])


@pytest.mark.parametrize("T, alpha", [(1.0, 1.0), (2.0, 1.0), (4.0, 0.5), (1.0, 0.0), (3.0, 0.25), (0.5, 0.9)])
def test_kd_loss_equals_the_formula(T, alpha):
    got = distill.kd_loss(S, Tz, Y, temperature=T, alpha=alpha)
    assert got.dim() == 0
    assert got.item() == pytest.approx(by_hand(S, Tz, Y, T, alpha).item(), rel=1e-5, abs=1e-6)


def test_kd_loss_extremes():
    # alpha = 0: plain cross-entropy, the teacher ignored; alpha = 1: no labels needed.
    assert distill.kd_loss(S, Tz, Y, alpha=0.0).item() == pytest.approx(F.cross_entropy(S, Y).item(), abs=1e-6)
    assert distill.kd_loss(S, Tz * 100, Y, alpha=0.0).item() == pytest.approx(F.cross_entropy(S, Y).item(), abs=1e-6)
    soft = distill.kd_loss(S, Tz, None, temperature=2.0, alpha=1.0)
    assert soft.item() == pytest.approx(by_hand(S, Tz, Y, 2.0, 1.0).item(), rel=1e-5)
    # A student that equals its teacher has no soft loss at any temperature.
    for T in (0.5, 1.0, 5.0):
        assert distill.kd_loss(Tz, Tz, temperature=T, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_t_squared_keeps_gradients_on_scale():
    # Hinton et al.: the soft gradients scale as 1/T^2 for large T; the T^2 factor undoes it.
    s = torch.tensor([[0.3, -0.2, 0.1]], requires_grad=True)
    t = torch.tensor([[0.2, 0.0, -0.3]])
    norms = []
    for T in (5.0, 20.0):
        s.grad = None
        distill.kd_loss(s, t, temperature=T, alpha=1.0).backward()
        norms.append(s.grad.norm().item())
    # With logits small next to T, the gradient tends to (s - t) / C (no T in it).
    assert norms[0] == pytest.approx(norms[1], rel=0.05)
    expected = ((s.detach() - s.detach().mean()) - (t - t.mean())) / 3
    assert norms[1] == pytest.approx(expected.norm().item(), rel=0.05)


def test_no_gradient_into_the_teacher():
    s = S.clone().requires_grad_()
    t = Tz.clone().requires_grad_()
    distill.kd_loss(s, t, Y, temperature=2.0, alpha=0.5).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 0.0}, "temperature"), ({"temperature": -1.0}, "temperature"),
    ({"temperature": math.nan}, "temperature"), ({"temperature": math.inf}, "temperature"),
    ({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha"), ({"alpha": True}, "alpha"),
])
def test_kd_loss_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distill.kd_loss(S, Tz, Y, **kwargs)


def test_kd_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="teacher_logits"):
        distill.kd_loss(S, Tz[:, :2], Y)
    with pytest.raises(ValueError, match="student_logits"):
        distill.kd_loss(S[0], Tz[0], Y)
    with pytest.raises(ValueError, match="labels"):
        distill.kd_loss(S, Tz, Y[:2])
    with pytest.raises(ValueError, match="labels are needed"):
        distill.kd_loss(S, Tz, None, alpha=0.5)


# ---------------------------------------------------------------- the student


@pytest.mark.parametrize("hf", [True, False], ids=["transformers", "bertlab.model"])
def test_student_copies_the_chosen_layers(hf):
    teacher = tiny_teacher(hf=hf)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = distill.student_from_teacher(teacher, [0, 2, 4])
    assert len(student.encoder.encoder.layer) == 3 and student.encoder.config.num_hidden_layers == 3
    assert teacher.encoder.config.num_hidden_layers == 6, "the teacher's config must not change"
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for k, name in enumerate(["0", "2", "4"]):
        for pname, value in s_state.items():
            if pname.startswith(f"encoder.encoder.layer.{k}."):
                source = pname.replace(f"encoder.encoder.layer.{k}.", f"encoder.encoder.layer.{name}.")
                assert torch.equal(value, t_state[source]), f"student {pname} != teacher {source}"
    for pname, value in s_state.items():
        if not pname.startswith("encoder.encoder.layer."):
            assert torch.equal(value, t_state[pname]), f"{pname} (embeddings, pooler, head) must be copied"
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items()), "the teacher was changed"
    # The copies are independent: training the student leaves the teacher alone.
    with torch.no_grad():
        student.encoder.encoder.layer[0].output.dense.weight.add_(1.0)
    assert torch.equal(teacher.state_dict()["encoder.encoder.layer.0.output.dense.weight"],
                       before["encoder.encoder.layer.0.output.dense.weight"])
    assert train.count_parameters(student) < train.count_parameters(teacher)


def test_student_with_every_layer_is_the_teacher():
    teacher = tiny_teacher()
    student = distill.student_from_teacher(teacher, list(range(6))).eval()
    ids = torch.randint(1, 50, (4, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        assert torch.equal(student(ids, mask), teacher(ids, mask))
        # A strict subset computes something else.
        assert not torch.allclose(distill.student_from_teacher(teacher, [0, 5]).eval()(ids, mask), teacher(ids, mask))


@pytest.mark.parametrize("layers", [[], [6], [-1], [2, 1], [1, 1], "01", [0.0]])
def test_student_rejects_bad_layers(layers):
    with pytest.raises(ValueError, match="layers"):
        distill.student_from_teacher(tiny_teacher(), layers)


# ---------------------------------------------------------------- training


def toy_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(4, 50, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    return train.TextDataset(ids, [x[0] % 3 for x in ids])


def test_distill_with_alpha_0_is_training_on_labels():
    data, val = toy_data(), toy_data(24, seed=1)
    config = train.TrainConfig(lr=1e-3, epochs=2, batch_size=16, patience=None, seed=0)
    a = distill.student_from_teacher(tiny_teacher(), [0, 5])
    b = distill.student_from_teacher(tiny_teacher(), [0, 5])
    z = torch.randn(len(data), 3)
    distill.distill(a, z, data, val, config, alpha=0.0, progress=False)
    train.fit(b, data, val, config, progress=False)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), f"{name}: alpha=0 must train exactly as fit on the labels"


def test_distill_pulls_the_student_towards_the_teacher():
    teacher = tiny_teacher(seed=3)
    data, val = toy_data(), toy_data(24, seed=1)
    z = distill.teacher_logits(teacher, data)
    assert z.shape == (len(data), 3)
    z = 10 * z  # a random tiny BERT is unsure of everything: make it a confident teacher
    student = distill.student_from_teacher(teacher, [0])

    def gap():
        s, _ = train.collect_logits(student, data)
        return distill.kd_loss(s, z, temperature=2.0, alpha=1.0).item()

    before = gap()
    result = distill.distill(student, z, data, val, train.TrainConfig(lr=5e-3, epochs=12, batch_size=8, patience=None),
                             temperature=2.0, alpha=1.0, progress=False)
    assert gap() < 0.5 * before, f"soft loss to the teacher went {before:.4f} -> {gap():.4f}"
    assert len(result.history) == 12 and "val_accuracy" in result.history[0]


def test_distillation_loss_reads_the_teacher_logits_of_the_batch():
    from transformers.modeling_outputs import SequenceClassifierOutput

    loss_fn = distill.distillation_loss(temperature=3.0, alpha=0.25)
    batch = {"input_ids": torch.zeros(3, 4, dtype=torch.long), "labels": Y, "teacher_logits": Tz}
    assert loss_fn(S, batch).item() == pytest.approx(by_hand(S, Tz, Y, 3.0, 0.25).item(), rel=1e-5)
    assert loss_fn(SequenceClassifierOutput(logits=S), batch).item() == pytest.approx(loss_fn(S, batch).item())
    # Validation batches carry no teacher logits: the plain cross-entropy, the same for every student.
    assert loss_fn(S, {"labels": Y}).item() == pytest.approx(F.cross_entropy(S, Y).item(), abs=1e-6)
    # alpha = 1 needs no labels.
    soft = distill.distillation_loss(temperature=2.0, alpha=1.0)(S, {"teacher_logits": Tz})
    assert soft.item() == pytest.approx(by_hand(S, Tz, Y, 2.0, 1.0).item(), rel=1e-5)
    for kwargs, match in (({"temperature": 0}, "temperature"), ({"alpha": 2.0}, "alpha")):
        with pytest.raises(ValueError, match=match):
            distill.distillation_loss(**kwargs)


def test_distill_gives_each_report_its_own_teacher_logits(monkeypatch):
    """Shuffled, length-grouped batches: the teacher's logits still travel with their reports."""
    data = toy_data()
    z = torch.zeros(len(data), 3)
    z[:, 0] = torch.arange(len(data), dtype=torch.float)  # row i names report i
    seen = []
    kd = distill.kd_loss

    def spy(student_logits, teacher_logits, labels=None, **kwargs):
        rows = teacher_logits[:, 0].long()
        assert labels.tolist() == [data.labels[i] for i in rows.tolist()], "teacher logits of other reports"
        seen.extend(rows.tolist())
        return kd(student_logits, teacher_logits, labels, **kwargs)

    monkeypatch.setattr(distill, "kd_loss", spy)
    student = distill.student_from_teacher(tiny_teacher(), [0])
    distill.distill(student, z, data, toy_data(8, seed=1), train.TrainConfig(epochs=2, batch_size=8), progress=False)
    assert sorted(seen) == sorted(list(range(len(data))) * 2), "every report once per epoch"


def test_distill_rejects_mismatched_teacher_logits():
    with pytest.raises(ValueError, match="teacher_logits_train"):
        distill.distill(tiny_teacher(), torch.zeros(5, 3), toy_data(), None, progress=False)
    with pytest.raises(ValueError, match="temperature"):
        distill.distill(tiny_teacher(), torch.zeros(64, 3), toy_data(), None, temperature=0, progress=False)
    unlabelled = train.TextDataset(toy_data().input_ids)
    with pytest.raises(ValueError, match="no labels"):
        distill.distill(tiny_teacher(), torch.zeros(64, 3), unlabelled, None, alpha=0.5, progress=False)


# ---------------------------------------------------------------- the hidden-state (cosine) loss


def batch_of(n=4, T=9, seed=0):
    """Token ids (n, T) with reports of different lengths: padding (id 0) after each report's end."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 50, (n, T), generator=g)
    mask = torch.ones_like(ids)
    for b, length in enumerate(torch.randint(3, T + 1, (n,), generator=g).tolist()):
        ids[b, length:], mask[b, length:] = 0, 0
    mask[0] = 1  # one report fills the batch
    return {"input_ids": ids, "attention_mask": mask}


def busy_teacher(seed=0, hf=True):
    """A tiny teacher whose layers change the hidden states a lot (at BERT's initial scale they barely do)."""
    teacher = tiny_teacher(seed=seed, hf=hf)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in teacher.encoder.encoder.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return teacher


def hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def states_of(model, layers, batch):
    with distill.LayerOutputs(model, layers) as rec:
        model(batch["input_ids"], batch["attention_mask"])
        return rec.states()


def test_teacher_layers_for_is_the_output_each_student_layer_stands_for():
    assert distill.teacher_layers_for([0, 2, 4], 6) == [1, 3, 5]  # the student's last layer to the teacher's last
    assert distill.teacher_layers_for([0, 3], 6) == [2, 5]
    assert distill.teacher_layers_for(list(range(6)), 6) == list(range(6))
    assert distill.teacher_layers_for([5], 6) == [5]
    for bad in ([], [6], [2, 1], "01"):
        with pytest.raises(ValueError, match="layers"):
            distill.teacher_layers_for(bad, 6)
    with pytest.raises(ValueError, match="n_teacher"):
        distill.teacher_layers_for([0], 0)


@pytest.mark.parametrize("hf", [True, False], ids=["transformers", "bertlab.model"])
def test_layer_outputs_are_the_hidden_states(hf):
    teacher, batch = tiny_teacher(hf=hf), batch_of()
    hooks = hook_count(teacher)
    with torch.no_grad():
        got = states_of(teacher, [5, 1, 3], batch)
    assert hook_count(teacher) == hooks, "the hooks must be removed after the with block"
    with torch.no_grad():
        if hf:  # transformers' own hidden states: the embeddings, then each layer's output
            want = teacher.encoder(**batch, output_hidden_states=True).hidden_states
            for h, i in zip(got, [5, 1, 3]):
                assert torch.equal(h, want[i + 1]), f"layer {i}"
        else:
            assert torch.equal(got[0], teacher.encoder(**batch)[0]), "the last layer's output is the encoder's output"
    rec = distill.LayerOutputs(teacher, [0])
    with pytest.raises(RuntimeError, match="with block"):
        rec.states()
    with rec, pytest.raises(RuntimeError, match="no forward pass"):
        rec.states()
    with pytest.raises(ValueError, match="layers"):
        distill.LayerOutputs(teacher, [6])
    with pytest.raises(TypeError, match="SequenceClassifier"):
        distill.LayerOutputs(torch.nn.Linear(2, 2), [0])


def test_hidden_loss_is_one_minus_the_cosine_over_real_tokens():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    by_hand = [1 - (s[b, i] @ t[b, i]) / (s[b, i].norm() * t[b, i].norm()) for b, i in ((0, 0), (0, 1), (0, 2), (1, 0))]
    assert distill.hidden_loss([s], [t], mask).item() == pytest.approx(torch.stack(by_hand).mean().item(), abs=1e-6)
    # Two pairs of layers: the mean of the two losses; the length of the vectors does not count.
    two = distill.hidden_loss([s, s], [t, s * 3], mask)
    assert two.item() == pytest.approx(torch.stack(by_hand).mean().item() / 2, abs=1e-6)
    assert distill.hidden_loss([s], [-s], mask).item() == pytest.approx(2.0, abs=1e-6)


def test_hidden_loss_ignores_padding():
    teacher, batch = busy_teacher(seed=1), batch_of()
    student = distill.student_from_teacher(teacher, [0, 2, 4])
    mapping = distill.teacher_layers_for([0, 2, 4], 6)
    with torch.no_grad():
        s, t = states_of(student, range(3), batch), states_of(teacher, mapping, batch)
    pad = batch["attention_mask"] == 0
    assert pad.any()
    noisy = [h.masked_fill(pad[..., None], 1e3) + 0 * h for h in s]  # other vectors where the reports have ended
    base = distill.hidden_loss(s, t, batch["attention_mask"])
    assert distill.hidden_loss(noisy, t, batch["attention_mask"]).item() == pytest.approx(base.item(), abs=1e-6)
    assert distill.hidden_loss(s, [h.masked_fill(pad[..., None], -7.0) for h in t],
                               batch["attention_mask"]).item() == pytest.approx(base.item(), abs=1e-6)


@pytest.mark.parametrize("hf", [True, False], ids=["transformers", "bertlab.model"])
def test_hidden_loss_of_a_copy_is_zero_and_of_a_student_positive(hf):
    teacher, batch = busy_teacher(seed=2, hf=hf), batch_of()
    for layers, zero in ((list(range(6)), True), ([0, 2, 4], False)):
        student = distill.student_from_teacher(teacher, layers).eval()
        with torch.no_grad(), distill.HiddenStatePairs(student, teacher, layers) as pairs:
            student(**batch)
            loss = distill.hidden_loss(*pairs(batch), batch["attention_mask"]).item()
        if zero:
            assert loss == pytest.approx(0.0, abs=1e-6), "a student equal to its teacher has no hidden loss"
        else:
            assert loss > 1e-3, f"a student of 3 of the 6 layers must differ from the teacher, loss {loss:.2e}"


def test_hidden_loss_trains_only_the_student():
    teacher, batch = busy_teacher(seed=3), batch_of()
    student = distill.student_from_teacher(teacher, [0, 2, 4]).train()
    teacher.train()  # HiddenStatePairs runs it in eval mode and puts it back
    with distill.HiddenStatePairs(student, teacher, [0, 2, 4]) as pairs:
        assert not teacher.training
        student(**batch)
        distill.hidden_loss(*pairs(batch), batch["attention_mask"]).backward()
    assert teacher.training, "the teacher must go back to the mode it was in"
    assert all(p.grad is None for p in teacher.parameters()), "no gradient may reach the teacher"
    grads = [p.grad for n, p in student.named_parameters() if ".layer." in n]
    assert grads and all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_hidden_weight_0_is_the_old_loss_exactly():
    batch = {"input_ids": torch.zeros(3, 4, dtype=torch.long), "labels": Y, "teacher_logits": Tz}
    assert distill.distillation_loss(3.0, 0.25, hidden_weight=0.0)(S, batch).item() == \
        distill.distillation_loss(3.0, 0.25)(S, batch).item() == distill.kd_loss(S, Tz, Y, temperature=3.0, alpha=0.25).item()
    data, val = toy_data(), toy_data(24, seed=1)
    config = train.TrainConfig(lr=1e-3, epochs=2, batch_size=16, patience=None, seed=0)
    z = torch.randn(len(data), 3)
    a = distill.student_from_teacher(tiny_teacher(), [0, 5])
    b = distill.student_from_teacher(tiny_teacher(), [0, 5])
    distill.distill(a, z, data, val, config, progress=False)
    result = distill.distill(b, z, data, val, config, hidden_weight=0.0, teacher=tiny_teacher(), layers=[0, 5], progress=False)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), f"{name}: hidden_weight=0 must train exactly as before"
    assert "train_hidden_loss" not in result.history[0]


def test_distill_with_hidden_weight_pulls_the_states_to_the_teacher():
    teacher, data, val = busy_teacher(seed=4), toy_data(), toy_data(24, seed=1)
    z = distill.teacher_logits(teacher, data)
    config = train.TrainConfig(lr=3e-3, epochs=6, batch_size=8, patience=None, seed=0)
    cosines, hooks = {}, hook_count(teacher)
    for w in (0.0, 1.0):
        student = distill.student_from_teacher(teacher, [0, 2, 4])
        result = distill.distill(student, z, data, val, config, hidden_weight=w, teacher=teacher, layers=[0, 2, 4],
                                 progress=False)
        cosines[w] = distill.hidden_cosines(student, teacher, data, [0, 2, 4])
    assert {"train_loss", "train_kd_loss", "train_hidden_loss"} <= set(result.history[0])
    assert result.history[-1]["train_hidden_loss"] < result.history[0]["train_hidden_loss"]
    assert len(cosines[1.0]) == 3 and all(-1 <= c <= 1 for c in cosines[1.0])
    assert sum(cosines[1.0]) > sum(cosines[0.0]) + 0.05, f"cosines with the loss {cosines[1.0]}, without {cosines[0.0]}"
    assert not teacher.training and hook_count(teacher) == hooks, "hooks left on the teacher"


def test_hidden_cosines_of_a_copy_are_one():
    teacher = tiny_teacher(seed=5)
    copy_ = distill.student_from_teacher(teacher, list(range(6)))
    assert distill.hidden_cosines(copy_, teacher, toy_data(20), list(range(6))) == pytest.approx([1.0] * 6, abs=1e-5)


def test_hidden_loss_rejects_bad_input():
    teacher, s = tiny_teacher(), torch.zeros(2, 3, 4)
    mask = torch.ones(2, 3, dtype=torch.long)
    for args_, match in ((([], [], mask), "student_states"), (([s], [s, s], mask), "student_states"),
                         (([s], [s[:, :2]], mask), r"teacher_states\[0\]"), (([s], [s], mask[:, :2]), "attention_mask"),
                         (([s], [s], torch.zeros_like(mask)), "attention_mask"), (([s], [s], mask[0]), "attention_mask")):
        with pytest.raises(ValueError, match=match):
            distill.hidden_loss(*args_)
    with pytest.raises(ValueError, match="layers"):
        distill.HiddenStatePairs(distill.student_from_teacher(teacher, [0, 2]), teacher, [0, 2, 4])
    for w in (-0.1, math.nan, True, "1"):
        with pytest.raises(ValueError, match="hidden_weight"):
            distill.distillation_loss(hidden_weight=w)
    with pytest.raises(ValueError, match="pairs"):
        distill.distillation_loss(hidden_weight=1.0)
    with pytest.raises(ValueError, match="teacher"):
        distill.distill(tiny_teacher(), torch.zeros(64, 3), toy_data(), None, hidden_weight=1.0, progress=False)
    with pytest.raises(ValueError, match="hidden_weight"):
        distill.distill(tiny_teacher(), torch.zeros(64, 3), toy_data(), None, hidden_weight=-1.0, progress=False)


# ---------------------------------------------------------------- the course's student (bertlab.artifacts)


def test_distilled_student_rejects_unknown_settings():
    with pytest.raises(TypeError, match="unknown settings"):
        artifacts.distilled_student(layer=[0])
    with pytest.raises(ValueError, match="alpha"):
        artifacts.distilled_student(alpha=1.5)


def test_distilled_student_cache_key_is_its_settings(monkeypatch):
    """The key holds the teacher's configuration and the student's settings, not the TrainConfig: cached students stay valid."""
    tinfo = {"config": {"fab": "A", "max_length": 32}, "splits": {}, "label_names": ["a", "b", "c"]}
    monkeypatch.setattr(artifacts, "finetuned_classifier", lambda *a, **k: (tiny_teacher(), None, tinfo))
    keys = []

    class Stop(Exception):
        pass

    def cached_state(name, config, build):
        keys.append((name, config))
        raise Stop

    monkeypatch.setattr(artifacts.cache, "cached_state", cached_state)
    for overrides in ({}, {"alpha": 0.0, "layers": (0, 5)}):
        with pytest.raises(Stop):
            artifacts.distilled_student(**overrides)
    assert keys == [("student-failure_type", {"teacher": tinfo["config"], **artifacts.DISTILL_DEFAULTS}),
                    ("student-failure_type", {"teacher": tinfo["config"], **artifacts.DISTILL_DEFAULTS,
                                              "alpha": 0.0, "layers": [0, 5]})]
    # hidden_weight 0 is no setting at all (the students cached before it existed keep their keys); another is one.
    keys.clear()
    for hidden_weight in (0, 0.0, 2):
        with pytest.raises(Stop):
            artifacts.distilled_student(hidden_weight=hidden_weight)
    assert [k for _, k in keys] == [{"teacher": tinfo["config"], **artifacts.DISTILL_DEFAULTS}] * 2 + \
        [{"teacher": tinfo["config"], **artifacts.DISTILL_DEFAULTS, "hidden_weight": 2.0}]
    for bad in (-1.0, math.inf, None):
        with pytest.raises(ValueError, match="hidden_weight"):
            artifacts.distilled_student(hidden_weight=bad)


def test_transfer_reports_are_new_reports_of_the_fab():
    from bertlab.data import make_splits, near_duplicate_key

    args = {"fab": "A", "n_train": 40, "n_val": 20, "n_test": 30, "seed": 0}
    extra = artifacts.transfer_reports(args, 25)
    assert len(extra) == 25 and {r.fab for r in extra} == {"A"}
    splits = make_splits(**args)
    seen = {near_duplicate_key(r.text) for part in splits for r in part}
    assert not seen & {near_duplicate_key(r.text) for r in extra}, "a transfer report repeats a train/val/test report"
    assert len({near_duplicate_key(r.text) for r in extra}) == 25, "transfer reports repeat each other"
    assert [r.text for r in extra] == [r.text for r in make_splits(**{**args, "n_train": 65}).train[40:]]
    for bad in (0, -3, True, 2.5):
        with pytest.raises(ValueError, match="transfer"):
            artifacts.transfer_reports(args, bad)
    with pytest.raises(ValueError, match="transfer"):
        artifacts.distilled_student(transfer=-1)


@pytest.mark.slow
def test_distilled_student_is_cached(tmp_path, monkeypatch):
    """The course's student on the quick teacher: trained once, then loaded with the same weights."""
    monkeypatch.setenv("BERTLAB_CACHE", str(tmp_path))

    def student(**overrides):
        return artifacts.distilled_student(teacher_overrides=artifacts.QUICK, progress=False,
                                           **{**artifacts.DISTILL_QUICK, **overrides})

    first, _, info = student()
    again, _, info2 = student()
    assert not info["cached"] and info2["cached"]
    assert first.encoder.config.num_hidden_layers == len(artifacts.DISTILL_DEFAULTS["layers"])
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu()), f"{name} differs between the trained and the cached student"
    other, _, info3 = student(alpha=0.0)
    assert not info3["cached"], "another alpha is another model: it must not come from the same cache entry"
    more, _, info4 = student(transfer=32)
    assert not info4["cached"] and info4["settings"]["transfer"] == 32
    assert info4["build_seconds"] >= info4["train_seconds"] > 0
    assert not all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(first.state_dict().values(), more.state_dict().values())), \
        "32 more reports to learn from must give another student"
