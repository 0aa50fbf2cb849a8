"""MLM masking, NSP pairs, the MLM loss and the pre-training collator (bertlab.pretraining)."""
import math

import pytest
import torch

from bertlab.model import BertConfig, BertForPreTraining
from bertlab.pretrained import load_tokenizer
from bertlab.pretraining import IGNORE_INDEX, PretrainingCollator, mask_tokens, mlm_loss, nsp_pairs

V, MASK = 30522, 103


def log_softmax_loss(logits, label):
    return -(logits[label] - math.log(sum(math.exp(x) for x in logits)))


# --- mlm_loss on hand-computed cases ---------------------------------------------------------------


def test_mlm_loss_hand_computed_padding_does_not_count():
    """One sequence: two chosen tokens, one unchosen token, two padding positions (V = 2)."""
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0], [9.0, 0.0], [9.0, 0.0]]])
    labels = torch.tensor([[0, 0, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    expected = (math.log(2) + math.log(4 / 3)) / 2  # -log(1/2) and -log(3/4), over 2 chosen positions
    assert mlm_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    # d2l-en issue 2582: a mean over all 5 positions would give 2/5 of it.
    assert mlm_loss(logits, labels).item() != pytest.approx(expected * 2 / 5, abs=1e-3)


def test_mlm_loss_is_mean_over_all_chosen_tokens_not_mean_of_sequence_means():
    """Sequence 0 has 1 chosen token (loss ln 2), sequence 1 has 3 (loss ln 4/3 each) and 1 padding."""
    logits = torch.tensor(
        [
            [[0.0, 0.0], [7.0, 1.0], [7.0, 1.0], [7.0, 1.0]],
            [[math.log(3.0), 0.0], [0.0, math.log(3.0)], [math.log(3.0), 0.0], [0.0, 9.0]],
        ]
    )
    labels = torch.tensor([[1, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX], [0, 1, 0, IGNORE_INDEX]])
    expected = (math.log(2) + 3 * math.log(4 / 3)) / 4
    assert mlm_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    per_sequence_mean = (math.log(2) + math.log(4 / 3)) / 2
    assert abs(expected - per_sequence_mean) > 0.05  # the two readings really differ here


def test_mlm_loss_hand_computed_three_classes():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
    labels = torch.tensor([2, 1])
    expected = (log_softmax_loss([1.0, 2.0, 3.0], 2) + log_softmax_loss([0.5, -1.0, 2.0], 1)) / 2
    assert mlm_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_mlm_loss_on_gathered_logits_equals_full_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=g)
    labels = torch.full((3, 6), IGNORE_INDEX)
    labels[0, 1], labels[1, [0, 5]], labels[2, 3] = 4, torch.tensor([7, 0]), 10
    chosen = labels != IGNORE_INDEX
    full = mlm_loss(logits, labels)
    assert mlm_loss(logits[chosen], labels).item() == pytest.approx(full.item(), abs=1e-6)
    assert mlm_loss(logits[chosen], labels[chosen]).item() == pytest.approx(full.item(), abs=1e-6)


def test_mlm_loss_gradient_reaches_only_chosen_positions():
    logits = torch.zeros(1, 3, 4, requires_grad=True)
    mlm_loss(logits, torch.tensor([[2, IGNORE_INDEX, 1]])).backward()
    assert logits.grad[0, 1].abs().max() == 0 and logits.grad[0, 0].abs().max() > 0


def test_mlm_loss_bad_arguments():
    with pytest.raises(ValueError, match="no position"):
        mlm_loss(torch.zeros(1, 3, 4), torch.full((1, 3), IGNORE_INDEX))
    with pytest.raises(ValueError, match="labels"):
        mlm_loss(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="N labels"):
        mlm_loss(torch.zeros(2, 4), torch.tensor([[1, 2, 3]]))
    with pytest.raises(TypeError, match="logits"):
        mlm_loss(torch.zeros(2, 3, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="labels"):
        mlm_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="labels"):
        mlm_loss(torch.zeros(1, 2, 4), torch.tensor([[1, 4]]))


# --- mask_tokens ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_batch():
    """400 sequences of up to 256 tokens: [CLS] words [SEP] then padding, lengths varying."""
    g = torch.Generator().manual_seed(123)
    B, T = 400, 256
    ids = torch.randint(1000, V, (B, T), generator=g)
    lengths = torch.randint(20, T + 1, (B,), generator=g)
    attention = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ids[attention == 0] = 0
    special = torch.zeros(B, T, dtype=torch.bool)
    special[:, 0] = True
    special[torch.arange(B), lengths - 1] = True
    ids[:, 0], ids[torch.arange(B), lengths - 1] = 101, 102
    return ids, special, attention


def within(count, n, p, sigmas=5.0):
    """count/n is within `sigmas` binomial standard deviations of p."""
    return abs(count / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def test_mask_tokens_statistics(big_batch):
    ids, special, attention = big_batch
    masked, labels = mask_tokens(ids, special, vocab_size=V, mask_token_id=MASK,
                                 generator=torch.Generator().manual_seed(0), attention_mask=attention)
    candidates = ~special & attention.bool()
    chosen = labels != IGNORE_INDEX
    n_cand, n = int(candidates.sum()), int(chosen.sum())
    assert n_cand > 40_000 and n > 6_000
    assert within(n, n_cand, 0.15), f"chose {n / n_cand:.4f} of the candidates"
    assert torch.equal(labels[chosen], ids[chosen])  # labels are the original tokens
    to_mask = masked[chosen] == MASK
    kept = masked[chosen] == ids[chosen]
    replaced = ~to_mask & ~kept
    assert within(int(to_mask.sum()), n, 0.8), f"[MASK] share {to_mask.float().mean():.4f}"
    assert within(int(kept.sum()), n, 0.1 + 0.1 / V), f"kept share {kept.float().mean():.4f}"
    assert within(int(replaced.sum()), n, 0.1 - 0.2 / V), f"random share {replaced.float().mean():.4f}"
    random_ids = masked[chosen][replaced]
    assert random_ids.min() >= 0 and random_ids.max() < V
    assert random_ids.unique().numel() > 0.9 * random_ids.numel()  # spread over the vocabulary
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else changes


def test_mask_tokens_never_chooses_special_or_padding(big_batch):
    ids, special, attention = big_batch
    masked, labels = mask_tokens(ids, special, vocab_size=V, mask_token_id=MASK, mlm_probability=0.9,
                                 generator=torch.Generator().manual_seed(1), attention_mask=attention)
    protected = special | (attention == 0)
    assert (labels[protected] == IGNORE_INDEX).all()
    assert torch.equal(masked[protected], ids[protected])
    assert within(int((labels != IGNORE_INDEX).sum()), int((~protected).sum()), 0.9)


def test_mask_tokens_pad_token_id_alone_protects_padding(big_batch):
    ids, special, _ = big_batch
    masked, labels = mask_tokens(ids, special, vocab_size=V, mask_token_id=MASK, mlm_probability=1.0,
                                 generator=torch.Generator().manual_seed(2), pad_token_id=0)
    assert (labels[ids == 0] == IGNORE_INDEX).all() and (masked[ids == 0] == 0).all()
    assert (labels[~special & (ids != 0)] != IGNORE_INDEX).all()  # probability 1 chooses every candidate


def test_mask_tokens_does_not_modify_input_and_is_reproducible(big_batch):
    ids, special, attention = big_batch
    before = (ids.clone(), special.clone(), attention.clone())
    kw = dict(vocab_size=V, mask_token_id=MASK, attention_mask=attention)
    a = mask_tokens(ids, special, generator=torch.Generator().manual_seed(7), **kw)
    b = mask_tokens(ids, special, generator=torch.Generator().manual_seed(7), **kw)
    c = mask_tokens(ids, special, generator=torch.Generator().manual_seed(8), **kw)
    assert all(torch.equal(x, y) for x, y in zip(before, (ids, special, attention)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(mlm_probability=0.0), ValueError, "mlm_probability"),
        (dict(mlm_probability=1.5), ValueError, "mlm_probability"),
        (dict(mask_token_id=V), ValueError, "mask_token_id"),
        (dict(vocab_size=0), ValueError, "vocab_size"),
        (dict(vocab_size=1000, mask_token_id=5), ValueError, "input_ids"),
        (dict(input_ids=torch.ones(2, 3)), TypeError, "input_ids"),
        (dict(input_ids=torch.ones(6, dtype=torch.long)), ValueError, "input_ids"),
        (dict(special_tokens_mask=torch.zeros(2, 4, dtype=torch.bool)), ValueError, "special_tokens_mask"),
        (dict(attention_mask=torch.ones(3, 3)), ValueError, "attention_mask"),
        (dict(generator=0), TypeError, "generator"),
    ],
)
def test_mask_tokens_bad_arguments(kwargs, error, match):
    args = dict(input_ids=torch.tensor([[101, 2000, 102], [101, 3000, 102]]), special_tokens_mask=None,
                vocab_size=V, mask_token_id=MASK)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        mask_tokens(args.pop("input_ids"), args.pop("special_tokens_mask"), **args)


# --- nsp_pairs ------------------------------------------------------------------------------------------


def tagged_documents(sizes=(5, 1, 4, 7, 3, 2)):
    return [[f"d{d}s{i}" for i in range(n)] for d, n in enumerate(sizes)]


def where(sentence):
    d, i = sentence[1:].split("s")
    return int(d), int(i)


def test_nsp_pairs_labels_are_balanced_and_correct():
    docs = tagged_documents()
    pairs = nsp_pairs(docs, seed=0)
    assert len(pairs) == sum(len(d) - 1 for d in docs)  # each consecutive pair position once
    labels = [label for _, _, label in pairs]
    assert labels.count(0) - labels.count(1) in (0, 1)
    for a, b, label in pairs:
        (da, ia), (db, ib) = where(a), where(b)
        if label == 0:  # IsNext: the following sentence of the same document
            assert (db, ib) == (da, ia + 1)
        else:  # NotNext: a sentence of another document
            assert label == 1 and db != da


def test_nsp_pairs_many_pairs_and_seeds():
    docs = tagged_documents()
    pairs = nsp_pairs(docs, n_pairs=1000, seed=3)
    labels = [label for _, _, label in pairs]
    assert len(pairs) == 1000 and labels.count(0) == labels.count(1) == 500
    assert len({where(a) for a, _, _ in pairs}) == sum(len(d) - 1 for d in docs)  # every position used
    other_docs = {where(b)[0] for _, b, label in pairs if label == 1}
    assert other_docs == set(range(len(docs)))  # NotNext draws from every document, even one-sentence ones
    assert pairs == nsp_pairs(docs, n_pairs=1000, seed=3)
    assert pairs != nsp_pairs(docs, n_pairs=1000, seed=4)


@pytest.mark.parametrize(
    "documents, kwargs, error, match",
    [
        ("one text", {}, TypeError, "documents"),
        (["a. b.", "c. d."], {}, TypeError, r"documents\[0\]"),
        ([["a", "b", "c"]], {}, ValueError, "2 non-empty documents"),
        ([["a"], ["b"], []], {}, ValueError, "2 or more sentences"),
        ([["a", 3], ["b"]], {}, TypeError, r"documents\[0\]"),
        ([["a", "b"], ["c"]], dict(n_pairs=0), ValueError, "n_pairs"),
    ],
)
def test_nsp_pairs_bad_arguments(documents, kwargs, error, match):
    with pytest.raises(error, match=match):
        nsp_pairs(documents, **kwargs)


# --- the collator, end to end --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


DOCS = [
    ["Wafer W07 failed the leakage test at 85 C.", "Die 12 showed gate oxide breakdown.", "ESD was ruled out."],
    ["Bond wire lift on pin 3.", "Thermal cycling caused the crack."],
    ["Metal bridging between M1 lines.", "Particle contamination in the CMP step is the likely root cause.",
     "The tool was requalified.", "No recurrence on the next 20 lots."],
]


def test_collator_pairs_batch(tokenizer):
    pairs = nsp_pairs(DOCS, n_pairs=8, seed=0)
    batch = PretrainingCollator(tokenizer, seed=0)(pairs)
    B, T = batch["input_ids"].shape
    assert B == 8 and set(batch) == {"input_ids", "token_type_ids", "attention_mask", "mlm_labels", "nsp_labels",
                                     "masked_positions"}
    assert batch["masked_positions"].dtype == torch.bool
    assert torch.equal(batch["masked_positions"], batch["mlm_labels"] != IGNORE_INDEX)
    assert batch["nsp_labels"].tolist() == [label for _, _, label in pairs]
    plain = tokenizer([a for a, _, _ in pairs], [b for _, b, _ in pairs], padding=True, return_tensors="pt")
    assert T == plain["input_ids"].size(1)  # padded to the longest pair of this batch only
    assert torch.equal(batch["attention_mask"], plain["attention_mask"])
    assert torch.equal(batch["token_type_ids"], plain["token_type_ids"])
    chosen = batch["mlm_labels"] != IGNORE_INDEX
    assert torch.equal(batch["mlm_labels"][chosen], plain["input_ids"][chosen])
    special = torch.isin(plain["input_ids"], torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id, 0]))
    assert not (chosen & special).any()  # never [CLS], [SEP] or padding
    assert torch.equal(batch["input_ids"][~chosen], plain["input_ids"][~chosen])
    assert chosen.any()


