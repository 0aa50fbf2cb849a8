"""Mutants of 07-domain-and-transfer (see bertlab/instructor/mutants/__init__.py)."""
from bertlab.instructor.mutants import edit

PPL_HEAD = """def mlm_perplexity(model, batches):
    '''exp(total -log p over every hidden token of batches / number of hidden tokens).'''
"""
SUM = 'total += F.cross_entropy(logits.float(), labels[chosen], reduction="sum").item()'
RESTORE = """    finally:
        model.train(was_training)"""

FREEZE_HEAD = """def freeze_layers(model, k):
    '''Freeze the embeddings and encoder layers 0..k-1 of the BERT in model; everything else trains.'''
"""
CHECK = "if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:"
FROZEN = "for module in [bert.embeddings, *bert.encoder.layer[:k]]:"

MUTANTS = {
    "mlm_perplexity": {
        # a mean of per-batch perplexities' log: every batch weighs the same
        "mean over batches": PPL_HEAD + (
            "    was_training = model.training\n"
            "    model.eval()\n"
            "    means = []\n"
            "    with torch.no_grad():\n"
            "        for batch in batches:\n"
            "            chosen = batch['mlm_labels'] != IGNORE_INDEX\n"
            "            if not chosen.any():\n"
            "                continue\n"
            "            logits, _ = model(batch['input_ids'], batch['attention_mask'], batch['token_type_ids'], masked_positions=chosen)\n"
            "            means.append(F.cross_entropy(logits, batch['mlm_labels'][chosen]).item())\n"
            "    model.train(was_training)\n"
            "    if not means:\n"
            "        raise ValueError('no position is hidden in batches')\n"
            "    return math.exp(sum(means) / len(means))\n"),
        # the model stays in train mode: dropout on
        "no eval()": edit(("    model.eval()\n", "")),
        # switched to eval mode and left there
        "mode not restored": edit((RESTORE, "    finally:\n        pass")),
        # switched back to train mode whatever mode it was in
        "always back to train": edit((RESTORE, "    finally:\n        model.train()")),
        # gradients recorded
        "no torch.no_grad()": edit(("with torch.no_grad():", "if True:")),
        # a 0-d tensor, not a float
        "returns a tensor": edit(("return math.exp(total / n)", "return torch.exp(torch.tensor(total / n))")),
        # nothing hidden: infinity instead of ValueError
        "inf when nothing is hidden": edit(('raise ValueError("no position is hidden in batches: the perplexity is undefined")',
                                            'return float("inf")')),
    },
    "freeze_layers": {
        # the embeddings keep training
        "embeddings not frozen": edit((FROZEN, "for module in bert.encoder.layer[:k]:")),
        # one layer too many
        "k + 1 layers": edit((FROZEN, "for module in [bert.embeddings, *bert.encoder.layer[:k + 1]]:")),
        # only ever freezes: a second call cannot unfreeze
        "no unfreezing": edit(("""    for p in model.parameters():
        p.requires_grad_(True)
""", "")),
        # the shipped checkpoint's 6 layers typed into the range check
        "range check for 6 layers": edit((CHECK, "if not 0 <= k <= 6:")),
        # the top k layers
        "top layers": edit((FROZEN, "for module in [bert.embeddings, *bert.encoder.layer[len(bert.encoder.layer) - k:]]:")),
        # names matched without the trailing dot: 'layer.1' also matches 'layer.10', 'layer.11'
        "by name, no trailing dot": FREEZE_HEAD + (
            "    bert = model if hasattr(model, 'embeddings') else model.encoder\n"
            "    n = len(bert.encoder.layer)\n"
            "    if not isinstance(k, int) or not 0 <= k <= n:\n"
            "        raise ValueError(f'k must be in 0..{n}')\n"
            "    prefixes = ['embeddings.'] + [f'encoder.layer.{i}' for i in range(k)] if k else []\n"
            "    for name, p in model.named_parameters():\n"
            "        p.requires_grad_(not any(x in name for x in prefixes))\n"
            "    return model\n"),
    },
}

ALTERNATIVES = {
    "mlm_perplexity": {
        "logits at every position, no_grad decorator, nll by gather": PPL_HEAD + (
            "    device = next(model.parameters()).device\n"
            "    mode = model.training\n"
            "    model.train(False)\n"
            "\n"
            "    @torch.no_grad()\n"
            "    def nll(batch):\n"
            "        labels = batch['mlm_labels'].to(device)\n"
            "        keep = labels != IGNORE_INDEX\n"
            "        if not keep.any():\n"
            "            return 0.0, 0\n"
            "        logits, _ = model(batch['input_ids'].to(device), batch['attention_mask'].to(device),\n"
            "                          batch['token_type_ids'].to(device), masked_positions=keep)\n"
            "        log_p = torch.log_softmax(logits.double(), dim=-1)\n"
            "        return -log_p.gather(1, labels[keep][:, None]).sum().item(), int(keep.sum())\n"
            "\n"
            "    sums = [nll(b) for b in batches]\n"
            "    model.train(mode)\n"
            "    n = sum(c for _, c in sums)\n"
            "    if not n:\n"
            "        raise ValueError('nothing hidden')\n"
            "    return float(math.exp(sum(s for s, _ in sums) / n))\n"),
    },
    "freeze_layers": {
        "by parameter names": FREEZE_HEAD + (
            "    import re\n"
            "    bert = getattr(model, 'encoder', None) if not hasattr(model, 'embeddings') else model\n"
            "    n = len(bert.encoder.layer)\n"
            "    if type(k) is not int or k < 0 or k > n:\n"
            "        raise ValueError(f'k must be in 0..{n}, got {k!r}')\n"
            "    prefix = '' if bert is model else 'encoder.'\n"
            "    for name, p in model.named_parameters():\n"
            "        m = re.match(re.escape(prefix) + r'encoder\\.layer\\.(\\d+)\\.', name)\n"
            "        frozen = k > 0 and (name.startswith(prefix + 'embeddings.') or (m is not None and int(m.group(1)) < k))\n"
            "        p.requires_grad = not frozen\n"
            "    return model\n"),
    },
}
