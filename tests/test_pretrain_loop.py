"""Pre-training runs (bertlab.pretrain_loop): domain vocabulary, loop, measurements, fill-mask, MLM head."""
import inspect
import math
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bertlab import cache, plots, train
from bertlab import pretrain_loop as pl
from bertlab.artifacts_pretraining import checkpoint_with_mlm_head, head_config
from bertlab.data import domain_corpus
from bertlab.model import BertConfig, BertForPreTraining
from bertlab.plots import LivePlot
from bertlab.pretraining import IGNORE_INDEX, PretrainingCollator, mlm_loss, nsp_pairs
from bertlab.vocab import SPECIAL_TOKENS, learn_wordpieces, train_wordpiece

V_DOMAIN = 300


@pytest.fixture(scope="module")
def docs():
    return domain_corpus(120, seed=0)


@pytest.fixture(scope="module")
def texts(docs):
    return [s for d in docs for s in d]


@pytest.fixture(scope="module")
def tok(texts):
    return train_wordpiece(texts, V_DOMAIN)


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
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.pad_token_id == 0 and tok.mask_token_id == 4
    learnt = tok.convert_ids_to_tokens(list(range(len(SPECIAL_TOKENS), V_DOMAIN)))
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
        train_wordpiece(texts[:20], 100_000)
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece(texts, 3)
    with pytest.raises(TypeError, match="texts"):
        train_wordpiece("one string", 100)


def test_learn_wordpieces_hand_computed():
    # "aab" x2, "ab" x3: pieces a ##a ##b; (a, ##b) occurs 3 times -> "ab"; then (##a, ##b) and
    # (a, ##a) tie at 2 and the alphabetically first pair wins -> "##ab"; then (a, ##ab) -> "aab".
    counts = {"aab": 2, "ab": 3}
    assert learn_wordpieces(counts, 10) == ["##a", "##b", "a", "ab", "##ab", "aab"]  # no pair left: stops at 6
    assert learn_wordpieces(counts, 5) == ["##a", "##b", "a", "ab", "##ab"]
    assert learn_wordpieces({"ba": 1, "ab": 1}, 5) == ["##a", "##b", "a", "b", "ab"]  # a tie at 1: (a, ##b) first


def test_wordpiece_vocabulary_is_the_same_in_every_process(texts):
    """The same text gives the same vocabulary whatever the process's hash seed (tokenizers' trainer did not)."""
    code = ("import sys; from bertlab.data import domain_corpus; from bertlab.vocab import train_wordpiece; "
            "t = train_wordpiece([s for d in domain_corpus(120, seed=0) for s in d], 300); "
            "print(sorted(t.get_vocab().items()))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout
            for seed in (1, 2)}
    assert len(outs) == 1, "two processes learnt different vocabularies from the same text"
    assert outs.pop().strip() == str(sorted(train_wordpiece(texts, V_DOMAIN).get_vocab().items()))


# --- measurements -------------------------------------------------------------------------------------


def test_unigram_baseline_hand_computed():
    vocab = ["a", "b", "c"]
    tok = train_wordpiece(["a b a", "a c"], len(SPECIAL_TOKENS) + len(vocab))
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


def test_pretraining_loss_is_mlm_plus_nsp_and_masked_only_logits_give_the_same_loss_and_gradients(tok, batches):
    model = tiny_model(len(tok))
    batch = batches[0]
    full = {k: v for k, v in batch.items() if k != "masked_positions"}
    grads = []
    for b in (full, batch):  # logits at every position (B, T, V), then at the masked positions only (N, V)
        model.zero_grad()
        outputs = model(**train.model_inputs(b, train.forward_keys(model)))
        losses = pl.pretraining_loss(outputs, b)
        losses["loss"].backward()
        grads.append((losses, model.bert.embeddings.word_embeddings.weight.grad.clone()))
    (full_losses, full_grad), (sparse_losses, sparse_grad) = grads
    assert set(sparse_losses) == {"loss", "mlm_loss", "nsp_loss"} and sparse_losses["mlm_loss"].dim() == 0
    mlm_logits, nsp_logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert full_losses["mlm_loss"].item() == pytest.approx(mlm_loss(mlm_logits, batch["mlm_labels"]).item(), rel=1e-5)
    assert full_losses["nsp_loss"].item() == pytest.approx(F.cross_entropy(nsp_logits, batch["nsp_labels"]).item(), rel=1e-5)
    assert full_losses["loss"].item() == pytest.approx(full_losses["mlm_loss"].item() + full_losses["nsp_loss"].item())
    for k in full_losses:
        assert sparse_losses[k].item() == pytest.approx(full_losses[k].item(), rel=1e-5), k
    assert torch.allclose(full_grad, sparse_grad, atol=1e-6)
    mlm_only = {k: v for k, v in batch.items() if k != "nsp_labels"}
    assert set(pl.pretraining_loss(model(**train.model_inputs(mlm_only, train.forward_keys(model))), mlm_only)) == {
        "loss", "mlm_loss"}


