"""The from-scratch BERT (bertlab.model) against transformers on the shipped checkpoint."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from bertlab.model import (
    BertConfig,
    BertForPreTraining,
    BertModel,
    extended_attention_mask,
    scaled_dot_product_attention,
)
from bertlab.pretrained import default_model_dir, load_checkpoint_state_dict, load_encoder, load_tokenizer

ATOL = 1e-5
REPORTS = [
    "Wafer W12, die 34: gate oxide breakdown at 5.2 V during TDDB stress; ESD ruled out.",
    "Bond wire lift on pin 7 after 500 thermal cycles.",
    "No defect found.",
    "Leakage current 3.1 uA on lot L0932 exceeded the 1 uA limit; metal bridging seen under SEM, "
    "likely particle contamination in the CMP step, recommend tool requalification.",
]
PAIR = ("Electromigration voids in M2 near the via chain.", "Resistance rose 20% after 168 h at 125 C.")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def reference():
    return load_encoder()


@pytest.fixture(scope="module")
def ours():
    return BertModel.from_pretrained()


@pytest.fixture(scope="module")
def batch(tokenizer):
    """Four single reports of different lengths and one sentence pair (segment B = token type 1), padded."""
    encodings = [tokenizer(text) for text in REPORTS] + [tokenizer(*PAIR)]
    texts = [e["input_ids"] for e in encodings]
    types = [e["token_type_ids"] for e in encodings]
    T = max(map(len, texts))
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([ids + [pad] * (T - len(ids)) for ids in texts]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (T - len(ids)) for ids in texts]),
        "token_type_ids": torch.tensor([t + [0] * (T - len(t)) for t in types]),
    }


def tiny_config(**overrides):
    kw = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=40)
    kw.update(overrides)
    return BertConfig(**kw)


# --- the checkpoint loads, and the outputs equal transformers ---------------------------------


def test_state_dict_keys_and_shapes_match_transformers(ours, reference):
    ref = reference.state_dict()
    mine = ours.state_dict()
    assert sorted(mine) == sorted(ref)
    assert all(mine[k].shape == ref[k].shape for k in ref)
    fresh = BertModel(BertConfig.from_pretrained())
    fresh.load_state_dict(ref, strict=True)  # transformers' own state dict loads strictly


def test_raw_checkpoint_file_loads_strictly():
    """The safetensors file also stores the legacy embeddings.position_ids buffer; a strict load still works."""
    from safetensors.torch import load_file

    raw = load_file(default_model_dir() / "model.safetensors")
    assert "embeddings.position_ids" in raw  # the case the load hook exists for
    model = BertModel(BertConfig.from_pretrained())
    model.load_state_dict(raw, strict=True)
    assert torch.equal(model.encoder.layer[3].output.dense.weight, raw["encoder.layer.3.output.dense.weight"])
    assert "embeddings.position_ids" not in load_checkpoint_state_dict()


def test_config_from_shipped_checkpoint():
    c = BertConfig.from_pretrained()
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (
        30522, 384, 6, 12, 1536)


def test_matches_transformers_on_padded_batch(ours, reference, batch):
    """Real tokens and pooled output within 1e-5 of transformers.BertModel (eval mode).

    Padding positions are compared too, at 1e-4: no output reads them, and they are
    numerically touchy; against a float64 run, transformers' own sdpa and eager
    paths are off by about 3e-5 there, as is this model (about 2e-6 on real tokens).
    """
    mask = batch["attention_mask"].bool()
    lengths = mask.sum(1)
    assert lengths.unique().numel() == len(lengths) and not mask.all()  # really padded, all lengths differ
    assert batch["token_type_ids"].max() == 1  # segment B is exercised
    with torch.no_grad():
        hidden, pooled = ours(**batch)
        ref = reference(**batch)
    assert hidden.shape == ref.last_hidden_state.shape == (5, mask.size(1), 384)
    assert pooled.shape == (5, 384)
    diff = (hidden - ref.last_hidden_state).abs()
    assert diff[mask].max() < ATOL, f"real tokens differ by {diff[mask].max():.2e}"
    assert diff[~mask].max() < 1e-4, f"padding positions differ by {diff[~mask].max():.2e}"
    assert (pooled - ref.pooler_output).abs().max() < ATOL


def test_padding_does_not_change_real_tokens(ours, tokenizer):
    """A report alone and the same report padded in a batch give the same hidden states."""
    alone = tokenizer(REPORTS[2], return_tensors="pt")
    padded = tokenizer([REPORTS[2], REPORTS[0]], padding=True, return_tensors="pt")
    n = alone["input_ids"].size(1)
    with torch.no_grad():
        h_alone, p_alone = ours(alone["input_ids"])
        h_pad, p_pad = ours(padded["input_ids"], padded["attention_mask"])
    assert padded["attention_mask"][0].sum() == n < padded["input_ids"].size(1)
    assert torch.allclose(h_alone[0], h_pad[0, :n], atol=ATOL)
    assert torch.allclose(p_alone[0], p_pad[0], atol=ATOL)


def test_from_scratch_is_deterministic_in_eval_and_stochastic_in_train(batch):
    torch.manual_seed(0)
    model = BertModel(tiny_config(vocab_size=30522, max_position_embeddings=512))
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(**batch)[0], model(**batch)[0])
        model.train()
        assert not torch.equal(model(**batch)[0], model(**batch)[0])  # dropout is active


# --- attention and the mask ---------------------------------------------------------------------


def test_extended_attention_mask_values_and_shape():
    m = extended_attention_mask(torch.tensor([[1, 1, 0], [1, 0, 0]]), torch.float32)
    assert m.shape == (2, 1, 1, 3) and m.dtype == torch.float32
    assert m[0, 0, 0].tolist() == [0.0, 0.0, torch.finfo(torch.float32).min]
    assert m[1, 0, 0, 0] == 0 and (m[1, 0, 0, 1:] == torch.finfo(torch.float32).min).all()
    with pytest.raises(ValueError, match="attention_mask"):
        extended_attention_mask(torch.ones(2, 1, 3))


def test_attention_matches_torch_and_ignores_padding_keys():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))  # (B, nh, T, hs)
    keep = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out = scaled_dot_product_attention(q, k, v, extended_attention_mask(keep, q.dtype))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=keep.bool()[:, None, None, :])
    assert torch.allclose(out, expected, atol=1e-6)
    # Changing the padding keys and values changes nothing.
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 3:], v2[1, :, 3:] = 100.0, -100.0
    assert torch.allclose(out, scaled_dot_product_attention(q, k2, v2, extended_attention_mask(keep, q.dtype)), atol=1e-6)
    # Scaled by sqrt(d_k): one query, two keys, known softmax.
    q1 = torch.tensor([[[[2.0, 0.0, 0.0, 0.0]]]])
    k1 = torch.tensor([[[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]])
    v1 = torch.tensor([[[[1.0], [0.0]]]])
    w = math.exp(2 / 2) / (math.exp(2 / 2) + 1)  # scores 2/sqrt(4) and 0
    assert scaled_dot_product_attention(q1, k1, v1).item() == pytest.approx(w, abs=1e-6)


# --- bad config and inputs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(num_attention_heads=5), "num_attention_heads"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
        (dict(num_hidden_layers=2.0), "num_hidden_layers"),
        (dict(pad_token_id=99), "pad_token_id"),
    ],
)
def test_bad_config_is_rejected(overrides, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tiny_config(**overrides)


def test_unsupported_checkpoint_config_is_rejected(tmp_path):
    raw = json.loads((default_model_dir() / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "hidden_act": "relu"}))
    with pytest.raises(ValueError, match="hidden_act"):
        BertConfig.from_pretrained(tmp_path)


def test_model_rejects_a_non_config():
    with pytest.raises(TypeError, match="config"):
        BertModel({"hidden_size": 32})


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(input_ids=torch.tensor([1, 2, 3])), ValueError, "input_ids"),
        (dict(input_ids=torch.ones(2, 3)), TypeError, "input_ids"),
        (dict(input_ids=torch.tensor([[1, 99]])), ValueError, "input_ids.*vocab_size"),
        (dict(input_ids=torch.ones(1, 41, dtype=torch.long)), ValueError, "max_position_embeddings"),
        (dict(input_ids=torch.ones(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 4)), ValueError, "attention_mask"),
        (dict(input_ids=torch.ones(1, 3, dtype=torch.long), token_type_ids=torch.tensor([[0, 1, 2]])), ValueError,
         "token_type_ids"),
    ],
)
def test_bad_inputs_are_rejected(kwargs, error, match):
    model = BertModel(tiny_config())
    with pytest.raises(error, match=match):
        model(**kwargs)


def test_value_checks_read_nothing_back_from_an_accelerator():
    """On a GPU the range checks would sync at every forward pass: they run only for ids on the CPU.

    The meta device stands in for a GPU: its tensors have shapes but no values, so reading a
    min or max back to the host raises, and the shape checks still apply.
    """
    model = BertModel(tiny_config()).to("meta")
    ids = torch.full((2, 5), 98, dtype=torch.long, device="meta")
    x, pooled = model(ids, token_type_ids=torch.zeros_like(ids))
    assert x.shape == (2, 5, 32) and pooled.shape == (2, 32)
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 4, device="meta"))
    with pytest.raises(TypeError, match="input_ids"):
        model(torch.ones(2, 5, device="meta"))


# --- pre-training heads ------------------------------------------------------------------------------


def test_pretraining_model_equals_transformers_with_same_weights():
    """Heads included: load a random transformers.BertForPreTraining state dict strictly and compare."""
    import transformers

    torch.manual_seed(0)
    c = tiny_config()
    ref = transformers.BertForPreTraining(transformers.BertConfig(**vars(c))).eval()
    model = BertForPreTraining(c).eval()
    assert sorted(model.state_dict()) == sorted(ref.state_dict())
    model.load_state_dict(ref.state_dict(), strict=True)
    ids = torch.randint(1, 99, (3, 7), generator=torch.Generator().manual_seed(1))
    am = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 6 + [0]])
    tt = torch.tensor([[0] * 4 + [1] * 3] * 3)
    with torch.no_grad():
        mlm, nsp = model(ids, am, tt)
        out = ref(input_ids=ids, attention_mask=am, token_type_ids=tt)
    assert torch.allclose(mlm, out.prediction_logits, atol=ATOL)
    assert torch.allclose(nsp, out.seq_relationship_logits, atol=ATOL)


def test_mlm_head_is_tied_to_word_embeddings():
    model = BertForPreTraining(tiny_config())
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias
    assert model.bert.embeddings.word_embeddings.weight[0].abs().max() == 0  # the padding row starts at 0


def test_masked_positions_path_equals_full_logits_gathered():
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config()).eval()
    ids = torch.randint(1, 99, (4, 9), generator=torch.Generator().manual_seed(2))
    am = torch.ones_like(ids)
    am[1, 6:] = 0
    where = torch.zeros_like(ids, dtype=torch.bool)
    where[0, [1, 4]] = where[1, 2] = where[3, [0, 5, 8]] = True
    with torch.no_grad():
        full, nsp_full = model(ids, am)
        sparse, nsp_sparse = model(ids, am, masked_positions=where)
    assert full.shape == (4, 9, 99) and sparse.shape == (6, 99)
    assert torch.allclose(sparse, full[where], atol=1e-6)
    assert torch.equal(nsp_sparse, nsp_full)
    with pytest.raises(ValueError, match="masked_positions"):
        model(ids, am, masked_positions=where.long())


def test_pretraining_from_checkpoint_has_encoder_weights_and_fresh_heads(ours, batch):
    model = BertForPreTraining.from_pretrained().eval()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(model.bert.state_dict()[name], tensor), name
    heads = model.cls
    assert heads.seq_relationship.bias.abs().max() == 0 and heads.predictions.bias.abs().max() == 0
    assert 0.01 < heads.seq_relationship.weight.std() < 0.03  # normal(0, 0.02), not loaded
    with torch.no_grad():
        mlm, nsp = model(**batch, masked_positions=batch["attention_mask"].bool())
        hidden, _ = ours(**batch)
    assert mlm.shape == (int(batch["attention_mask"].sum()), 30522) and nsp.shape == (5, 2)
    assert torch.equal(model.bert(**batch)[0], hidden)
