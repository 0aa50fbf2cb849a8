"""Domain adaptation (bertlab.domain): layer freezing, MLM perplexity, fragmentation; continued pre-training
(bertlab.artifacts_pretraining)."""
import math

import pytest
import torch
import torch.nn as nn

from bertlab import artifacts_pretraining, cache, domain, train
from bertlab.model import BertConfig, BertForPreTraining, BertModel
from bertlab.pretraining import IGNORE_INDEX, mlm_loss

M = IGNORE_INDEX


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(layers=3, **kw):
    return BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=32, **kw)


def hf_bert(layers=3):
    from transformers import BertConfig as HFConfig
    from transformers import BertModel as HFBertModel

    torch.manual_seed(0)
    return HFBertModel(HFConfig(vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=32))


def ids_batch(B=3, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 40, (B, T), generator=g), torch.ones(B, T, dtype=torch.long)


# ---------------------------------------------------------------- freezing


def expected_frozen(names, k, prefix=""):
    lower = tuple(f"{prefix}encoder.layer.{i}." for i in range(k))
    return {n for n in names if k > 0 and (n.startswith(prefix + "embeddings.") or n.startswith(lower))}


@pytest.mark.parametrize("kind", ["bertlab", "hf", "classifier-hf", "classifier-bertlab"])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_freeze_layers_freezes_embeddings_and_the_lower_k_layers(kind, k):
    torch.manual_seed(0)
    encoder = hf_bert() if kind.endswith("hf") else BertModel(tiny_config())
    model = train.SequenceClassifier(encoder, 3) if kind.startswith("classifier") else encoder
    prefix = "encoder." if kind.startswith("classifier") else ""
    assert domain.freeze_layers(model, k) is model
    names = [n for n, _ in model.named_parameters()]
    frozen = expected_frozen(names, k, prefix)
    assert set(domain.trainable_parameter_names(model)) == set(names) - frozen
    assert domain.trainable_parameter_names(model) == [n for n in names if n not in frozen], "keep named_parameters order"
    # After a backward pass, frozen parameters have no gradient and the layers above them do.
    ids, mask = ids_batch()
    out = model(ids, attention_mask=mask)
    loss = out.pow(2).mean() if isinstance(out, torch.Tensor) else out[0].pow(2).mean() + out[1].pow(2).mean()
    loss.backward()  # a bare encoder: through the hidden states and the pooler (which trains for every k)
    grads = dict(model.named_parameters())
    for n in frozen:
        assert grads[n].grad is None, f"{n} is frozen but got a gradient"
    if k < 3:  # the lowest trainable layer and the top one get gradients
        for n in (f"{prefix}encoder.layer.{k}.attention.self.query.weight", f"{prefix}encoder.layer.2.output.dense.weight"):
            assert grads[n].grad is not None and grads[n].grad.abs().sum() > 0, f"{n} trains but got no gradient"
    top = "classifier.weight" if prefix else "pooler.dense.weight"
    assert grads[top].grad is not None, f"{top} is above every frozen layer and must train"
    frozen_grads = [n for n in frozen if grads[n].grad is not None]
    assert not frozen_grads


def test_freeze_layers_can_be_called_again_and_freezes_a_tied_mlm_decoder():
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config())
    domain.freeze_layers(model, 3)
    assert not model.cls.predictions.decoder.weight.requires_grad, "the decoder shares the frozen word embeddings"
    assert model.cls.predictions.transform.dense.weight.requires_grad and model.bert.pooler.dense.weight.requires_grad
    assert not any(p.requires_grad for p in model.bert.encoder.layer.parameters())
    domain.freeze_layers(model, 1)
    assert all(p.requires_grad for p in model.bert.encoder.layer[1:].parameters())
    assert not any(p.requires_grad for p in model.bert.encoder.layer[0].parameters())
    domain.freeze_layers(model, 0)
    assert all(p.requires_grad for p in model.parameters())
    assert domain.num_layers(model) == 3


