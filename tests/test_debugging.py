"""The checks of notebook 12 on known-good and known-broken set-ups (tiny models: seconds)."""
import copy
import math

import pytest
import torch
import torch.nn as nn

from bertlab import debugging, train
from bertlab.model import BertConfig, BertModel


def tiny(seed=0, labels=4):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return train.SequenceClassifier(BertModel(cfg), labels, dropout=0.0)


def batch(n=8, T=10, seed=0, labels=4):
    g = torch.Generator().manual_seed(seed)
    b = {"input_ids": torch.randint(5, 50, (n, T), generator=g), "attention_mask": torch.ones(n, T, dtype=torch.long),
         "labels": torch.randint(0, labels, (n,), generator=g)}
    b["attention_mask"][0, T // 2:] = 0
    return b


def test_loss_at_init_is_ln_c_for_a_fresh_head_and_fails_for_a_confident_one():
    model, b = tiny(), batch()
    good = debugging.loss_at_init(model, b, 4)
    assert good.ok and abs(good.value - math.log(4)) < 0.25 * math.log(4), good
    with torch.no_grad():
        model.classifier.weight.mul_(500)  # a head that starts confident
    bad = debugging.loss_at_init(model, b, 4)
    assert not bad.ok and bad.value > 2 * math.log(4), bad
    assert "FAIL" in str(bad) and "ln C" in str(bad)


def test_loss_at_init_restores_the_mode():
    model = tiny().train()
    debugging.loss_at_init(model, batch(), 4)
    assert model.training


class FixedLogits(nn.Module):
    """Logits that give the true class probability p: the cross-entropy is exactly -ln p."""

    def __init__(self, labels, num_labels, p):
        super().__init__()
        logits = torch.full((len(labels), num_labels), math.log((1 - p) / (num_labels - 1)))
        logits[torch.arange(len(labels)), labels] = math.log(p)
        self.register_buffer("logits", logits)

    def forward(self, input_ids, attention_mask=None):
        return self.logits[: len(input_ids)]


@pytest.mark.parametrize("num_labels, shift, ok", [(8, 0.4, True), (8, -0.4, True), (2, 0.2, False), (100, 1.0, True),
                                                   (100, 1.3, False)])
def test_loss_at_init_band_is_relative_to_ln_c(num_labels, shift, ok):
    # ln 8 = 2.08: 0.4 off is inside 25% of it (an absolute band of 0.25 would fail it); ln 2 = 0.69: 0.2 off is
    # outside (an absolute band would pass it); ln 100 = 4.61: 1.0 inside, 1.3 outside.
    b = batch(labels=num_labels)
    model = FixedLogits(b["labels"], num_labels, math.exp(-(math.log(num_labels) + shift)))
    verdict = debugging.loss_at_init(model, b, num_labels)
    assert verdict.ok is ok and abs(verdict.value - (math.log(num_labels) + shift)) < 1e-5, verdict


def test_gradient_flow_runs_in_train_mode_where_a_dropout_of_1_cuts_every_gradient():
    # p = 1 (a keep-probability where a drop-probability belongs) zeroes the head's input in training only:
    # a backward pass in eval mode would see every gradient.
    model, b = tiny().eval(), batch()
    model.dropout.p = 1.0
    verdict = debugging.gradient_flow(model, b)
    assert not verdict.ok and verdict.value > 10 and "all zero" in verdict.detail, verdict
    assert not model.training, "the mode is restored"


def test_overfit_one_batch_passes_a_working_model_and_fails_frozen_or_shuffled_labels():
    model, b = tiny(), batch()
    before = copy.deepcopy(model.state_dict())
    good = debugging.overfit_one_batch(model, b, steps=40, lr=1e-2)
    assert good.ok and good.value < 0.1, good
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the check must train a copy"
    for p in model.parameters():  # nothing trains: the loss stays near ln C
        p.requires_grad_(False)
    model.classifier.bias.requires_grad_(True)
    bad = debugging.overfit_one_batch(model, b, steps=40, lr=1e-2)
    assert not bad.ok and bad.value > 0.5, bad
    # the same input for every report, different labels: cannot be memorised
    same = {**b, "input_ids": b["input_ids"][:1].repeat(8, 1), "attention_mask": torch.ones(8, 10, dtype=torch.long)}
    assert not debugging.overfit_one_batch(tiny(), same, steps=40, lr=1e-2).ok


def test_gradient_flow_names_detached_and_nan_parameters():
    model, b = tiny(), batch()
    good = debugging.gradient_flow(model, b)
    assert good.ok and good.value == 0, good
    assert all(p.grad is None for p in model.parameters()), "the check must clear the gradients"

    class Detached(nn.Module):  # the head reads a detached encoder: no gradient reaches it
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask=None):
            h = self.m.encoder(input_ids, attention_mask=attention_mask)[0].detach()
            return self.m.classifier(h[:, 0])

    bad = debugging.gradient_flow(Detached(tiny()), b, unused=("m.encoder.pooler.",))
    assert not bad.ok and bad.value > 10 and "no gradient" in bad.detail and "m.encoder.embeddings" in bad.detail, bad
    nan = tiny()
    with torch.no_grad():
        nan.classifier.weight[0, 0] = float("nan")
    v = debugging.gradient_flow(nan, b)
    assert not v.ok and "NaN" in v.detail, v


