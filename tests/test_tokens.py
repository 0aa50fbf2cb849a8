"""Tests of bertlab.tokens: BIO alignment and decoding, entity scores, QA windows, span decoding, SQuAD metrics."""
import math

import pytest
import torch

from bertlab import pretrained, tokens
from bertlab.batches import IGNORE_INDEX as X
from bertlab.data import ENTITY_ROLES, generate_reports

NAMES = tokens.tag_names(["V", "D"])
IDS = {n: i for i, n in enumerate(NAMES)}


@pytest.fixture(scope="module")
def tok():
    return pretrained.load_tokenizer()


def test_tag_names():
    assert NAMES == ("O", "B-V", "I-V", "B-D", "I-D")
    with pytest.raises(ValueError, match="types"):
        tokens.tag_names("VOLTAGE")


def test_align_labels_first_piece_of_each_word_only():
    # "[CLS] vdd core at 1 . 05 v [SEP]": words 0..5, "vdd" split in two pieces
    text = "VDDcore at 1.05 V"
    offsets = [(0, 0), (0, 3), (3, 7), (8, 10), (11, 12), (12, 13), (13, 15), (16, 17), (0, 0)]
    words = [None, 0, 0, 1, 2, 3, 4, 5, None]
    spans = [(0, 7, "D"), (11, 17, "V")]
    assert text[11:17] == "1.05 V"
    got = tokens.align_labels(offsets, words, spans, IDS)
    assert got == [X, IDS["B-D"], X, IDS["O"], IDS["B-V"], IDS["I-V"], IDS["I-V"], IDS["I-V"], X]
    with pytest.raises(ValueError, match="word_ids"):
        tokens.align_labels(offsets, words[:-1], spans, IDS)


def test_two_adjacent_entities_of_one_type_both_start_with_b():
    offsets = [(0, 0), (0, 1), (2, 3), (0, 0)]
    words = [None, 0, 1, None]
    got = tokens.align_labels(offsets, words, [(0, 1, "V"), (2, 3, "V")], IDS)
    assert got == [X, IDS["B-V"], IDS["B-V"], X]


def test_alignment_round_trips_every_generated_entity(tok):
    types = ["DEVICE", "WAFER", "DIE"] + [f"{t}.{r}" for t, rs in ENTITY_ROLES.items() for r in rs]
    names = tokens.tag_names(types)
    ids = {n: i for i, n in enumerate(names)}
    for fab in "ADE":
        for r in generate_reports(40, fab=fab, split="test"):
            enc = tok(r.text, return_offsets_mapping=True)
            spans = {(e.start, e.end, f"{e.label}.{e.role}" if e.role else e.label) for e in r.entities}
            labels = tokens.align_labels(enc["offset_mapping"], enc.word_ids(), sorted(spans), ids)
            pred = [0 if y == X else y for y in labels]
            assert tokens.decode_entities(pred, enc["offset_mapping"], enc.word_ids(), names) == spans, r.text


def test_empty_report(tok):
    enc = tok("", return_offsets_mapping=True)
    labels = tokens.align_labels(enc["offset_mapping"], enc.word_ids(), [], IDS)
    assert labels == [X, X]
    assert tokens.decode_entities([0, 0], enc["offset_mapping"], enc.word_ids(), NAMES) == set()
    assert tokens.entity_scores([set()], [set()])["f1"] == 0.0


@pytest.mark.parametrize("tags, spans", [
    (["B-V", "I-V", "O", "B-D"], [(0, 2, "V"), (3, 4, "D")]),     # an entity at the very end
    (["I-V", "I-V", "O"], []),                                    # I- without B-: no entity (strict)
    (["B-V", "I-D", "I-D"], [(0, 1, "V")]),                       # I- of another type ends the entity
    (["B-V", "B-V", "I-V"], [(0, 1, "V"), (1, 3, "V")]),          # B- always starts a new one
    (["O", "B-D", "I-V", "B-D"], [(1, 2, "D"), (3, 4, "D")]),
    ([], []),
])
def test_bio_to_spans_strict(tags, spans):
    assert tokens.bio_to_spans(tags) == spans


def test_bio_to_spans_rejects_ids():
    with pytest.raises(TypeError, match="tags"):
        tokens.bio_to_spans([1, 2])


def test_entity_scores_count_exact_spans_only():
    gold = [{(0, 4, "V"), (10, 14, "D")}]
    pred = [{(0, 4, "V"), (10, 13, "D"), (20, 22, "V")}]      # one exact, one partial, one extra
    s = tokens.entity_scores(gold, pred)
    assert (s["tp"], s["predicted"], s["gold"]) == (1, 3, 2)
    assert math.isclose(s["precision"], 1 / 3) and math.isclose(s["recall"], 1 / 2)
    assert math.isclose(s["f1"], 0.4)
    with pytest.raises(ValueError, match="pred"):
        tokens.entity_scores(gold, [])


