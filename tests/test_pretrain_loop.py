"""Pre-training runs (bertlab.pretrain_loop): domain vocabulary, loop, measurements, fill-mask, MLM head."""
import math
import random
import sys

import pytest
import torch
import torch.nn.functional as F

from bertlab import cache
from bertlab import pretrain_loop as pl
from bertlab.data import domain_corpus
from bertlab.model import BertConfig, BertForPreTraining
from bertlab.pretraining import IGNORE_INDEX, PretrainingCollator, mlm_loss, nsp_pairs

V_DOMAIN = 300


@pytest.fixture(scope="module")
def docs():
    return domain_corpus(120, seed=0)


@pytest.fixture(scope="module")
def texts(docs):
    return [s for d in docs for s in d]


@pytest.fixture(scope="module")
def tok(texts):
    return pl.train_wordpiece(texts, V_DOMAIN)


def tiny_model(vocab_size, seed=0):
    torch.manual_seed(seed)
    return BertForPreTraining(BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


@pytest.fixture(scope="module")
def batches(docs, tok):
    collate = PretrainingCollator(tok, max_length=48, seed=0)
    pairs = nsp_pairs(docs, 64, seed=0)
    return [collate(pairs[i:i + 16]) for i in range(0, 64, 16)]


# --- train_wordpiece ----------------------------------------------------------------------------------


def test_wordpiece_has_the_asked_size_and_bert_special_tokens(tok):
    assert len(tok) == V_DOMAIN
    assert [tok.convert_tokens_to_ids(t) for t in pl.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.pad_token_id == 0 and tok.mask_token_id == 4
    learnt = tok.convert_ids_to_tokens(list(range(len(pl.SPECIAL_TOKENS), V_DOMAIN)))
    assert learnt == sorted(learnt), "learnt tokens must be in sorted order (stable ids)"


def test_wordpiece_encodes_pairs_like_bert(tok):
    enc = tok("the supply voltage", "electromigration voids", return_token_type_ids=True)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    first_sep = tokens.index("[SEP]")
    assert enc["token_type_ids"] == [0] * (first_sep + 1) + [1] * (len(tokens) - first_sep - 1)
    assert "[UNK]" not in tokens
    assert tok.decode(enc["input_ids"], skip_special_tokens=True).startswith("the supply voltage")
    assert any(t.startswith("##") for t in tok.convert_ids_to_tokens(tok("1.05V 4217")["input_ids"]))


def test_wordpiece_rejects_too_large_vocab_and_bad_text(texts):
    with pytest.raises(ValueError, match="vocab_size"):
        pl.train_wordpiece(texts[:20], 100_000)
    with pytest.raises(ValueError, match="vocab_size"):
        pl.train_wordpiece(texts, 3)
    with pytest.raises(TypeError, match="texts"):
        pl.train_wordpiece("one string", 100)


# --- measurements -------------------------------------------------------------------------------------


def test_unigram_baseline_hand_computed():
    vocab = ["a", "b", "c"]
    tok = pl.train_wordpiece(["a b a", "a c"], len(pl.SPECIAL_TOKENS) + len(vocab))
    a, b, c = (tok.convert_tokens_to_ids(t) for t in vocab)
    # counts a=3, b=1, c=1 plus one for every one of the 8 ids: q(a) = 4/13, q(b) = 2/13
    labels = torch.tensor([[IGNORE_INDEX, a, b, IGNORE_INDEX]])
    base = pl.unigram_baseline(tok, ["a b a", "a c"], [{"mlm_labels": labels}])
    assert base["mlm_loss"] == pytest.approx(-(math.log(4 / 13) + math.log(2 / 13)) / 2, abs=1e-6)
    assert base["mlm_acc"] == pytest.approx(0.5) and base["nsp_acc"] == 0.5


def test_evaluate_counts_every_masked_position_once(tok, batches):
    model = tiny_model(len(tok))
    got = pl.evaluate(model, batches)
    loss_sum = n = correct = nsp = nsp_n = 0
    model.eval()
    with torch.no_grad():
        for b in batches:
            logits, nsp_logits = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])  # full logits
            chosen = b["mlm_labels"] != IGNORE_INDEX
            loss_sum += F.cross_entropy(logits[chosen], b["mlm_labels"][chosen], reduction="sum").item()
            correct += int((logits[chosen].argmax(-1) == b["mlm_labels"][chosen]).sum())
            n += int(chosen.sum())
            nsp += int((nsp_logits.argmax(-1) == b["nsp_labels"]).sum())
            nsp_n += len(b["nsp_labels"])
    assert got["mlm_loss"] == pytest.approx(loss_sum / n, rel=1e-5)
    assert got["mlm_acc"] == pytest.approx(correct / n) and got["nsp_acc"] == pytest.approx(nsp / nsp_n)