def test_pretrain_lowers_the_loss_and_records_history(tok, batches):
    model = tiny_model(len(tok))
    before = pl.evaluate(model, batches)
    result = pl.pretrain(model, batches, 40, lr=3e-3, eval_batches=batches, eval_every=20, plot=False,
                         progress=False)
    assert isinstance(result, train.TrainResult)
    assert [r["step"] for r in result.history] == [20, 40] and len(result.steps) == 40
    assert result.seconds > 0 and result.steps_per_second > 0
    assert {"train_mlm_loss", "train_nsp_loss", "val_mlm_loss", "val_mlm_acc", "val_nsp_acc"} <= set(result.history[-1])
    assert [r["step"] for r in pl.history_rows(result)] == [20, 40]
    assert set(pl.history_rows(result)[-1]) == {"step", "mlm_loss", "mlm_acc", "nsp_acc"}
    assert result.history[-1]["val_mlm_loss"] < before["mlm_loss"] - 0.5, (before, result.history[-1])
    assert not model.training


def test_pretrain_runs_fits_schedule_and_no_decay_groups(tok, docs, monkeypatch):
    real_groups, seen = train.param_groups, []
    monkeypatch.setattr(train, "param_groups", lambda *a, **kw: seen.append(real_groups(*a, **kw)) or seen[-1])
    model = tiny_model(len(tok))
    loader = DataLoader(nsp_pairs(docs, 48, seed=0), batch_size=8, shuffle=True,
                        collate_fn=PretrainingCollator(tok, max_length=48, seed=0))
    steps, lr = 20, 1e-3
    result = pl.pretrain(model, loader, steps, lr=lr, warmup=0.2, weight_decay=0.05, plot=False, progress=False)
    # the learning rate of every step (6 batches per pass over the data: cycled) follows train.warmup_linear
    assert [r["step"] for r in result.steps] == list(range(1, steps + 1))
    assert [r["lr"] for r in result.steps] == pytest.approx([lr * train.warmup_linear(s, 4, steps) for s in range(steps)])
    # AdamW's groups are train.param_groups': no decay on exactly the biases and LayerNorm weights
    (decay, no_decay), = seen
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    got = {names[id(p)] for p in no_decay["params"]}
    assert got == {n for n in names.values() if n.endswith("bias") or ".LayerNorm." in n}
    assert {"cls.predictions.bias", "cls.predictions.transform.LayerNorm.weight", "bert.embeddings.LayerNorm.weight"} <= got
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)


def test_pretrain_redraws_the_live_plot_after_each_evaluation(tok, batches, monkeypatch):
    drawn = []

    class Spy(LivePlot):
        def update(self, result):
            drawn.append((self.panels, [r["step"] for r in result.history]))
            super().update(result)

    monkeypatch.setattr(plots, "LivePlot", Spy)
    pl.pretrain(tiny_model(len(tok)), batches, 6, eval_batches=batches[:1], eval_every=2, progress=False)
    assert [steps for _, steps in drawn] == [[2], [2, 4], [2, 4, 6]]
    assert [key for key, _ in drawn[0][0]] == ["mlm_loss", "mlm_acc", "nsp_acc"]


def test_pretrain_mlm_only_batches_and_bad_arguments(tok, texts):
    collate = PretrainingCollator(tok, max_length=32, seed=0)
    batches = [collate(texts[i:i + 8]) for i in range(0, 16, 8)]  # single texts: no NSP
    result = pl.pretrain(tiny_model(len(tok)), batches, 3, eval_batches=batches, eval_every=3, plot=False,
                         progress=False)
    assert "val_nsp_acc" not in result.history[-1] and "train_nsp_loss" not in result.history[-1]
    assert "train_mlm_loss" in result.history[-1]
    with pytest.raises(ValueError, match="steps"):
        pl.pretrain(tiny_model(len(tok)), batches, 0, plot=False, progress=False)
    with pytest.raises(ValueError, match="empty"):
        pl.pretrain(tiny_model(len(tok)), [], 2, plot=False, progress=False)
    with pytest.raises(TypeError, match="DataLoader"):
        pl.pretrain(tiny_model(len(tok)), texts[:8], 2, plot=False, progress=False)


def test_pretrain_loop_has_no_optimizer_or_schedule_of_its_own():
    """One training loop in the course: pretrain_loop trains through bertlab.train.fit."""
    src = inspect.getsource(pl)
    for own in ("torch.optim", "AdamW(", "LambdaLR", "lr_scheduler", ".backward(", "clip_grad_norm", "def _schedule"):
        assert own not in src, f"pretrain_loop has {own!r}: train through bertlab.train.fit instead"


