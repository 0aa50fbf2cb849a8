"""Mutants of 04-finetuning (see bertlab/instructor/mutants/__init__.py)."""
from bertlab.instructor.mutants import edit

CLIP = """    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
"""
STEPS = """    optimizer.step()
    scheduler.step()
"""

WARMUP_HEAD = '''def warmup_linear(step, warmup_steps, total_steps):
    """Learning-rate multiplier at ``step``: linear 0 -> 1 over ``warmup_steps``, then linear to 0 at ``total_steps``."""
'''
DECAY = "return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))"

ACC = "return float((t == p).mean())"
F1_CLASSES = "for c in np.union1d(t, p):"

MUTANTS = {
    "train_step": {
        # dropout left as the caller set it
        "no model.train()": edit(("    model.train()\n", "")),
        # gradients pile up from step to step
        "no zero_grad": edit(("    optimizer.zero_grad()\n", "")),
        # clipped after the update: too late
        "clips after the step": edit((CLIP + STEPS, STEPS + CLIP)),
        # the scheduler first: the first step already runs at the next rate
        "scheduler before optimizer": edit((STEPS, "    scheduler.step()\n    optimizer.step()\n")),
        # the loss tensor, not a float
        "returns the tensor": edit(("return loss.item()", "return loss")),
        # the padding mask is not passed
        "no attention_mask": edit(('logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])',
                                   'logits = model(input_ids=batch["input_ids"])')),
        # gradients zeroed at the start of the step instead of after it
        "zero_grad first": edit(("    optimizer.zero_grad()\n", ""), ("    model.train()\n", "    model.train()\n    optimizer.zero_grad()\n")),
    },
    "warmup_linear": {
        # one step ahead during warm-up
        "warm-up off by one": edit(("return step / max(1, warmup_steps)", "return (step + 1) / max(1, warmup_steps)")),
        # negative after total_steps
        "no clamp at 0": edit((DECAY, "return (total_steps - step) / max(1, total_steps - warmup_steps)")),
        # integer division
        "integer division": edit(("return step / max(1, warmup_steps)", "return step // max(1, warmup_steps)")),
        # the decay spread over all the steps, not over those after the warm-up
        "decay over total_steps": edit((DECAY, "return max(0.0, (total_steps - step) / max(1, total_steps))")),
        # no guard: ZeroDivisionError when warmup_steps == total_steps
        "decay unguarded": edit((DECAY, "return max(0.0, (total_steps - step) / (total_steps - warmup_steps))")),
        # max(0, ...) returns the int 0 once the schedule is over
        "int 0 after the end": edit((DECAY, "return max(0, (total_steps - step) / max(1, total_steps - warmup_steps))")),
    },
    "metrics": {
        # the classes of y_true only: a class that is only predicted does not count
        "classes of y_true only": edit((F1_CLASSES, "for c in np.unique(t):")),
        # the classes of y_pred only: a class that is never predicted does not count
        "classes of y_pred only": edit((F1_CLASSES, "for c in np.unique(p):")),
        # micro-F1 (equals accuracy) instead of macro-F1
        "micro-F1": edit(("return float(np.mean(scores))",
                          "return float(np.mean(t == p))")),
        # accuracy as a NumPy float through np.mean on a list comparison: y_true == y_pred on lists is one bool
        "lists compared as a whole": edit(("t, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()\n    " + ACC,
                                           "return float(np.mean(y_true == y_pred))")),
        # plain Python over a set of the labels: fine on lists, but a set of tensor elements holds
        # every element once (tensors hash by identity), so each element counts as its own class
        "set of labels": edit(("""    t, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    scores = []
    for c in np.union1d(t, p):
        tp = np.sum((p == c) & (t == c))
        fp = np.sum((p == c) & (t != c))
        fn = np.sum((p != c) & (t == c))""", """    scores = []
    for c in set(y_true) | set(y_pred):
        tp = sum(1 for a, b in zip(y_true, y_pred) if a == c and b == c)
        fp = sum(1 for a, b in zip(y_true, y_pred) if a != c and b == c)
        fn = sum(1 for a, b in zip(y_true, y_pred) if a == c and b != c)""")),
    },
}

ALTERNATIVES = {
    "train_step": {
        "zero_grad(set_to_none) first and last, clip via a list": edit(
            ("    model.train()\n", "    optimizer.zero_grad(set_to_none=True)\n    model.train(True)\n"),
            ("loss = F.cross_entropy(logits, batch[\"labels\"])", "loss = F.nll_loss(F.log_softmax(logits, dim=-1), batch[\"labels\"])"),
            (CLIP, """    if max_grad_norm is not None:
        params = [p for p in model.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
"""),
            ("return loss.item()", "return float(loss.detach())")),
    },
    "warmup_linear": {
        "one expression, as transformers writes it": WARMUP_HEAD + (
            "    if step < warmup_steps:\n"
            "        return float(step) / float(max(1, warmup_steps))\n"
            "    return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))\n"),
    },
    "metrics": {
        "confusion matrix": edit(
            ("""    scores = []
    for c in np.union1d(t, p):
        tp = np.sum((p == c) & (t == c))
        fp = np.sum((p == c) & (t != c))
        fn = np.sum((p != c) & (t == c))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))""",
             """    classes = np.union1d(t, p)
    cm = np.array([[np.sum((t == a) & (p == b)) for b in classes] for a in classes])
    tp = np.diag(cm)
    f1 = 2 * tp / (cm.sum(axis=0) + cm.sum(axis=1))
    return float(f1.mean())"""),
            (ACC, "return sum(int(a == b) for a, b in zip(t, p)) / len(t)")),
    },
}
