"""Mutants of 11-bert-family (see bertlab/instructor/mutants/__init__.py)."""
from bertlab.instructor.mutants import edit

GEN = "    g = torch.Generator().manual_seed(seed)\n"
LOOP = "    for _ in range(epochs):\n"
BALANCED = "    labels = [0] * ((len(positions) + 1) // 2) + [1] * (len(positions) // 2)\n    rng.shuffle(labels)\n"
APPEND = "pairs.append((a, b, 0) if label == 0 else (b, a, 1))"
SHARED = "config.num_hidden_groups * config.inner_group_num * layer"
EMB = "embeddings = (V + config.max_position_embeddings + config.type_vocab_size) * E + 2 * E"
RTD = "labels = (corrupted_ids != original_ids).long()"
BCE = "disc = F.binary_cross_entropy_with_logits(disc_logits[real], labels[real].float())"

MUTANTS = {
    "dynamic_masks": {
        # a generator reseeded every epoch: the same mask each time, i.e. static masking
        "reseeded every epoch": edit((GEN, ""), (LOOP, LOOP + "        g = torch.Generator().manual_seed(seed)\n")),
        # special tokens may be masked
        "special tokens ignored": edit(("input_ids, special_tokens_mask, vocab_size", "input_ids, None, vocab_size")),
        # the argument ignored: always 15%
        "mlm_probability ignored": edit(("mlm_probability=mlm_probability, generator=g", "mlm_probability=0.15, generator=g")),
        # torch's global generator: masks change with whatever ran before, not reproducible for a seed
        "global random state": edit(("generator=g))", "generator=None))")),
        # a generator per epoch seeded with seed + epoch: run 7's epoch 1 is run 8's epoch 0
        "per-epoch seed collides across runs": edit((GEN, ""), (LOOP, "    for epoch in range(epochs):\n"
                                                                  "        g = torch.Generator().manual_seed(seed + epoch)\n")),
        # a generator per epoch seeded with the epoch: every run draws the same masks
        "per-epoch seed is the epoch": edit((GEN, ""), (LOOP, "    for epoch in range(epochs):\n"
                                                              "        g = torch.Generator().manual_seed(epoch)\n")),
        # an off-by-one: one epoch short
        "one epoch short": edit(("range(epochs)", "range(epochs - 1)")),
    },
    "albert_count": {
        # the E x H projection forgotten: the factorisation's second factor
        "no E x H projection": edit(("    projection = E * H + H\n", "    projection = 0\n")),
        # the projection's bias forgotten
        "projection without bias": edit(("projection = E * H + H", "projection = E * H")),
        # no sharing: every layer counted, as in BERT
        "layers not shared": edit((SHARED, "config.num_hidden_layers * layer")),
        # BERT's embeddings: V x H instead of V x E
        "embeddings of width H": edit((EMB, "embeddings = (V + config.max_position_embeddings + config.type_vocab_size) * H + 2 * H")),
        # the pooler forgotten
        "no pooler": edit(("    pooler = H * H + H\n", "    pooler = 0\n")),
        # one layer per group, whatever inner_group_num
        "inner_group_num ignored": edit((SHARED, "config.num_hidden_groups * layer")),
        # the embeddings' LayerNorm forgotten
        "no embedding LayerNorm": edit((" * E + 2 * E", " * E")),
    },
    "sop_pairs": {
        # NSP's negatives: the second segment from another document
        "negatives from another document": edit((APPEND, "other = documents[(d + 1) % len(documents)]\n"
                                                 "        pairs.append((a, b, 0) if label == 0 or not other else (a, rng.choice(other), 1))")),
        # a coin flip per pair: balanced only on average
        "coin-flip labels": edit((BALANCED, "    labels = [rng.randint(0, 1) for _ in positions]\n")),
        # the label convention inverted
        "labels inverted": edit((APPEND, "pairs.append((a, b, 1) if label == 0 else (b, a, 0))")),
        # the order not swapped for a swapped label
        "swapped label, order kept": edit((APPEND, "pairs.append((a, b, 0) if label == 0 else (a, b, 1))")),
        # labels not shuffled: the first half in order, the second half swapped
        "labels not shuffled": edit(("    rng.shuffle(labels)\n", "")),
        # pairs in document order
        "pairs not shuffled": edit(("    rng.shuffle(positions)\n", "")),
        # labels alternate along the shuffled list: balanced, but each label follows from the one before
        "labels alternate along the list": edit((BALANCED, "    labels = [k % 2 for k in range(len(positions))]\n")),
        # the label from the pair's place in its document: every first pair in order
        "label from the place in the document": edit((APPEND, "pairs.append((a, b, 0) if i % 2 == 0 else (b, a, 1))")),
        # the label from the document: every pair of a document in order or every pair swapped
        "label from the document": edit((APPEND, "pairs.append((a, b, 0) if d % 2 == 0 else (b, a, 1))")),
        # an off-by-one: the last pair of every document dropped
        "last pair dropped": edit(("range(len(doc) - 1)", "range(len(doc) - 2)")),
    },
    "electra": {
        # every sampled position counted as replaced, even when the sample is the original
        "sampled original counted as replaced": edit((RTD, "labels = masked_positions.long()")),
        # padding labelled 0 (original) instead of ignored
        "padding labelled original": edit(("return labels.masked_fill(attention_mask == 0, IGNORE_INDEX)", "return labels")),
        # the discriminator's loss averaged over padding too
        "RTD loss over padding": edit((BCE, "disc = F.binary_cross_entropy_with_logits(disc_logits, labels.clamp(min=0).float())")),
        # the weight on the discriminator instead of the generator
        "weight on the discriminator": edit(("return generator_weight * generator_loss + disc",
                                             "return generator_loss + generator_weight * disc")),
        # labels inverted: 1 = original
        "labels inverted": edit((RTD, "labels = (corrupted_ids == original_ids).long()")),
        # a mean of per-sequence means: a token of a short sequence weighs more
        "mean of sequence means": edit((BCE, "disc = torch.stack([F.binary_cross_entropy_with_logits(disc_logits[i][real[i]], "
                                             "labels[i][real[i]].float()) for i in range(len(labels))]).mean()")),
        # summed, not averaged
        "summed BCE": edit((BCE, "disc = F.binary_cross_entropy_with_logits(disc_logits[real], labels[real].float(), reduction='sum')")),
    },
}