@pytest.mark.parametrize("masked_only", [False, True])
def test_steps_per_second_is_positive(tok, batches, masked_only):
    assert pl.steps_per_second(tiny_model(len(tok)), batches, masked_only=masked_only, n_steps=2) > 0


def test_live_plot_draws_without_a_notebook(capsys):
    result = train.TrainResult(history=[{"step": 1, "train_mlm_loss": 5.0, "val_mlm_loss": 4.0, "val_mlm_acc": 0.1,
                                         "val_nsp_acc": 0.5}])
    plot = LivePlot({"mlm_loss": 5.5, "mlm_acc": 0.05, "nsp_acc": 0.5}, nsp=True)
    plot.update(result)
    plot.update(result)
    assert len(plot.axes) == 3 and plot.axes[2].get_title() == "NSP accuracy"
    assert [line.get_label() for line in plot.axes[0].lines] == ["train", "held out", "unigram"]
    assert [line.get_label() for line in plot.axes[2].lines] == ["held out", "chance"]
    assert list(plot.axes[0].lines[1].get_ydata()) == [4.0], "held out: the val_ column"
    assert plot.handle is None and "Image" not in capsys.readouterr().out, "outside IPython nothing is displayed"


def test_live_plot_works_without_ipython_installed(monkeypatch):
    """A notebook converted to a script runs where IPython is not installed (the GPU run)."""
    for name in ("IPython", "IPython.display"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    result = train.TrainResult(history=[{"step": 1, "train_mlm_loss": 5.0, "val_mlm_loss": 4.0, "val_mlm_acc": 0.1}])
    plot = LivePlot({"mlm_loss": 5.5}, nsp=False)
    plot.update(result)
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
    nsp_head = {k: v.clone() for k, v in model.cls.seq_relationship.state_dict().items()}
    transform = model.cls.predictions.transform.dense.weight.detach().clone()
    result, info = pl.train_mlm_head(model, tok, texts[:200], 30, eval_every=10, batch_positions=32, progress=False)
    assert all(torch.equal(v.cpu(), model.bert.state_dict()[k].cpu()) for k, v in encoder.items()), "the encoder changed"
    assert all(torch.equal(v.cpu(), model.cls.seq_relationship.state_dict()[k].cpu()) for k, v in nsp_head.items())
    assert not torch.equal(transform.cpu(), model.cls.predictions.transform.dense.weight.detach().cpu()), "the head must train"
    assert len(result.steps) == 30 and [r["step"] for r in result.history] == [10, 20, 30]
    assert info["positions"] > 100 and info["baseline"]["mlm_loss"] > 0 and not model.training
    # A random encoder carries no information about the hidden token, so the best head is the unigram
    # model: the bias starts there and training must not drift away from it.
    held_out = pl.history_rows(result)
    assert abs(held_out[-1]["mlm_loss"] - info["baseline"]["mlm_loss"]) < 0.1, (info["baseline"], held_out)
    assert set(pl.head_state(model)) == set(pl.HEAD_KEYS)


def test_head_config_names_the_checkpoint_and_rejects_unknown_settings():
    cfg = head_config(steps=3)
    assert cfg["checkpoint"] == "all-MiniLM-L6-v2" and cfg["steps"] == 3
    assert cache.key("mlm-head", cfg) != cache.key("mlm-head", head_config())
    with pytest.raises(ValueError, match="unknown"):
        head_config(stepz=3)


def test_checkpoint_with_mlm_head_trains_once_then_loads_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
    cfg = head_config(corpus_docs=8, steps=4, batch_positions=16)
    model, tok, info = checkpoint_with_mlm_head(cfg, progress=False)
    assert not info["cached"] and info["sentences"] > 10 and len(info["eval"]) == 1
    assert len(tok) == 30522 and not model.training
    again, _, info2 = checkpoint_with_mlm_head(cfg, progress=False)
    assert info2["cached"] and info2["eval"] == info["eval"]
    for k in pl.HEAD_KEYS:
        assert torch.equal(model.state_dict()[k], again.state_dict()[k]), k
    fresh = BertForPreTraining.from_pretrained()
    assert not torch.equal(fresh.state_dict()["cls.predictions.bias"], again.state_dict()["cls.predictions.bias"])
    assert torch.equal(fresh.state_dict()["bert.encoder.layer.5.output.dense.weight"],
                       again.state_dict()["bert.encoder.layer.5.output.dense.weight"]), "the encoder must stay frozen"
    with pytest.raises(ValueError, match="unknown"):
        checkpoint_with_mlm_head({**cfg, "stepz": 1})
