"""Mutants of 12-debugging (see bertlab/instructor/mutants/__init__.py)."""
from bertlab.instructor.mutants import edit

INIT_EVAL = """    was_training = model.training
    model.eval()
"""
SHARE = "share = counts.max().item() / counts.sum().item()"
GRAD_BAD = "(p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any())"
ZERO_FIRST = """    model.zero_grad(set_to_none=True)
    model.train()
"""

ZERO = "            optimizer.zero_grad()\n"
GROUPS = "train.param_groups(model, 0.01, head_lr=head_lr), lr=lr)"
CLIP = "            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
CORRECT = '            correct += (logits.argmax(-1) == batch["labels"]).sum().item()\n'
ACCURACY = '    history["test_accuracy"] = correct / len(test)\n'

MASK = 'logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])  # (B, C)'
SCHED = "    scheduler = train.linear_warmup_scheduler(optimizer, round(warmup_ratio * total), total)\n"
EVAL_MODE = "    model.eval()\n    test = "

ACC_LOSS = 'loss = F.cross_entropy(logits, b["labels"]) * len(b["labels"]) / N'
ACC_CLIP = """    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
"""
ACC_TAIL = """    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
"""

MUTANTS = {
    "preflight": {
        # the loss with dropout on: another number than the model's at initialisation
        "init loss in train mode": edit((INIT_EVAL, "    was_training = model.training\n")),
        # log base 2: ln C is the entropy of a uniform guess in nats, as cross_entropy computes it
        "log2 of C": edit(("expected = np.log(num_labels)", "expected = np.log2(num_labels)")),
        # a share exactly at max_share counts as collapsed
        "strict max_share": edit(("share <= max_share, share", "share < max_share, share")),
        # the number of classes predicted instead of the largest share
        "share of classes predicted": edit((SHARE, "share = 1 - (counts > 0).float().mean().item()")),
        # frozen parameters have no gradient by design, and are counted
        "counts frozen parameters": edit(("if p.requires_grad and not name", "if not name")),
        # a NaN gradient passes: only missing and zero gradients are looked for
        "no NaN check": edit((GRAD_BAD, "(p.grad is None or not p.grad.any())")),
        # old gradients are not cleared, so a cut-off parameter still shows a gradient
        "stale gradients": edit((ZERO_FIRST, "    model.train()\n")),
        # an absolute band: too strict for many classes, too loose for two
        "absolute tolerance": edit(("ok = abs(loss - expected) <= rtol * expected", "ok = abs(loss - expected) <= rtol")),
        # the backward pass in eval mode: dropout off, so a bug that only training sees does not show
        "backward in eval mode": edit((ZERO_FIRST, "    model.zero_grad(set_to_none=True)\n    model.eval()\n")),
        # the checkpoint's unused pooler is flagged on a working model
        "pooler not skipped": edit(('p.requires_grad and not name.startswith("encoder.pooler.")', "p.requires_grad")),
    },
    "finetune": {
        # the half-fix of a climbing gradient norm: clip harder, never zero
        "clips harder instead of zeroing": edit((ZERO, ""), ("clip_grad_norm_(model.parameters(), 1.0)",
                                                            "clip_grad_norm_(model.parameters(), 0.1)")),
        # the mask still missing (lowering the learning rate does not make up for it)
        "no attention mask": edit((MASK, 'logits = model(batch["input_ids"])  # (B, C)')),
        # the lr argument used, but no warm-up
        "no warm-up": edit((SCHED, "    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)\n")),
        # dropout left on while scoring the test reports
        "no model.eval()": edit((EVAL_MODE, "    test = ")),
        # the tokenizer built from the vocabulary file: a 5-token vocabulary in transformers 5
        "tokenizer from the vocab file": edit(("    data = train.encode(tokenizer,", """    from transformers import BertTokenizerFast
    tokenizer = BertTokenizerFast(vocab_file=os.path.join(model_name_or_dir(), "vocab.txt"))
    data = train.encode(tokenizer,""")),
        # texts and labels each sorted on their own: they no longer belong together
        "texts and labels sorted apart": edit(("    data = train.encode(tokenizer, train_texts, train_labels,",
                                               "    data = train.encode(tokenizer, sorted(train_texts, key=len), sorted(train_labels),")),
        # the lr the broken function hard-coded
        "learning rate hard-coded": edit((GROUPS, "train.param_groups(model, 0.01, head_lr=head_lr), lr=1e-3)")),
        # one learning rate for the encoder and the new head
        "head_lr ignored": edit((GROUPS, "train.param_groups(model, 0.01), lr=lr)")),
        # AdamW's weight decay on every parameter, biases and LayerNorm weights included
        "decays biases and LayerNorm": edit((GROUPS, """[
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("classifier.")]},
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("classifier.")], "lr": head_lr},
    ], lr=lr, weight_decay=0.01)""")),
        # the warm-up length from one epoch's steps, not the whole run's
        "warm-up over one epoch": edit(("round(warmup_ratio * total), total)", "round(warmup_ratio * len(loader)), total)")),
        # the warm-up length counted in reports, not in steps
        "warm-up over the reports": edit(("round(warmup_ratio * total), total)", "min(total, round(warmup_ratio * len(train_texts))), total)")),
        # the gradient norm read after clipping: never above the threshold
        "norm after clipping": edit((CLIP, CLIP.replace("norm = ", "") + "            norm = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None))\n")),
        # the mean of per-batch accuracies: a short last batch counts as much as a full one
        "mean of batch accuracies": edit(("    correct = 0\n", "    correct = []\n"),
                                         (CORRECT, '            correct.append((logits.argmax(-1) == batch["labels"]).sum().item() / len(batch["labels"]))\n'),
                                         (ACCURACY, '    history["test_accuracy"] = float(np.mean(correct))\n')),
        # the learning rate recorded after the scheduler stepped: one step ahead
        "lrs one step ahead": edit(("            history[\"lrs\"].append(scheduler.get_last_lr()[0])\n", ""),
                                   ("            scheduler.step()\n", "            scheduler.step()\n            history[\"lrs\"].append(scheduler.get_last_lr()[0])\n")),
    },
    "accumulation_step": {
        # a plain mean of the micro-batch losses: wrong when the last micro-batch is shorter
        "plain mean": edit((ACC_LOSS, 'loss = F.cross_entropy(logits, b["labels"]) / len(batches)')),
        # the micro-batch losses summed, not averaged: a step len(batches) times too large before clipping
        "no scaling": edit((ACC_LOSS, 'loss = F.cross_entropy(logits, b["labels"])'), ("total += loss.item()", "total += loss.item() * len(b[\"labels\"]) / N")),
        # an optimizer step per micro-batch: no accumulation at all
        "step per micro-batch": edit((ACC_CLIP + ACC_TAIL, ""), ("        total += loss.item()\n", "        total += loss.item()\n" + "\n".join(
            "    " + line if line else line for line in (ACC_CLIP + ACC_TAIL).splitlines()) + "\n")),
        # each micro-batch's gradient clipped on its own
        "clip per micro-batch": edit((ACC_CLIP, ""), ("        loss.backward()\n", "        loss.backward()\n        if max_grad_norm is not None:\n"
                                                      "            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)\n")),
        # the last micro-batch's loss returned
        "returns the last loss": edit(("    return total", "    return loss.item() * N / len(b[\"labels\"])")),
        # gradients never zeroed: the next step adds this one's
        "no zero_grad": edit(("    optimizer.zero_grad()\n", "")),
    },
}

