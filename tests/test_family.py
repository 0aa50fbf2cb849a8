"""bertlab.family: dynamic masking, SOP pairs, the ALBERT count, RTD labels and ELECTRA's loss, the variants."""
import pytest
import torch
import transformers as tf

from bertlab import family
from bertlab.pretraining import IGNORE_INDEX

V, MASK = 50, 4


def ids(B=64, T=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(5, V, (B, T), generator=g)
    special = torch.zeros_like(x, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    return x, special


def test_dynamic_masks_differ_across_epochs_and_keep_80_10_10():
    x, special = ids()
    epochs = family.dynamic_masks(x, special, 3, vocab_size=V, mask_token_id=MASK, seed=0)
    chosen = [(labels != IGNORE_INDEX) for _, labels in epochs]
    assert not torch.equal(chosen[0], chosen[1]) and not torch.equal(chosen[1], chosen[2])
    again = family.dynamic_masks(x, special, 3, vocab_size=V, mask_token_id=MASK, seed=0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epochs, again)), "seeded: reproducible"
    masked = torch.stack([m for m, _ in epochs])
    c = torch.stack(chosen)
    assert not c[:, :, 0].any() and not c[:, :, -1].any(), "special tokens are never chosen"
    n = c.sum().item()
    assert 0.13 < n / (c.numel() - 2 * 3 * 64) < 0.17
    share_mask = (masked[c] == MASK).float().mean().item()
    share_same = (masked[c] == x.expand(3, -1, -1)[c]).float().mean().item()
    assert 0.76 < share_mask < 0.84 and 0.07 < share_same < 0.14


def test_static_masks_repeat_one_mask():
    x, special = ids()
    s = family.static_masks(x, special, 3, vocab_size=V, mask_token_id=MASK, seed=0)
    assert all(torch.equal(s[0][1], m[1]) for m in s)
    with pytest.raises(ValueError, match="epochs"):
        family.static_masks(x, special, 0, vocab_size=V, mask_token_id=MASK)


def test_sop_pairs_balanced_and_from_one_document():
    docs = [[f"d{d} s{i}" for i in range(n)] for d, n in enumerate([3, 5, 1, 4])]
    pairs = family.sop_pairs(docs, seed=1)
    assert len(pairs) == 2 + 4 + 3
    assert abs(sum(lab for _, _, lab in pairs) * 2 - len(pairs)) <= 1
    for a, b, lab in pairs:
        assert a.split()[0] == b.split()[0], "both segments from one document"
        i, j = int(a.split()[1][1:]), int(b.split()[1][1:])
        assert (j - i) == (1 if lab == family.IN_ORDER else -1)
    assert pairs == family.sop_pairs(docs, seed=1)
    with pytest.raises(ValueError, match="documents"):
        family.sop_pairs([["one"], ["two"]])
    with pytest.raises(TypeError, match="documents"):
        family.sop_pairs("text")


@pytest.mark.parametrize("groups,inner,E", [(1, 1, 16), (2, 1, 8), (1, 2, 32)])
def test_albert_count_equals_the_model(groups, inner, E):
    cfg = tf.AlbertConfig(vocab_size=97, embedding_size=E, hidden_size=24, num_hidden_layers=4, num_attention_heads=2,
                          intermediate_size=40, max_position_embeddings=33, num_hidden_groups=groups, inner_group_num=inner)
    assert family.albert_parameter_count(cfg) == sum(p.numel() for p in tf.AlbertModel(cfg).parameters())


def test_rtd_labels_sampled_original_is_original_and_padding_ignored():
    x = torch.tensor([[2, 10, 11, 12, 3, 0]])
    corrupted = torch.tensor([[2, 10, 19, 12, 3, 0]])  # position 3 was masked and sampled back as 12
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    assert family.rtd_labels(x, corrupted, mask).tolist() == [[0, 0, 1, 0, 0, IGNORE_INDEX]]
    with pytest.raises(ValueError, match="shape"):
        family.rtd_labels(x, corrupted[:, :3], mask)


def test_electra_loss_over_real_tokens_with_generator_weight():
    logits = torch.tensor([[2.0, -1.0, 0.5, 30.0]])
    labels = torch.tensor([[1, 0, 1, IGNORE_INDEX]])
    out = family.electra_loss(torch.tensor(0.7), logits, labels, generator_weight=10.0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, :3], labels[0, :3].float())
    assert torch.allclose(out["rtd_loss"], bce) and torch.allclose(out["loss"], 7.0 + bce)
    with pytest.raises(ValueError, match="generator_weight"):
        family.electra_loss(torch.tensor(0.7), logits, labels, generator_weight=-1)


