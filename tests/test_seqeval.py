"""Notebook 10's entity F1 (``bertlab.tokens``: strict BIO decoding, exact-match spans) equals seqeval's."""
import numpy as np
import pytest

from bertlab import tokens

seqeval_metrics = pytest.importorskip("seqeval.metrics")
from seqeval.scheme import IOB2  # noqa: E402

TAGS = tokens.tag_names(["VALUE", "DEVICE", "DOMAIN"])


def sequences(rng, n, length=(1, 25), noise=0.0, gold=None):
    """``n`` tag sequences: well-formed BIO (B- then I- of the same type), or ``gold`` with a share
    ``noise`` of its tags replaced by any tag (so stray I-, type switches and cut entities occur)."""
    out = []
    for k in range(n):
        if gold is not None:
            seq = [t if rng.random() >= noise else TAGS[rng.integers(len(TAGS))] for t in gold[k]]
        else:
            seq, kind = [], None
            for _ in range(rng.integers(*length)):
                r = rng.random()
                if kind and r < 0.4:
                    seq.append(f"I-{kind}")
                elif r < 0.7:
                    kind = None
                    seq.append("O")
                else:
                    kind = ["VALUE", "DEVICE", "DOMAIN"][rng.integers(3)]
                    seq.append(f"B-{kind}")
        out.append(seq)
    return out


def ours(gold, pred) -> dict:
    def spans(seqs):
        return [set(tokens.bio_to_spans(s)) for s in seqs]

    return tokens.entity_scores(spans(gold), spans(pred))


@pytest.mark.parametrize("seed,noise", [(0, 0.0), (1, 0.05), (2, 0.2), (3, 0.5), (4, 1.0)])
def test_entity_f1_equals_seqeval_strict(seed, noise):
    rng = np.random.default_rng(seed)
    gold = sequences(rng, 300)
    pred = sequences(rng, 300, noise=noise, gold=gold)
    got = ours(gold, pred)
    kw = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
    assert got["precision"] == pytest.approx(seqeval_metrics.precision_score(gold, pred, **kw), abs=1e-12)
    assert got["recall"] == pytest.approx(seqeval_metrics.recall_score(gold, pred, **kw), abs=1e-12)
    assert got["f1"] == pytest.approx(seqeval_metrics.f1_score(gold, pred, **kw), abs=1e-12)
    if noise == 0.0:
        assert got["f1"] == 1.0
    elif noise >= 0.2:
        assert got["f1"] < 0.9  # the noise reaches the score: the comparison is not between two perfect scores


def test_strict_and_lenient_differ_where_notebook_10_says():
    """A stray I- starts no entity in strict mode (ours); seqeval's default (conlleval) mode counts one."""
    gold, pred = [["B-VALUE", "I-VALUE", "O"]], [["I-VALUE", "I-VALUE", "O"]]
    assert ours(gold, pred)["f1"] == 0.0
    assert seqeval_metrics.f1_score(gold, pred) == 1.0