def test_gradient_flow_skips_frozen_parameters_and_rejects_a_string():
    model = tiny()
    model.encoder.embeddings.requires_grad_(False)
    assert debugging.gradient_flow(model, batch()).ok
    with pytest.raises(ValueError, match="unused"):
        debugging.gradient_flow(model, batch(), unused="encoder.pooler.")


def test_collapsed():
    assert debugging.collapsed(torch.tensor([0, 1, 2, 3, 0, 1]), 4).ok
    v = debugging.collapsed(torch.tensor([2] * 9 + [1]), 4)
    assert not v.ok and v.value == pytest.approx(0.9) and "class 2" in v.detail
    logits = torch.zeros(5, 3)
    logits[:, 1] = 1
    assert not debugging.collapsed(logits, 3).ok
    with pytest.raises(ValueError, match="max_share"):
        debugging.collapsed(torch.tensor([0, 1]), 2, max_share=0)
    with pytest.raises(ValueError, match="predictions"):
        debugging.collapsed(torch.tensor([0.5, 0.2]), 2)


def test_leakage_finds_a_copied_report_with_new_ids_and_passes_different_ones():
    train_texts = ["Lot W1234 die 7: gate oxide breakdown at 3.2 V, ruled out metal short, probe card cleaned.",
                   "Wafer 88 shows via voids after CMP; resistance 14 ohm above spec, process engineer notified."]
    test_texts = ["Handler jam at final test, retested the lot and the yield recovered to 98 percent.",
                  "LOT w9999 die 12: Gate oxide breakdown at 2.9 V; ruled out metal short. Probe card cleaned!"]
    v = debugging.leakage(train_texts, test_texts)
    assert not v.ok and v.value == 0.5 and "test[1] ~ train[0]" in v.detail, v
    assert debugging.leakage(train_texts, test_texts[:1]).ok
    with pytest.raises(ValueError, match="test_texts"):
        debugging.leakage(train_texts, "one string")


def test_truncate_ids_keeps_head_tail_or_both():
    ids = [101, *range(1, 11), 102]  # [CLS] 1..10 [SEP]
    assert debugging.truncate_ids(ids, 6, "head") == [101, 1, 2, 3, 4, 102]
    assert debugging.truncate_ids(ids, 6, "tail") == [101, 7, 8, 9, 10, 102]
    assert debugging.truncate_ids(ids, 6, "head+tail", head=0.5) == [101, 1, 2, 9, 10, 102]
    assert debugging.truncate_ids(ids, 20, "tail") == ids
    with pytest.raises(ValueError, match="strategy"):
        debugging.truncate_ids(ids, 6, "middle")