def test_freeze_layers_reaches_the_encoder_of_a_multitask_model():
    from bertlab.multitask import MultiTaskModel

    model = MultiTaskModel(BertModel(tiny_config()), {"a": 3, "b": 2})
    domain.freeze_layers(model, 2)
    names = [n for n, _ in model.named_parameters()]
    assert set(domain.trainable_parameter_names(model)) == set(names) - expected_frozen(names, 2, "encoder.")
    assert all(p.requires_grad for p in model.classifier.parameters())


def test_frozen_parameters_stay_out_of_the_optimizer():
    model = train.SequenceClassifier(BertModel(tiny_config()), 3)
    domain.freeze_layers(model, 2)
    in_optimizer = {id(p) for g in train.param_groups(model) for p in g["params"]}
    named = dict(model.named_parameters())
    assert in_optimizer == {id(named[n]) for n in domain.trainable_parameter_names(model)}
    assert train.count_parameters(model, trainable_only=True) < train.count_parameters(model)


@pytest.mark.parametrize("k", [-1, 4, 1.0, True, None])
def test_freeze_layers_rejects_k_outside_the_layers(k):
    with pytest.raises(ValueError, match=r"k must be an int in 0\.\.3"):
        domain.freeze_layers(BertModel(tiny_config()), k)


def test_freeze_layers_rejects_a_model_without_bert():
    with pytest.raises(TypeError, match="model must be a BERT"):
        domain.freeze_layers(nn.Linear(2, 2), 0)


# ---------------------------------------------------------------- perplexity


class TableLM(nn.Module):
    """A toy masked LM: the logits at a position depend only on the token there (a V x V table)."""

    def __init__(self, V=5, seed=0):
        super().__init__()
        self.table = nn.Parameter(torch.randn(V, V, generator=torch.Generator().manual_seed(seed)))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return (self.table[input_ids],)  # (B, T, V)


def test_perplexity_is_exp_of_the_hand_computed_token_weighted_loss():
    lm = TableLM()
    b1 = {"input_ids": torch.tensor([[0, 4, 1], [2, 4, 3]]), "mlm_labels": torch.tensor([[M, 1, M], [M, 2, 3]])}
    b2 = {"input_ids": torch.tensor([[4, 0]]), "mlm_labels": torch.tensor([[0, M]])}
    T = lm.table.detach().double().tolist()

    def nll(tok, label):  # -log softmax(table[tok])[label], written out
        return -(T[tok][label] - math.log(sum(math.exp(v) for v in T[tok])))

    terms = [nll(4, 1), nll(4, 2), nll(3, 3), nll(4, 0)]  # the 4 masked positions of both batches
    total, n = domain.mlm_nll(lm, [b1, b2])
    assert n == 4 and total == pytest.approx(sum(terms), rel=1e-6)
    assert domain.mlm_perplexity(lm, [b1, b2]) == pytest.approx(math.exp(sum(terms) / 4), rel=1e-6)
    # Token-weighted, not a mean of the two batch means (which would weigh b2's one token like b1's three).
    batch_means = (sum(terms[:3]) / 3 + terms[3]) / 2
    assert domain.mlm_perplexity(lm, [b1, b2]) != pytest.approx(math.exp(batch_means), rel=1e-3)
    # The same as exp(mlm_loss) on everything at once, and "labels" works as the key too.
    logits = torch.cat([lm(b["input_ids"])[0][b["mlm_labels"] != M] for b in (b1, b2)])
    labels = torch.cat([b["mlm_labels"][b["mlm_labels"] != M] for b in (b1, b2)])
    assert domain.mlm_perplexity(lm, [b1, b2]) == pytest.approx(math.exp(mlm_loss(logits, labels).item()), rel=1e-6)
    assert domain.mlm_perplexity(lm, [{"input_ids": b1["input_ids"], "labels": b1["mlm_labels"]}]) == \
        pytest.approx(math.exp(sum(terms[:3]) / 3), rel=1e-6)


def test_perplexity_of_uniform_guessing_is_the_vocabulary_size():
    lm = TableLM(V=7)
    with torch.no_grad():
        lm.table.zero_()
    batch = {"input_ids": torch.tensor([[1, 2, 3]]), "mlm_labels": torch.tensor([[4, M, 6]])}
    assert domain.mlm_perplexity(lm, [batch]) == pytest.approx(7.0, rel=1e-6)