def test_question_longer_than_the_window_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="max_length=16"):
        tokens.qa_windows(tok, "which supply domain failed first on the bench today", "VDDQ failed.", max_length=16,
                          stride=4)


def _long_report():
    return " ".join(f"Reading {k} was normal." for k in range(40)) + " The failing rail was VDD_CORE"


def test_answer_at_the_very_end_needs_windows(tok):
    context = _long_report()
    start = context.index("VDD_CORE")
    span = (start, len(context))
    plain = tokens.qa_windows(tok, "Which domain failed?", context, span, max_length=64, stride=16, windows=False)
    assert len(plain) == 1 and (plain[0]["start_positions"], plain[0]["end_positions"]) == (0, 0)
    wins = tokens.qa_windows(tok, "Which domain failed?", context, span, max_length=64, stride=16)
    assert len(wins) > 3 and all(len(w["input_ids"]) <= 64 for w in wins)
    last = wins[-1]
    i, j = last["start_positions"], last["end_positions"]
    assert 0 < i <= j and context[last["offsets"][i][0]:last["offsets"][j][1]] == "VDD_CORE"
    assert all(w["start_positions"] == 0 for w in wins[:-1] if w["offsets"][-2][1] < start)


def test_an_answer_split_by_a_window_boundary_is_labelled_in_the_window_holding_it_whole(tok):
    context = _long_report()
    wins = tokens.qa_windows(tok, "Which reading?", context, None, max_length=48, stride=16)
    first_end = max(o[1] for o in wins[0]["offsets"] if o is not None)
    # a span that starts inside window 0 and ends after it
    start = max(o[0] for o in wins[0]["offsets"] if o is not None)
    span = (start, context.index("normal", start + 1) + len("normal"))   # ends on a token boundary
    assert span[1] > first_end
    wins = tokens.qa_windows(tok, "Which reading?", context, span, max_length=48, stride=16)
    assert wins[0]["start_positions"] == 0 and wins[0]["end_positions"] == 0, "a cut answer must point at [CLS]"
    holding = [w for w in wins if w["start_positions"] > 0]
    assert holding, "the stride should give a window holding the answer whole"
    w = holding[0]
    assert w["offsets"][w["start_positions"]][0] == span[0] and w["offsets"][w["end_positions"]][1] == span[1]


def test_token_type_ids_mark_the_report(tok):
    w = tokens.qa_windows(tok, "Which domain?", "VDDQ failed.", (0, 4))[0]
    assert w["token_type_ids"][0] == 0 and w["token_type_ids"][-1] == 1
    assert [o is not None for o in w["offsets"]] == [t == 1 for t in w["token_type_ids"][:-1]] + [False]


def test_best_span_respects_order_length_and_context():
    s = torch.tensor([9.0, 5.0, 0.0, 2.0, 0.0, 0.0])
    e = torch.tensor([9.0, 0.0, 4.0, 0.0, 0.0, 3.0])
    ctx = torch.tensor([0, 0, 1, 1, 1, 1]).bool()        # tokens 0-1: [CLS] and the question
    assert tokens.best_span(s, e, ctx, max_answer_len=5) == (3, 5, 5.0)
    assert tokens.best_span(s, e, ctx, max_answer_len=1)[:2] == (2, 2)
    s2 = torch.tensor([0.0, 0.0, 0.0, 0.0, 8.0, 0.0])
    e2 = torch.tensor([0.0, 0.0, 7.0, 0.0, 0.0, 0.0])    # the best end comes before the best start
    i, j, _ = tokens.best_span(s2, e2, ctx, max_answer_len=4)
    assert i <= j
    assert tokens.best_span(s, e, torch.zeros(6).bool())[2] == float("-inf")
    with pytest.raises(ValueError, match="max_answer_len"):
        tokens.best_span(s, e, ctx, max_answer_len=0)


def test_answer_picks_the_best_window_and_applies_the_null_threshold():
    wins = [{"offsets": [None, (0, 4), (5, 11), None]}, {"offsets": [None, (5, 11), (12, 17), None]}]
    context = "VDDQ failed badly"
    s = [torch.tensor([1.0, 2.0, 0.0, 0.0]), torch.tensor([0.5, 0.0, 3.0, 0.0])]
    e = [torch.tensor([1.0, 2.0, 0.0, 0.0]), torch.tensor([0.5, 0.0, 3.0, 0.0])]
    text, margin = tokens.answer(wins, s, e, context, threshold=0.0)
    assert text == "badly" and margin == pytest.approx(1.0 - 6.0)
    assert tokens.answer(wins, s, e, context, threshold=-6.0)[0] == ""