def test_masked_only_logits_give_the_same_loss_and_gradients(tok, batches):
    model = tiny_model(len(tok))
    grads = []
    for masked_only in (False, True):
        model.zero_grad()
        logits, _, labels = pl._forward(model, batches[0], masked_only)
        loss = mlm_loss(logits, labels)
        loss.backward()
        grads.append((loss.item(), model.bert.embeddings.word_embeddings.weight.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


def test_pretrain_lowers_the_loss_and_records_history(tok, batches):
    model = tiny_model(len(tok))
    before = pl.evaluate(model, batches)
    history = pl.pretrain(model, batches, 40, lr=3e-3, eval_batches=batches, eval_every=20, plot=False,
                          progress=False)
    assert [r["step"] for r in history.eval] == [20, 40] and [r["step"] for r in history.train] == [20, 40]
    assert history.steps == 40 and history.seconds > 0 and history.steps_per_second > 0
    assert set(history.eval[-1]) == {"step", "mlm_loss", "mlm_acc", "nsp_acc"}
    assert history.eval[-1]["mlm_loss"] < before["mlm_loss"] - 0.5, (before, history.eval[-1])
    assert model.training


def test_pretrain_mlm_only_batches_and_bad_arguments(tok, texts):
    collate = PretrainingCollator(tok, max_length=32, seed=0)
    batches = [collate(texts[i:i + 8]) for i in range(0, 16, 8)]  # single texts: no NSP
    history = pl.pretrain(tiny_model(len(tok)), batches, 3, eval_batches=batches, eval_every=3, plot=False,
                          progress=False)
    assert "nsp_acc" not in history.eval[-1] and "nsp_loss" not in history.train[-1]
    with pytest.raises(ValueError, match="steps"):
        pl.pretrain(tiny_model(len(tok)), batches, 0, plot=False, progress=False)
    with pytest.raises(ValueError, match="empty"):
        pl.pretrain(tiny_model(len(tok)), [], 2, plot=False, progress=False)


def test_steps_per_second_is_positive(tok, batches):
    assert pl.steps_per_second(tiny_model(len(tok)), batches, masked_only=True, n_steps=2) > 0


def test_live_plot_draws_without_a_notebook(tok, batches, capsys):
    history = pl.History(train=[{"step": 1, "mlm_loss": 5.0}],
                         eval=[{"step": 1, "mlm_loss": 4.0, "mlm_acc": 0.1, "nsp_acc": 0.5}])
    plot = pl.LivePlot({"mlm_loss": 5.5, "mlm_acc": 0.05, "nsp_acc": 0.5}, nsp=True)
    plot.update(history)
    plot.update(history)
    assert len(plot.axes) == 3 and plot.axes[2].get_title() == "NSP accuracy"
    assert plot.handle is None and "Image" not in capsys.readouterr().out, "outside IPython nothing is displayed"


def test_live_plot_works_without_ipython_installed(monkeypatch):
    """A notebook converted to a script runs where IPython is not installed (the GPU run)."""
    for name in ("IPython", "IPython.display"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    history = pl.History(train=[{"step": 1, "mlm_loss": 5.0}], eval=[{"step": 1, "mlm_loss": 4.0, "mlm_acc": 0.1}])
    plot = pl.LivePlot({"mlm_loss": 5.5}, nsp=False)
    plot.update(history)
    assert plot.axes[0].lines, "the curves are still drawn on plot.fig"


# --- fill-mask ----------------------------------------------------------------------------------------


def test_fill_mask_gives_top_k_per_mask_most_likely_first(tok):
    model = tiny_model(len(tok))
    out = pl.fill_mask(model, tok, ["the [MASK] voltage", "[MASK] on the [MASK] supply"], top_k=4)
    assert [len(per_text) for per_text in out] == [1, 2]
    for guesses in (g for per_text in out for g in per_text):
        probs = [p for _, p in guesses]
        assert len(guesses) == 4 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        pl.fill_mask(model, tok, ["no mask here"])


def test_mask_one_word_hides_one_whole_word(tok, texts):
    rng = random.Random(0)
    examples = [e for e in (pl.mask_one_word(s, tok, rng) for s in texts[:40]) if e]
    assert len(examples) > 20
    for text, word in examples:
        assert text.count("[MASK]") == 1 and len(tok.tokenize(word)) == 1 and word.isalpha() and len(word) >= 4
    assert pl.mask_one_word("a b 42", tok, rng) is None


def test_fill_mask_accuracy_on_a_model_that_knows_one_answer(tok):
    model = tiny_model(len(tok))
    word, other = [w for w in sorted(tok.get_vocab()) if w.isalpha() and len(w) >= 4][:2]
    with torch.no_grad():  # make the output bias shout `word` whatever the context
        model.cls.predictions.bias[tok.convert_tokens_to_ids(word)] = 100.0
    examples = [("the [MASK] is high", word), ("a [MASK] drop", other)]
    got = pl.fill_mask_accuracy(model, tok, examples, top_k=5)
    assert got["top1"] == 0.5 and got["n"] == 2 and 0.5 <= got["top5"] <= 1.0


# --- the MLM head for a pretrained encoder ---------------------------------------------------------------


def test_train_mlm_head_trains_only_the_head(tok, texts):
    model = tiny_model(len(tok))
    encoder = {k: v.clone() for k, v in model.bert.state_dict().items()}
    history = pl.train_mlm_head(model, tok, texts[:200], 30, eval_every=10, batch_positions=32, progress=False)
    assert all(torch.equal(v, model.bert.state_dict()[k]) for k, v in encoder.items()), "the encoder changed"
    assert history.positions > 100 and len(history.eval) == 3 and history.baseline["mlm_loss"] > 0
    # A random encoder carries no information about the hidden token, so the best head is the unigram
    # model: the bias starts there and training must not drift away from it.
    assert abs(history.eval[-1]["mlm_loss"] - history.baseline["mlm_loss"]) < 0.1, (history.baseline, history.eval)
    assert set(pl.head_state(model)) == set(pl.HEAD_KEYS)


def test_head_config_names_the_checkpoint_and_rejects_unknown_settings():
    cfg = pl.head_config(steps=3)
    assert cfg["checkpoint"] == "all-MiniLM-L6-v2" and cfg["steps"] == 3
    assert cache.key("mlm-head", cfg) != cache.key("mlm-head", pl.head_config())
    with pytest.raises(ValueError, match="unknown"):
        pl.head_config(stepz=3)


def test_checkpoint_with_mlm_head_trains_once_then_loads_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
    cfg = pl.head_config(corpus_docs=8, steps=4, batch_positions=16)
    model, tok, info = pl.checkpoint_with_mlm_head(cfg, progress=False)
    assert not info["cached"] and info["sentences"] > 10 and len(info["eval"]) == 1
    assert len(tok) == 30522 and not model.training
    again, _, info2 = pl.checkpoint_with_mlm_head(cfg, progress=False)
    assert info2["cached"] and info2["eval"] == info["eval"]
    for k in pl.HEAD_KEYS:
        assert torch.equal(model.state_dict()[k], again.state_dict()[k]), k
    fresh = BertForPreTraining.from_pretrained()
    assert not torch.equal(fresh.state_dict()["cls.predictions.bias"], again.state_dict()["cls.predictions.bias"])
    assert torch.equal(fresh.state_dict()["bert.encoder.layer.5.output.dense.weight"],
                       again.state_dict()["bert.encoder.layer.5.output.dense.weight"]), "the encoder must stay frozen"
    with pytest.raises(ValueError, match="unknown"):
        pl.checkpoint_with_mlm_head({**cfg, "stepz": 1})