@pytest.fixture(scope="module")
def tokenizer():
    from bertlab.pretrained import load_tokenizer

    return load_tokenizer()


TEXTS = ["the vdd core rail drooped during burn-in", "pll lost lock at low temperature",
         "electromigration voids in the power strap", "gate leakage rose after stress",
         "particle contamination shorted metal lines"]


def test_perplexity_of_the_course_model_matches_its_mlm_loss_and_ignores_batching(tokenizer):
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))
    batches = domain.mlm_batches(tokenizer, TEXTS, batch_size=5, mlm_probability=0.5, seed=0)
    assert len(batches) == 1 and (batches[0]["mlm_labels"] != M).sum() > 3
    model.train()
    ppl = domain.mlm_perplexity(model, batches)
    assert model.training, "the model must be left in the mode it was in"
    model.eval()
    with torch.no_grad():
        b = batches[0]
        logits, _ = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])  # (B, T, V)
    assert ppl == pytest.approx(math.exp(mlm_loss(logits, b["mlm_labels"]).item()), rel=1e-5)
    # Cut into batches of 2 (other padding), the same masked tokens give the same perplexity.
    rows = [{k: v[i:i + 2] for k, v in b.items()} for i in range(0, 5, 2)]
    assert domain.mlm_perplexity(model, rows) == pytest.approx(ppl, rel=1e-5)
    # The masks are fixed: the same call gives the same batches.
    again = domain.mlm_batches(tokenizer, TEXTS, batch_size=5, mlm_probability=0.5, seed=0)
    assert torch.equal(again[0]["mlm_labels"], b["mlm_labels"])


def test_perplexity_of_a_transformers_masked_lm_is_exp_of_its_own_loss(tokenizer):
    from transformers import BertConfig as HFConfig
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(HFConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)).eval()
    b = domain.mlm_batches(tokenizer, TEXTS, batch_size=5, seed=1)[0]
    with torch.no_grad():
        loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["mlm_labels"]).loss
    assert domain.mlm_perplexity(model, [b]) == pytest.approx(math.exp(loss.item()), rel=1e-5)


def test_perplexity_rejects_batches_without_masked_tokens():
    lm = TableLM()
    with pytest.raises(ValueError, match="no masked position"):
        domain.mlm_perplexity(lm, [{"input_ids": torch.tensor([[1, 2]]), "mlm_labels": torch.tensor([[M, M]])}])
    with pytest.raises(ValueError, match=r"batches\[0\] has no mlm_labels"):
        domain.mlm_perplexity(lm, [{"input_ids": torch.tensor([[1, 2]])}])


# ---------------------------------------------------------------- fragmentation, conversion


class CharTokenizer:
    """Every character is a piece."""

    def tokenize(self, word):
        return list(word)


def test_fragmentation_is_the_mean_number_of_pieces_per_word(tokenizer):
    assert domain.fragmentation(CharTokenizer(), ["ab c", "def"]) == pytest.approx((2 + 1 + 3) / 3)
    assert domain.wordpiece_pieces(CharTokenizer(), ["ab"]) == {"ab": ["a", "b"]}
    assert domain.fragmentation(tokenizer, ["the", "of"]) == 1.0
    pieces = len(tokenizer.tokenize("electromigration"))
    assert pieces > 1 and domain.fragmentation(tokenizer, ["the electromigration"]) == pytest.approx((1 + pieces) / 2)
    terms = artifacts_pretraining.domain_terms()
    assert "electromigration" in terms and domain.fragmentation(tokenizer, terms) > 1.2


@pytest.mark.parametrize("terms, err", [("electromigration", TypeError), ([], ValueError), ([" "], ValueError),
                                        (["ok", 3], TypeError)])
def test_fragmentation_rejects_bad_terms(terms, err):
    with pytest.raises(err, match="terms"):
        domain.fragmentation(CharTokenizer(), terms)


def test_transformers_encoder_computes_what_the_course_encoder_computes():
    torch.manual_seed(0)
    ours = BertModel(tiny_config(layers=2)).eval()
    theirs = domain.transformers_encoder(ours)
    ids, mask = ids_batch()
    mask[0, -2:] = 0
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids, attention_mask=mask).last_hidden_state, ours(ids, mask)[0],
                                   atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="bert must be"):
        domain.transformers_encoder(nn.Linear(2, 2))


