"""Mutants of 08-distillation (see bertlab/instructor/mutants/__init__.py)."""
from bertlab.instructor.mutants import edit

KD_HEAD = """def kd_loss(student_logits, teacher_logits, labels=None, temperature=2.0, alpha=0.5):
    '''alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y), averaged over the batch.'''
"""
SOFT = 'soft = F.kl_div(log_q, p, reduction="batchmean") * T * T'
TEACHER = "p = F.softmax(teacher_logits.detach() / T, dim=-1)   # (B, C) teacher's soft targets"

INIT_HEAD = """import copy


def init_student(teacher, layers):
    '''A SequenceClassifier with the teacher's embeddings, pooler, head and the encoder layers `layers` (copies).'''
"""
CFG = """    cfg = copy.deepcopy(teacher.encoder.config)
    cfg.num_hidden_layers = len(layers)
"""

MUTANTS = {
    "kd_loss": {
        # no T^2
        "no T squared": edit((SOFT, 'soft = F.kl_div(log_q, p, reduction="batchmean")')),
        # T instead of T^2
        "times T": edit((SOFT, 'soft = F.kl_div(log_q, p, reduction="batchmean") * T')),
        # the teacher's gradient kept
        "teacher not detached": edit((TEACHER, "p = F.softmax(teacher_logits / T, dim=-1)")),
        # the mean over batch and classes
        "reduction mean": edit((SOFT, 'soft = F.kl_div(log_q, p, reduction="mean") * T * T')),
        # the cross-entropy at temperature T too
        "CE at temperature T": edit(("hard = F.cross_entropy(student_logits, labels)",
                                     "hard = F.cross_entropy(student_logits / T, labels)")),
        # alpha on the wrong term
        "alpha swapped": edit(("return alpha * soft + (1 - alpha) * hard", "return (1 - alpha) * soft + alpha * hard"),
                              ("    if alpha == 1:\n        return soft\n", "")),
        # KL summed over the batch
        "sum over the batch": edit((SOFT, 'soft = F.kl_div(log_q, p, reduction="sum") * T * T')),
        # the arguments of F.kl_div the wrong way round
        "KL arguments swapped": edit((SOFT, 'soft = F.kl_div(F.log_softmax(teacher_logits.detach() / T, dim=-1), log_q.exp(), reduction="batchmean") * T * T')),
    },
    "init_student": {
        # the teacher's config changed (no copy): the teacher now says it has len(layers) layers
        "teacher config changed": edit((CFG, "    cfg = teacher.encoder.config\n    cfg.num_hidden_layers = len(layers)\n")),
        # student layer k from teacher layer k: the first len(layers) layers
        "first layers": edit(("if i not in layers:", "if i >= len(layers):"), ("list(layers).index(i)", "i")),
        # a fresh classification head
        "fresh head": edit(("    student.classifier.load_state_dict(teacher.classifier.state_dict())\n", "")),
        # the student's layers in the teacher's order, whatever the order of `layers`
        "layers in the teacher's order": edit(("list(layers).index(i)", "sorted(layers).index(i)")),
        # the teacher's modules reused: student and teacher share weights
        "shared modules": INIT_HEAD + CFG + (
            "    encoder = type(teacher.encoder)(cfg)\n"
            "    encoder.embeddings = teacher.encoder.embeddings\n"
            "    encoder.pooler = teacher.encoder.pooler\n"
            "    encoder.encoder.layer = torch.nn.ModuleList([teacher.encoder.encoder.layer[i] for i in layers])\n"
            "    student = train.SequenceClassifier(encoder, teacher.num_labels)\n"
            "    student.classifier = teacher.classifier\n"
            "    return student\n"),
        # a pruned deep copy whose config still says 6 layers
        "config not updated": INIT_HEAD + (
            "    student = copy.deepcopy(teacher)\n"
            "    student.encoder.encoder.layer = torch.nn.ModuleList([student.encoder.encoder.layer[i] for i in layers])\n"
            "    return student\n"),
    },
}

ALTERNATIVES = {
    "kd_loss": {
        "KL written out, cross-entropy with soft targets": KD_HEAD + (
            "    T = temperature\n"
            "    p = (teacher_logits / T).softmax(-1).detach()\n"
            "    log_q = (student_logits / T).log_softmax(-1)\n"
            "    kl = (p * (p.clamp_min(1e-30).log() - log_q)).sum(-1).mean()\n"
            "    loss = alpha * T ** 2 * kl\n"
            "    if alpha < 1:\n"
            "        loss = loss + (1 - alpha) * F.cross_entropy(student_logits, labels)\n"
            "    return loss\n"),
    },
    "init_student": {
        "pruned deep copy": INIT_HEAD + (
            "    student = copy.deepcopy(teacher)\n"
            "    student.encoder.encoder.layer = torch.nn.ModuleList([copy.deepcopy(teacher.encoder.encoder.layer[i]) for i in layers])\n"
            "    student.encoder.config.num_hidden_layers = len(layers)\n"
            "    return student\n"),
    },
}