ALTERNATIVES = {
    "dynamic_masks": {
        "one generator per epoch, seeded from the seed and the epoch": '''def dynamic_masks(input_ids, special_tokens_mask, epochs, *, vocab_size, mask_token_id, mlm_probability=0.15, seed=0):
    pairs = []
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        pairs.append(mask_tokens(input_ids, special_tokens_mask, vocab_size=vocab_size, mask_token_id=mask_token_id,
                                 mlm_probability=mlm_probability, generator=g))
    return pairs
''',
    },
    "albert_count": {
        "helpers for a linear layer and a LayerNorm": '''def albert_parameter_count(config):
    def linear(i, o):
        return i * o + o

    def norm(d):
        return 2 * d

    c = config
    H = c.hidden_size
    emb = c.vocab_size * c.embedding_size + c.max_position_embeddings * c.embedding_size
    emb += c.type_vocab_size * c.embedding_size + norm(c.embedding_size)
    one_layer = 4 * linear(H, H) + norm(H) + linear(H, c.intermediate_size) + linear(c.intermediate_size, H) + norm(H)
    unique_layers = c.num_hidden_groups * c.inner_group_num
    return emb + linear(c.embedding_size, H) + unique_layers * one_layer + linear(H, H)
''',
    },
    "sop_pairs": {
        "swap a shuffled half, then shuffle the pairs": '''import random


def sop_pairs(documents, seed=0):
    rng = random.Random(seed)
    consecutive = [(doc[i], doc[i + 1]) for doc in documents for i in range(len(doc) - 1)]
    order = list(range(len(consecutive)))
    rng.shuffle(order)
    swapped = set(order[: len(order) // 2])
    out = [(b, a, 1) if j in swapped else (a, b, 0) for j, (a, b) in enumerate(consecutive)]
    rng.shuffle(out)
    return out
''',
    },
    "electra": {
        "a masked sum divided by the count": '''def rtd_labels(original_ids, corrupted_ids, masked_positions, attention_mask):
    replaced = masked_positions & (corrupted_ids != original_ids)
    labels = torch.where(replaced, 1, 0)
    return torch.where(attention_mask.bool(), labels, torch.full_like(labels, -100))


def electra_loss(generator_loss, disc_logits, labels, generator_weight=50.0):
    w = (labels != -100).float()
    per_token = F.binary_cross_entropy_with_logits(disc_logits, labels.clamp(min=0).float(), reduction="none")
    return generator_weight * generator_loss + (per_token * w).sum() / w.sum()
''',
    },
}