# ---------------------------------------------------------------- continued pre-training


def test_dapt_config_and_held_out_text():
    cfg = artifacts_pretraining.dapt_config(steps=3, head={"corpus_docs": 6})
    assert cfg["steps"] == 3 and cfg["head"]["corpus_docs"] == 6 and cfg["checkpoint"] == "all-MiniLM-L6-v2"
    assert cache.key("domain-mlm", cfg) != cache.key("domain-mlm", artifacts_pretraining.dapt_config())
    with pytest.raises(ValueError, match="unknown"):
        artifacts_pretraining.dapt_config(stepz=3)
    train_texts, held = artifacts_pretraining.domain_texts({**cfg, "corpus_docs": 10, "eval_docs": 10})
    assert train_texts and held and not set(held) & set(train_texts)
    from bertlab.data import domain_corpus

    head_texts = {s for d in domain_corpus(6, 0) for s in d}
    assert not set(held) & head_texts, "held-out text must be new to the MLM head too"
    with pytest.raises(ValueError, match="unknown"):
        artifacts_pretraining.continue_pretraining({**cfg, "stepz": 1}, progress=False)


def test_continue_pretraining_trains_once_then_loads_from_the_cache(tmp_path, monkeypatch):
    from bertlab import pretrain_loop

    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
    calls = []
    real = pretrain_loop.pretrain
    monkeypatch.setattr(pretrain_loop, "pretrain", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    cfg = artifacts_pretraining.dapt_config(head={"corpus_docs": 8, "steps": 2, "batch_positions": 16},
                                            **artifacts_pretraining.DAPT_QUICK)
    model, tok, info = artifacts_pretraining.continue_pretraining(cfg, device="cpu", progress=False)
    assert not info["cached"] and len(calls) == 1 and not model.training
    assert info["heldout_sentences"] > 0 and len(info["eval"]) == 1 and info["before"]["mlm_loss"] > 0
    # the keys notebook 07 reads, with their meaning
    assert info["eval"][-1]["step"] == cfg["steps"] and set(info["eval"][-1]) == {"step", "mlm_loss", "mlm_acc"}
    assert info["train"][-1]["step"] == cfg["steps"] and info["train"][-1]["mlm_loss"] > 0
    assert info["seconds"] > 0 and info["steps_per_second"] == pytest.approx(cfg["steps"] / info["seconds"])
    assert info["sentences"] > 0 and info["head_cached"] in (True, False)
    again, _, info2 = artifacts_pretraining.continue_pretraining(cfg, device="cpu", progress=False)
    assert info2["cached"] and len(calls) == 1, "the second call must load, not train"
    assert info2["eval"] == info["eval"]
    # The held-out batches are the ones it evaluated on: the perplexity reproduces its last evaluation.
    held = artifacts_pretraining.heldout_batches(tok, cfg)
    assert domain.mlm_perplexity(again, held) == pytest.approx(math.exp(info["eval"][-1]["mlm_loss"]), rel=1e-4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert again.cls.predictions.decoder.weight is again.bert.embeddings.word_embeddings.weight, "tying survives the cache"
    fresh = BertForPreTraining.from_pretrained()
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(fresh.state_dict()[name], again.state_dict()[name]), "the encoder must train"
    assert len(list(tmp_path.glob("domain-mlm-*.safetensors"))) == 1


# ---------------------------------------------------------------- transfer helpers


def test_course_encoder_round_trips_a_transformers_bert():
    torch.manual_seed(0)
    ours = BertModel(tiny_config(layers=2)).eval()
    back = domain.course_encoder(domain.transformers_encoder(ours))
    assert isinstance(back, BertModel) and back is not ours
    ids, mask = ids_batch()
    mask[1, -3:] = 0
    with torch.no_grad():
        torch.testing.assert_close(back(ids, mask)[0], ours(ids, mask)[0], atol=1e-6, rtol=0)
    assert domain.course_encoder(ours) is ours
    with pytest.raises(TypeError, match="encoder must be"):
        domain.course_encoder(nn.Linear(2, 2))