def test_collator_text_only_and_reproducible(tokenizer):
    texts = [s for doc in DOCS for s in doc]
    a = PretrainingCollator(tokenizer, mlm_probability=0.5, seed=1)(texts)
    b = PretrainingCollator(tokenizer, mlm_probability=0.5, seed=1)(texts)
    assert "nsp_labels" not in a and (a["token_type_ids"] == 0).all()
    assert all(torch.equal(a[k], b[k]) for k in a)
    collate = PretrainingCollator(tokenizer, seed=1)
    assert not torch.equal(collate(texts)["mlm_labels"], collate(texts)["mlm_labels"])  # fresh masks each call
    with pytest.raises(TypeError, match="examples"):
        collate(["a text", ("a", "b", 0)])
    with pytest.raises(ValueError, match="nsp"):
        collate([("a", "b", 2)])
    with pytest.raises(ValueError, match="max_length"):
        PretrainingCollator(tokenizer, max_length=2)


def test_collator_feeds_pretraining_model_and_sparse_loss_equals_full(tokenizer):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    model = BertForPreTraining(config).eval()
    batch = PretrainingCollator(tokenizer, mlm_probability=0.3, seed=0)(nsp_pairs(DOCS, n_pairs=6))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    labels = batch["mlm_labels"]
    with torch.no_grad():
        full, nsp = model(**inputs)
        sparse, _ = model(**inputs, masked_positions=labels != IGNORE_INDEX)
    assert mlm_loss(sparse, labels).item() == pytest.approx(mlm_loss(full, labels).item(), abs=1e-5)
    assert mlm_loss(full, labels).item() == pytest.approx(math.log(len(tokenizer)), rel=0.05)  # untrained: ~ln V
    assert nsp.shape == (6, 2)