def tiny_tokenizer():
    from bertlab import vocab
    texts = [f"the wafer {w} shows a {v} near the die edge" for w in ("crack", "void", "short", "leak")
             for v in ("defect", "spot", "line", "ring", "mark")] * 3
    return vocab.train_wordpiece(texts, vocab_size=60)


def test_every_variant_trains_with_fit_and_counts_flops():
    tok = tiny_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=34, pad_token_id=0)
    docs = [["the wafer crack shows a defect", "near the die edge", "the wafer void shows a spot"]] * 4
    texts = family.pack_sentences(docs, tok, 32)
    assert texts and all(len(tok.tokenize(t)) <= 30 for t in texts)
    torch.manual_seed(0)
    bert = tf.BertForPreTraining(tf.BertConfig(**common))
    variants = {
        "bert": (family.Pretrainer("bert", bert), family.sop_pairs(docs)),
        "albert": (family.Pretrainer("albert", tf.AlbertForPreTraining(tf.AlbertConfig(**common, embedding_size=8))),
                   family.sop_pairs(docs)),
        "roberta": (family.Pretrainer("roberta", tf.RobertaForMaskedLM(tf.RobertaConfig(**common, type_vocab_size=2))),
                    texts),
        "electra": (family.Pretrainer("electra", family.Electra(
            tf.ElectraForMaskedLM(tf.ElectraConfig(**{**common, "hidden_size": 8}, embedding_size=16)),
            tf.ElectraForPreTraining(tf.ElectraConfig(**common, embedding_size=16)))), texts),
    }
    col = family.VariantCollator(tok, 32, mlm_probability=0.5)
    for kind in ("bert", "albert", "roberta", "electra", "distilled"):
        if kind == "distilled":  # after the teacher trained: the student freezes it
            variants[kind] = (family.Pretrainer(kind, tf.BertForMaskedLM(tf.BertConfig(**{**common, "num_hidden_layers": 1})),
                                                teacher=bert), texts)
        model, data = variants[kind]
        loader = torch.utils.data.DataLoader(data, batch_size=4, collate_fn=col)
        batch = next(iter(loader))
        assert family.flops_per_step(model, batch) > 0
        result = family.pretrain(model, loader, 3, progress=False)
        assert len(result.steps) == 3 and all(torch.isfinite(torch.tensor(s["loss"])) for s in result.steps), kind
        feats = family.encode_mean(model.encoder, tok, ["the wafer crack", "a void near the die edge"])
        assert feats.shape == (2, 16), kind
    with pytest.raises(ValueError, match="teacher"):
        family.Pretrainer("distilled", bert)
    with pytest.raises(ValueError, match="kind"):
        family.Pretrainer("gpt", bert)


def test_flops_count_a_frozen_call_once_and_a_shared_layer_each_time():
    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, input_ids, attention_mask=None, token_type_ids=None, mlm_labels=None):
            x = torch.ones(5, 4)
            with torch.no_grad():
                self.lin(x)  # a frozen teacher's forward: 2nkm
            return self.lin(x) + self.lin(x)  # trained twice: 2 x 3 x 2nkm

    assert family.flops_per_step(Shared(), {"input_ids": torch.zeros(1)}) == 2 * 5 * 4 * 3 * (1 + 3 + 3)