ALTERNATIVES = {
    "preflight": {
        "library-free arithmetic: log-softmax, Counter, a loop over parameters": '''def init_loss_check(model, batch, num_labels, rtol=0.25):
    mode = model.training
    with torch.inference_mode():
        model.train(False)
        logp = torch.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]), dim=-1)
        loss = float(-logp[torch.arange(len(batch["labels"])), batch["labels"]].mean())
    model.train(mode)
    target = float(torch.log(torch.tensor(float(num_labels))))
    return debugging.Verdict("init loss", abs(loss - target) <= rtol * target, loss, f"{loss:.3f} vs {target:.3f}")


def collapse_check(predictions, num_labels, max_share=0.8):
    from collections import Counter

    top = Counter(predictions.tolist()).most_common(1)[0][1]
    share = top / len(predictions)
    return debugging.Verdict("collapse", bool(share <= max_share), float(share), f"{share:.2f}")


def gradient_check(model, batch):
    for p in model.parameters():
        p.grad = None
    model.train()
    out = model(batch["input_ids"], batch["attention_mask"])
    F.nll_loss(F.log_softmax(out, -1), batch["labels"]).backward()
    bad = 0
    for name, p in model.named_parameters():
        if not p.requires_grad or name.startswith("encoder.pooler."):
            continue
        g = p.grad
        if g is None or torch.isnan(g).any() or torch.isinf(g).any() or g.abs().sum() == 0:
            bad += 1
    for p in model.parameters():
        p.grad = None
    return debugging.Verdict("gradients", bad == 0, float(bad), f"{bad} tensors without a usable gradient")
''',
    },
    "finetune": {
        "zero_grad first, library steps and evaluation": edit(
            ("            model.train()\n", "            optimizer.zero_grad(set_to_none=True)\n            model.train(True)\n"),
            ("            optimizer.zero_grad()\n", ""),
            ("    model.eval()\n    test = train.encode(tokenizer, test_texts, test_labels, max_length=max_length)\n", "    test = train.encode(tokenizer, test_texts, test_labels, max_length=max_length)\n"),
            ("""    correct = 0
    with torch.no_grad():
        for batch in train.make_loader(test, 64):
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
            correct += (logits.argmax(-1) == batch["labels"]).sum().item()
    history["test_accuracy"] = correct / len(test)
""", """    history["test_accuracy"] = float(train.evaluate(model, test)["accuracy"])
"""),
        ),
    },
    "accumulation_step": {
        "summed losses divided by N": '''def accumulation_step(model, batches, optimizer, scheduler, max_grad_norm=1.0):
    model.train()
    N = sum(b["input_ids"].shape[0] for b in batches)
    total = 0.0
    for b in batches:
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        loss = F.cross_entropy(out, b["labels"], reduction="sum") / N
        loss.backward()
        total += float(loss.detach())
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total
''',
    },
}


