"""Mutants of 06-multitask (see bertlab/instructor/mutants/__init__.py)."""
from bertlab.instructor.mutants import edit

FORWARD = """        h = self.dropout(h)  # (B, H)
        return {t: self.heads[t](h) for t in self.tasks}  # {task: (B, C_t)}"""
INIT = """        for head in self.heads.values():
            nn.init.normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)"""
CE = 'L_t = F.cross_entropy(z, y, ignore_index=IGNORE_INDEX, reduction="sum") / max(n, 1)  # 0 when n_t = 0'

LOSS_HEAD = """def multitask_loss(logits, labels, weights=None):
    # (sum_t w_t L_t, {t: L_t}), each L_t the cross-entropy over the reports that have a label for t.
"""

MUTANTS = {
    "multitask_heads": {
        # one dropout mask per head instead of one on the shared h
        "dropout per head": edit((FORWARD, "        return {t: self.heads[t](self.dropout(h)) for t in self.tasks}")),
        # dropout on the logits
        "dropout after the heads": edit((FORWARD, "        return {t: self.dropout(self.heads[t](h)) for t in self.tasks}")),
        # BERT's usual rate typed in
        "dropout 0.1 hard-coded": edit(("self.dropout = nn.Dropout(dropout)", "self.dropout = nn.Dropout(0.1)")),
        # PyTorch's default initialisation kept
        "default init": edit((INIT, "")),
        # tasks sorted by name
        "tasks sorted": edit(("self.tasks = tuple(num_labels)", "self.tasks = tuple(sorted(num_labels))")),
        # no dropout
        "no dropout": edit(("        h = self.dropout(h)  # (B, H)\n", "")),
        # the checkpoint's hidden size typed in
        "hidden 384 hard-coded": edit(("nn.Linear(hidden_size, c)", "nn.Linear(384, c)")),
    },
    "multitask_loss": {
        # divided by the batch size B
        "mean over the batch": edit((CE, 'L_t = F.cross_entropy(z, y, ignore_index=IGNORE_INDEX, reduction="sum") / len(y)')),
        # cross_entropy's mean: NaN when a task has no label
        "NaN for a task without labels": edit((CE, "L_t = F.cross_entropy(z, y, ignore_index=IGNORE_INDEX)")),
        # a task left out of weights gets 0
        "missing weight 0": edit(("weights = weights or {}", "weights = weights or {t: 1.0 for t in logits}"),
                                 ("weights.get(t, 1.0)", "weights.get(t, 0.0)")),
        # a missing label counted as class 0
        "missing label as class 0": edit((CE, "L_t = F.cross_entropy(z, y.clamp(min=0))")),
        # per-task losses as Python floats (for logging)
        "per_task floats": edit(("per_task[t] = L_t", "per_task[t] = L_t.item()")),
        # the weight folded into the per-task loss too
        "weighted per_task": edit(("per_task[t] = L_t\n        total = total + weights.get(t, 1.0) * L_t",
                                   "per_task[t] = weights.get(t, 1.0) * L_t\n        total = total + per_task[t]")),
    },
}

ALTERNATIVES = {
    "multitask_heads": {
        "functional dropout, init in a loop over named parameters": edit(
            (INIT, """        for name, p in self.heads.named_parameters():
            if name.endswith("weight"):
                nn.init.normal_(p, mean=0.0, std=0.02)
            else:
                nn.init.constant_(p, 0.0)"""),
            (FORWARD, """        h = F.dropout(h, p=self.dropout.p, training=self.training)
        return dict((t, self.heads[t](h)) for t in self.tasks)""")),
    },
    "multitask_loss": {
        # a task without labels gets a constant 0 (no graph): no gradient reaches its head
        "mask first, constant 0 when empty": LOSS_HEAD + (
            "    weights = {} if weights is None else weights\n"
            "    per_task = {}\n"
            "    for t, z in logits.items():\n"
            "        keep = labels[t] != IGNORE_INDEX\n"
            "        if keep.any():\n"
            "            per_task[t] = F.cross_entropy(z[keep], labels[t][keep])\n"
            "        else:\n"
            "            per_task[t] = torch.zeros((), device=z.device)\n"
            "    total = sum(weights.get(t, 1.0) * per_task[t] for t in per_task)\n"
            "    return total, per_task\n"),
    },
}