class WordTokenizer:
    """Whitespace tokens as ids (1 + position in a fixed vocabulary): enough for the truncation check."""
    unk_token_id = 0

    def __init__(self, words):
        self.vocab = {w: i + 3 for i, w in enumerate(words)}

    def __call__(self, texts, add_special_tokens=True):
        def one(t):
            ids = [self.vocab.get(w, self.unk_token_id) for w in t.split()]
            return [1, *ids, 2] if add_special_tokens else ids
        return {"input_ids": [one(t) for t in texts] if isinstance(texts, list) else one(texts)}


def test_truncation_says_when_the_cut_loses_the_sentence_the_label_needs():
    words = "a b c d e f g h verdict short".split()
    tok = WordTokenizer(words)
    texts = ["a b c d e f g h verdict short"] * 4
    head = debugging.truncation(tok, texts, 6, needles=["verdict short"] * 4, strategy="head")
    tail = debugging.truncation(tok, texts, 6, needles=["verdict short"] * 4, strategy="tail")
    assert not head.ok and head.value == 1.0, head
    assert tail.ok and tail.value == 0.0, tail
    assert debugging.truncation(tok, texts, 20).ok
    assert debugging.unk_share(tok, ["a b zzz yyy"]) == 0.5


def test_accumulation_step_equals_the_large_batch_step_even_with_an_uneven_last_batch():
    b = batch(n=7)
    parts = [{k: v[:3] for k, v in b.items()}, {k: v[3:6] for k, v in b.items()}, {k: v[6:] for k, v in b.items()}]
    runs = []
    for step in ("large", "accumulated"):
        model = tiny(1)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        for _ in range(3):
            loss = (train.train_step(model, b, opt, sched, max_grad_norm=0.5)["loss"] if step == "large"
                    else debugging.accumulation_step(model, parts, opt, sched, max_grad_norm=0.5))
        runs.append((loss, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == pytest.approx(runs[1][0], abs=1e-5)
    for p, q in zip(runs[0][1], runs[1][1]):
        assert torch.allclose(p, q, atol=1e-5)
    # a plain mean of the three micro-batch losses is not the large batch's loss
    model = tiny(1)
    with torch.no_grad():
        plain = sum(float(train.cross_entropy(model(x["input_ids"], x["attention_mask"]), x)) for x in parts) / 3
        full = float(train.cross_entropy(model(b["input_ids"], b["attention_mask"]), b))
    assert abs(plain - full) > 1e-4
    with pytest.raises(ValueError, match="batches"):
        debugging.accumulation_step(model, b, opt, sched)


def test_mixed_precision_helpers():
    assert debugging.precision_for("cpu") == torch.bfloat16
    assert not debugging.grad_scaler("cpu").is_enabled()
    small = torch.full((10,), 1e-8)
    assert debugging.underflow(small, torch.float16) == 1.0
    assert debugging.underflow(small, torch.bfloat16) == 0.0
    assert debugging.underflow(small * 65536, torch.float16) == 0.0  # what a gradient scaler buys
    model, b = tiny(), batch()
    with debugging.autocast("cpu"):
        out = model(b["input_ids"], b["attention_mask"])
    assert out.dtype == torch.bfloat16
    with debugging.autocast("cpu", enabled=False):
        assert model(b["input_ids"], b["attention_mask"]).dtype == torch.float32


def test_bad_arguments_name_the_argument():
    model, b = tiny(), batch()
    with pytest.raises(ValueError, match="num_labels"):
        debugging.loss_at_init(model, b, 1)
    with pytest.raises(ValueError, match="batch"):
        debugging.loss_at_init(model, {"input_ids": b["input_ids"]}, 4)
    with pytest.raises(ValueError, match="steps"):
        debugging.overfit_one_batch(model, b, steps=0)
    with pytest.raises(ValueError, match="threshold"):
        debugging.leakage(["a"], ["b"], threshold=1.5)
