"""Mutants of 03-pretraining (see bertlab/instructor/mutants/__init__.py)."""
from bertlab.instructor.mutants import edit

CANDIDATES = "candidates = ~special_tokens_mask.bool() & attention_mask.bool()  # (B, T)"
CHOSEN = "chosen = (torch.rand(shape, generator=generator) < mlm_probability) & candidates  # m_t"
SPLIT = """    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)  # the remaining 10% keep their token"""

LOSS_HEAD = '''def mlm_loss(logits, labels):
    """Mean cross-entropy over the chosen positions (labels != -100): (B, T, V), (B, T) -> scalar."""
'''
LOSS_BODY = """    chosen = labels != IGNORE_INDEX  # (B, T): the set M
    if not chosen.any():
        raise ValueError("labels choose no position (all are -100): the MLM loss is undefined")
"""

NOT_NEXT_DOC = """            other = rng.choice(nonempty)
            while other == d:
                other = rng.choice(nonempty)"""

MUTANTS = {
    "mask_tokens": {
        # input_ids changed in place: no clone
        "no clone": edit(("masked = input_ids.clone()", "masked = input_ids")),
        # padding known from special_tokens_mask only
        "attention_mask ignored": edit((CANDIDATES, "candidates = ~special_tokens_mask.bool()")),
        # the global generator
        "global random numbers": edit((CHOSEN, "chosen = (torch.rand(shape) < mlm_probability) & candidates")),
        # the random 10% drawn as 10% of what is left after [MASK]: 2% of the chosen
        "random share of the rest": edit((SPLIT, """    to_mask = chosen & (action < 0.8)
    to_random = chosen & ~to_mask & (torch.rand(shape, generator=generator) < 0.1)""")),
        # three independent draws: the shares overlap and do not add up to 80/10/10
        "independent draws": edit((SPLIT, """    to_mask = chosen & (action < 0.8)
    to_random = chosen & (torch.rand(shape, generator=generator) < 0.1)""")),
        # the 15% typed in
        "probability 0.15 hard-coded": edit((CHOSEN, "chosen = (torch.rand(shape, generator=generator) < 0.15) & candidates")),
        # ~ on a 0/1 integer mask is a bitwise not (-1, -2), and the result indexes instead of masking
        "~ on a 0/1 mask": edit((CANDIDATES, "candidates = ~special_tokens_mask & attention_mask.bool()")),
        # labels at every candidate, not only the chosen ones
        "labels at every candidate": edit(("labels = torch.where(chosen, input_ids,", "labels = torch.where(candidates, input_ids,")),
    },
    "mlm_loss": {
        # divided by every position of the batch (d2l's bug)
        "mean over all positions": LOSS_HEAD + LOSS_BODY + (
            "    losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction='none')\n"
            "    return losses.sum() / labels.numel()\n"),
        # a mean of per-sequence means
        "mean of sequence means": LOSS_HEAD + LOSS_BODY + (
            "    means = []\n"
            "    for z, y in zip(logits, labels):\n"
            "        if (y != IGNORE_INDEX).any():\n"
            "            means.append(F.cross_entropy(z, y, ignore_index=IGNORE_INDEX))\n"
            "    return torch.stack(means).mean()\n"),
        # log of softmax: -inf for a large logit gap
        "log(softmax)": edit(("log_p = F.log_softmax(logits[chosen], dim=-1)", "log_p = torch.log(logits[chosen].softmax(dim=-1))")),
        # cross_entropy's own ignore_index: NaN instead of ValueError when nothing is chosen
        "no ValueError": LOSS_HEAD + (
            "    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)\n"),
        # the value as a new tensor: no gradient
        "detached": edit(("return -log_p.gather(1, labels[chosen].unsqueeze(1)).mean()",
                          "return torch.tensor(-log_p.gather(1, labels[chosen].unsqueeze(1)).mean().item())")),
        # id 0 taken for "not chosen"
        "labels > 0": edit(("chosen = labels != IGNORE_INDEX  # (B, T): the set M", "chosen = labels > 0")),
    },
    "nsp_pairs": {
        # A may be the last sentence of its document (its pair is then always NotNext)
        "A without successor": edit(
            ("positions = [(d, i) for d, doc in enumerate(documents) for i in range(len(doc) - 1)]",
             "positions = [(d, i) for d, doc in enumerate(documents) for i in range(len(doc))]"),
            ("if rng.random() < 0.5:", "if rng.random() < 0.5 and i + 1 < len(documents[d]):")),
        # NotNext may come from A's own document
        "NotNext from any document": edit((NOT_NEXT_DOC, "            other = rng.choice(nonempty)")),
        # the module's random state, not random.Random(seed)
        "global random": edit(("rng = random.Random(seed)", "rng = random")),
        # labels the wrong way round
        "labels swapped": edit(("documents[d][i + 1], IS_NEXT", "documents[d][i + 1], NOT_NEXT"),
                               ("rng.choice(documents[other]), NOT_NEXT", "rng.choice(documents[other]), IS_NEXT")),
        # NotNext B is always the first sentence of the other document
        "NotNext B is a first sentence": edit(("rng.choice(documents[other]), NOT_NEXT", "documents[other][0], NOT_NEXT")),
        # the other document drawn among all documents, empty ones included
        "empty documents drawn": edit((NOT_NEXT_DOC, """            other = rng.choice([o for o in range(len(documents)) if o != d])""")),
    },
}

ALTERNATIVES = {
    "mask_tokens": {
        "bernoulli, then 0.5 of the rest (as transformers does)": edit(
            (CHOSEN, "chosen = torch.bernoulli(torch.full(shape, float(mlm_probability)), generator=generator).bool() & candidates"),
            (SPLIT, """    to_mask = chosen & torch.bernoulli(torch.full(shape, 0.8), generator=generator).bool()
    to_random = chosen & ~to_mask & torch.bernoulli(torch.full(shape, 0.5), generator=generator).bool()"""),
            ("labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))  # y_t",
             "labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)")),
    },
    "mlm_loss": {
        "cross_entropy on the chosen rows": LOSS_HEAD + LOSS_BODY + (
            "    return F.cross_entropy(logits[chosen], labels[chosen])\n"),
    },
    "nsp_pairs": {
        "draw the other document's sentence over all its positions": edit(
            (NOT_NEXT_DOC + "\n            pairs.append((a, rng.choice(documents[other]), NOT_NEXT))",
             """            others = [(o, j) for o in nonempty if o != d for j in range(len(documents[o]))]
            o, j = rng.choice(others)
            pairs.append((a, documents[o][j], NOT_NEXT))""")),
    },
}