# The diagnoses: (the solution's answer, {mutant name: a wrong answer}, another right answer).
DIAGNOSES = {
    "diagnose_collapse": ('{"learning rate", "no warm-up"}', {
        "the warm-up forgotten": '{"learning rate"}',
        "class imbalance (innocent)": '{"class imbalance"}',
        "clipping added": '{"learning rate", "no warm-up", "clipping"}',
        "the head's init": '{"head init"}',
    }, '["learning rate", "no warm-up", "tokenizer"]'),
    "diagnose_flat_loss": ('{"tokenizer"}', {
        "the learning rate only": '{"learning rate"}',
        "too few steps (innocent)": '{"too few steps"}',
        "max_length added": '{"tokenizer", "max_length"}',
        "a name, not a set": '"tokenizer"',
    }, '{"tokenizer", "labels"}'),
    "diagnose_pairs": ('{"labels"}', {
        "class imbalance (innocent)": '{"class imbalance"}',
        "the tokenizer only": '{"tokenizer"}',
        "max_length added": '{"labels", "max_length"}',
        "the leak": '{"test set leaks"}',
    }, '("labels",)'),
    "diagnose_gradients": ('{"gradients never cleared"}', {
        "the learning rate only": '{"learning rate"}',
        "clipping (innocent)": '{"clipping"}',
        "clipping added": '{"gradients never cleared", "clipping"}',
        "no warm-up": '{"no warm-up"}',
    }, '{"gradients never cleared", "learning rate"}'),
    "diagnose_padding": ('{"attention mask"}', {
        "max_length (innocent)": '{"max_length"}',
        "dropout added": '{"attention mask", "dropout at evaluation"}',
        "dropout instead": '{"dropout at evaluation"}',
        "the tokenizer": '{"tokenizer"}',
    }, '["attention mask"]'),
    "diagnose_evaluation": ('{"dropout at evaluation"}', {
        "the mask instead": '{"attention mask"}',
        "the leak added": '{"dropout at evaluation", "test set leaks"}',
        "weight decay (innocent)": '{"weight decay"}',
        "a name, not a set": '"dropout at evaluation"',
    }, 'frozenset({"dropout at evaluation"})'),
    "diagnose_test_set": ('{"test set leaks"}', {
        "max_length (innocent)": '{"max_length"}',
        "dropout added": '{"test set leaks", "dropout at evaluation"}',
        "the labels": '{"labels"}',
        "class imbalance (innocent)": '{"class imbalance"}',
    }, '["test set leaks"]'),
}
for _gid, (_answer, _wrong, _right) in DIAGNOSES.items():
    MUTANTS[_gid] = {name: edit((f"    return {_answer}", f"    return {w}")) for name, w in _wrong.items()}
    ALTERNATIVES[_gid] = {"another form or a cause the symptom allows": edit((f"    return {_answer}", f"    return {_right}"))}
