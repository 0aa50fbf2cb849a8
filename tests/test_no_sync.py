"""The training step and the losses fit uses never wait for the device (as test_model.py's meta-device test).

A tensor on the meta device has a shape and no values: ``float``, ``.item()``, ``.tolist()``,
``bool`` of a comparison and boolean-mask indexing (which needs the count of True values)
all raise there. What runs on it runs on a GPU without copying a value back to the host,
so the GPU is never left idle waiting for the CPU within a step; fit reads the losses back
once per ``TrainConfig.log_every`` steps.
"""
from __future__ import annotations

import pytest
import torch

from bertlab import distill, multitask, train
from bertlab.model import BertConfig, BertModel
from bertlab.pretrain_loop import pretraining_loss

META = torch.device("meta")
B, T, V = 2, 5, 50


def tiny_classifier(num_labels: int = 3) -> train.SequenceClassifier:
    cfg = BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16)
    return train.SequenceClassifier(BertModel(cfg), num_labels).to(META)


def ids(*shape, high: int = V) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.long, device=META)


def floats(*shape) -> torch.Tensor:
    return torch.empty(shape, device=META)


def test_meta_tensors_raise_on_every_read_back():
    """The premise: on the meta device each way of copying a value to the host raises."""
    x = floats(3)
    for read in (float, lambda t: t.item(), lambda t: t.tolist(), lambda t: bool(t.sum() > 0),
                 lambda t: t[t > 0]):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read(x if read is not float else x.sum())


@pytest.mark.parametrize("max_grad_norm", [1.0, None])
def test_train_step_reads_nothing_back(max_grad_norm):
    model = tiny_classifier()
    opt = torch.optim.AdamW(train.param_groups(model), lr=1e-3)
    sched = train.linear_warmup_scheduler(opt, 1, 3)
    batch = {"input_ids": ids(B, T), "attention_mask": ids(B, T), "labels": ids(B), "index": ids(B)}
    out = train.train_step(model, batch, opt, sched, max_grad_norm=max_grad_norm)
    assert set(out) == {"loss"} and out["loss"].device == META and out["loss"].shape == ()
    assert opt.param_groups[0]["lr"] == 1e-3  # the step happened: the warm-up of 1 step is over


@pytest.mark.parametrize("logits", [floats(B, T, V), floats(7, V)], ids=["every position", "masked positions"])
def test_pretraining_loss_reads_nothing_back(logits):
    batch = {"mlm_labels": ids(B, T), "nsp_labels": ids(B)}
    out = pretraining_loss((logits.requires_grad_(), floats(B, 2)), batch)
    out["loss"].backward()
    assert set(out) == {"loss", "mlm_loss", "nsp_loss"} and out["loss"].shape == ()


def test_multitask_loss_reads_nothing_back():
    outputs = {"a": floats(B, 3).requires_grad_(), "b": floats(B, 2).requires_grad_()}
    out = multitask.batch_loss(outputs, {"labels": ids(B, 2)}, {"a": 1.0, "b": 0.5})
    out["loss"].backward()
    assert set(out) == {"loss", "a_loss", "b_loss"}


def test_distillation_losses_read_nothing_back():
    batch = {"teacher_logits": floats(B, 3), "labels": ids(B), "attention_mask": ids(B, T)}
    loss = distill.distillation_loss(2.0, 0.5)(floats(B, 3).requires_grad_(), batch)
    loss.backward()
    cos = distill.hidden_loss([floats(B, T, 8).requires_grad_()], [floats(B, T, 8)], ids(B, T), check=False)
    cos.backward()
    assert loss.shape == cos.shape == ()


def test_the_checks_a_learner_gets_still_read_values():
    """Called directly (check=True, the default) the losses still name bad labels: that reads them back."""
    from bertlab.pretraining import mlm_loss

    with pytest.raises((RuntimeError, NotImplementedError)):
        mlm_loss(floats(B, T, V), ids(B, T))
    with pytest.raises((RuntimeError, NotImplementedError)):
        multitask.multitask_loss({"a": floats(B, 3)}, {"a": ids(B)})


def test_the_unchecked_losses_equal_the_checked_ones_bit_for_bit():
    """check=False changes how the chosen positions are found (a stable sort), not the loss."""
    from bertlab.pretraining import mlm_loss

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, V, (4, 9), generator=g)
    labels[torch.rand(4, 9, generator=g) < 0.8] = -100
    n = int((labels != -100).sum())
    for logits in (torch.randn(n, V, generator=g), torch.randn(4, 9, V, generator=g)):
        assert mlm_loss(logits, labels, check=False).item() == mlm_loss(logits, labels).item()
    z, y = {"a": torch.randn(6, 3, generator=g)}, {"a": torch.tensor([0, 2, -100, 1, 1, -100])}
    assert multitask.multitask_loss(z, y, check=False)[0].item() == multitask.multitask_loss(z, y)[0].item()
