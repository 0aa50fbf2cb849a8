"""Mutants of 00-welcome (see bertlab/instructor/mutants/__init__.py)."""
from bertlab.instructor.mutants import edit

HEAD = '''def mean_pool(last_hidden_state, attention_mask):
    """Average of the token vectors of each sequence, padding excluded: (B, T, H), (B, T) -> (B, H)."""
'''

MUTANTS = {
    "mean_pool": {
        # the mask is ignored: padding vectors count in the mean
        "plain mean over T": HEAD + "    return last_hidden_state.mean(dim=1)\n",
        # padding zeroed, but divided by the padded length T
        "divides by T": edit(("counts = mask.sum(dim=1).clamp(min=1e-9)", "counts = mask.shape[1]")),
        # zeroes the padding of the caller's tensor in place (idempotent: a second call cannot tell)
        "masks the input in place": HEAD + (
            "    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)\n"
            "    last_hidden_state *= mask\n"
            "    return last_hidden_state.sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)\n"),
        # BERT's extended-mask idiom on the attention mask: fine on 0/1 integers, raises on a bool mask
        "1 - mask": HEAD + (
            "    padding = (1 - attention_mask).unsqueeze(-1).bool()\n"
            "    summed = last_hidden_state.masked_fill(padding, 0.0).sum(dim=1)\n"
            "    return summed / (~padding).sum(dim=1)\n"),
        # one count for the whole batch instead of one per sequence
        "counts the whole batch": edit(("counts = mask.sum(dim=1).clamp(min=1e-9)",
                                        "counts = mask.sum() / mask.shape[0]")),
        # the counts lose their last axis: (B, H) / (B,) broadcasts over H, right only when B == H
        "counts without keepdim": edit(("counts = mask.sum(dim=1).clamp(min=1e-9)  # (B, 1)",
                                        "counts = attention_mask.sum(dim=1)  # (B,)")),
        # the [CLS] vector (notebook 04's pooling) instead of the mean
        "[CLS] vector": HEAD + "    return last_hidden_state[:, 0]\n",
    },
}

ALTERNATIVES = {
    "mean_pool": {
        "einsum": HEAD + (
            "    m = attention_mask.to(last_hidden_state.dtype)\n"
            "    return torch.einsum('bth,bt->bh', last_hidden_state, m) / m.sum(dim=1, keepdim=True)\n"),
        "loop over the batch": HEAD + (
            "    return torch.stack([h[m.bool()].mean(dim=0) for h, m in zip(last_hidden_state, attention_mask)])\n"),
    },
}