@pytest.mark.parametrize("pred, gold, em, f1", [
    ("The VDDQ rail", "vddq rail", 1.0, 1.0),
    ("1.05 V", "1.05V", 0.0, 0.0),            # SQuAD normalisation keeps the space: two tokens vs one
    ("VDDQ", "VDDQ rail", 0.0, 2 / 3),
    ("", "", 1.0, 1.0),                       # a right "no answer"
    ("VDDQ", "", 0.0, 0.0),
    ("a", "", 1.0, 1.0),                      # only an article: normalises to nothing
    ("125°C", "125C", 1.0, 1.0),              # the degree sign is a symbol (string.punctuation lacks it)
    ("±5 mV", "5 mV", 1.0, 1.0),
    ("3 µs", "3 s", 0.0, 0.5),                # µ is a letter: it stays
])
def test_squad_metrics(pred, gold, em, f1):
    assert tokens.exact_match(pred, gold) == em
    assert tokens.token_f1(pred, gold) == pytest.approx(f1)


def test_qa_scores_split_answerable_and_not():
    s = tokens.qa_scores(["VDDQ", "", "x"], [["VDDQ", "VDDIO"], [], []])
    assert s["answerable"] == {"n": 1, "em": 100.0, "f1": 100.0}
    assert s["unanswerable"]["n"] == 2 and s["unanswerable"]["em"] == 50.0
    assert s["overall"]["em"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="golds"):
        tokens.qa_scores(["a"], [])


def test_the_pipelines_take_the_learners_pieces():
    # notebook 10 passes the learner's functions: each one given is the one used
    calls = []

    def spans(tags):
        calls.append(list(tags))
        return []

    assert tokens.decode_entities([1, 2], [(0, 4), (5, 9)], [0, 1], NAMES, bio_to_spans=spans) == set()
    assert calls == [[NAMES[1], NAMES[2]]]
    wins = [{"offsets": [None, (0, 4), (5, 11), None]}]
    s = e = [torch.tensor([0.0, 1.0, 0.0, 0.0])]
    seen = []

    def last_token(start_logits, end_logits, context_mask, max_answer_len):
        seen.append(context_mask)
        return 2, 2, 5.0

    assert tokens.answer(wins, s, e, "VDDQ failed", best_span=last_token, threshold=10.0) == ("failed", 0.0 - 5.0)
    assert seen[0].dtype == torch.bool and seen[0].tolist() == [False, True, True, False]  # a bool tensor mask
    upper = tokens.qa_scores(["VDDQ"], [["vddq"]], normalize_answer=str, token_f1=lambda p, g: float(p == g))
    assert upper["overall"] == {"n": 1, "em": 0.0, "f1": 0.0}  # case kept by the normaliser given


def _tiny_encoder():
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32), add_pooling_layer=False)


def test_heads_shapes_and_span_loss():
    ids = torch.randint(0, 50, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    assert tokens.TokenTagger(_tiny_encoder(), 5)(ids, mask)["logits"].shape == (2, 7, 5)
    out = tokens.SpanExtractor(_tiny_encoder())(ids, mask)
    assert out["start_logits"].shape == (2, 7) and out["end_logits"][1, 5:].max() <= -1e4 + 1
    batch = {"start_positions": torch.tensor([0, 2]), "end_positions": torch.tensor([3, 2])}
    ls = torch.log_softmax(out["start_logits"], -1)
    le = torch.log_softmax(out["end_logits"], -1)
    hand = -(ls[0, 0] + ls[1, 2] + le[0, 3] + le[1, 2]) / 4
    assert torch.allclose(tokens.span_loss(out, batch), hand, atol=1e-6)


def test_every_answer_of_at_most_stride_plus_one_tokens_lies_whole_in_a_window(tok):
    # Cut by bertlab, not by the tokenizer's overflow rules (they changed between tokenizers versions).
    context = _long_report()
    offsets = tok(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    stride = 8
    for a in range(0, len(offsets), 3):
        for n in (1, stride // 2, stride + 1):
            if a + n > len(offsets):
                continue
            span = (offsets[a][0], offsets[a + n - 1][1])
            wins = tokens.qa_windows(tok, "Which reading?", context, span, max_length=40, stride=stride)
            assert all(len(w["input_ids"]) <= 40 for w in wins)
            held = [w for w in wins if w["start_positions"] > 0]
            assert held, f"no window holds the {n}-token answer at token {a}"
            w = held[0]
            assert (w["offsets"][w["start_positions"]][0], w["offsets"][w["end_positions"]][1]) == span
    # consecutive windows share exactly `stride` report tokens
    wins = tokens.qa_windows(tok, "Which reading?", context, None, max_length=40, stride=stride)
    report_offsets = [[o for o in w["offsets"] if o is not None] for w in wins]
    assert all(len(set(x) & set(y)) == stride for x, y in zip(report_offsets, report_offsets[1:]))
    assert report_offsets[-1][-1] == offsets[-1], "the last window reaches the end of the report"
