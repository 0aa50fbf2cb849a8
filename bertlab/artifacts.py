"""The course's shared models: what one notebook trains and later notebooks reuse, each cached.

Every builder here is keyed by its whole configuration (and a fingerprint of the data) in
``bertlab.cache``: the first notebook that needs a model trains it, later ones load it,
and changing a setting trains a new one. Grading mode passes the ``QUICK`` (and
``DISTILL_QUICK``) overrides.
This module and :mod:`bertlab.artifacts_pretraining` (the models that pre-train the shipped
checkpoint further) join the course's data (``bertlab.data``) to the library; the library
modules themselves read no reports.

==================================================  ====================  ===============================================
artifact                                            built in notebook     reused in
==================================================  ====================  ===============================================
``artifacts_pretraining.checkpoint_with_mlm_head``  03 pre-training       07 (where continued pre-training starts)
``artifacts_pretraining.continue_pretraining``      07 domain adaptation  07 (the domain-adapted encoder)
:func:`finetuned_classifier`                        04 fine-tuning        05, 07, 08, 09
:func:`cached_teacher_logits`                       08 distillation       08 (the alpha/T sweep), every later student
:func:`distilled_student`                           08 distillation       09; ``bertlab export`` (its own settings)
:func:`multitask_classifier`                        06 (one small run)    tests; the encoder fine-tuned on all four tasks
:func:`exported_model`                              ``bertlab export``    ``bertlab predict`` (its default model)
==================================================  ====================  ===============================================

A student may also learn from reports nobody labelled (:func:`transfer_reports`, the
"transfer set" of Hinton et al. 2015): ``benchmarks/deploy.py`` distils its student so.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from bertlab import args, cache, deploy, distill, env, multitask, pretrained, train, vocab
from bertlab.data import LABELS, domain_corpus, make_splits


def fingerprint(*splits) -> str:
    """A short hash of the texts and labels of the given lists of reports (part of a cache key)."""
    h = hashlib.sha256()
    for reports in splits:
        for r in reports:
            h.update(r.text.encode())
            h.update(json.dumps([r.failure_type, r.severity, r.root_cause, r.action]).encode())
    return h.hexdigest()[:16]


def model_key(model_name: str | None) -> str:
    """The checkpoint's name as it goes into a cache key."""
    target = pretrained.model_name_or_dir(model_name)
    return pretrained.DEFAULT_NAME if pretrained.is_default(target) else str(model_name or target)


def train_config(cfg: dict, **overrides) -> train.TrainConfig:
    """The :class:`bertlab.train.TrainConfig` fields of a builder's settings ``cfg``, with ``overrides``."""
    fields = set(train.TrainConfig.__dataclass_fields__)
    return train.TrainConfig(**{**{k: v for k, v in cfg.items() if k in fields}, **overrides})


# ---------------------------------------------------------------- 04: the fine-tuned classifier

#: Settings of the course's shared fine-tuned classifier (notebook 04); later notebooks reuse it.
FINETUNE_DEFAULTS = {"n_train": 1000, "n_val": 300, "n_test": 500, "data_seed": 0, "epochs": 2, "lr": 2e-4,
                     "head_lr": 1e-3, "batch_size": 16, "max_length": 128, "warmup_ratio": 0.1, "weight_decay": 0.01,
                     "patience": 2, "seed": 0}
#: Overrides that train in seconds: for grading mode (NBGRADER_EXECUTION) and smoke tests.
QUICK = {"n_train": 64, "n_val": 32, "n_test": 64, "epochs": 1}


def finetuned_classifier(fab: str = "A", task: str = "failure_type", *, model_name: str | None = None,
                         progress: bool = True, **overrides):
    """The encoder fine-tuned on ``fab``'s ``task`` labels: ``(model, tokenizer, info)``.

    Loaded from the model cache when a model with the same configuration (including the
    data, by a fingerprint of its texts and labels) was trained before; trained with
    :func:`bertlab.train.fit` and cached otherwise. ``overrides`` change
    :data:`FINETUNE_DEFAULTS` (e.g. ``**QUICK`` in grading mode). ``info`` holds the
    configuration, the label names, the training history and time, ``splits`` (the
    ``make_splits`` arguments, so the caller gets the very same train/validation/test
    reports) and ``cached`` (True when loaded). The model is in eval mode on
    ``bertlab.env.get_device()``.
    """
    unknown = sorted(set(overrides) - set(FINETUNE_DEFAULTS))
    if unknown:
        raise TypeError(f"finetuned_classifier got unknown settings {unknown}; known: {sorted(FINETUNE_DEFAULTS)}")
    if task not in LABELS:
        raise ValueError(f"task must be one of {sorted(LABELS)}, got {task!r}")
    cfg = {**FINETUNE_DEFAULTS, **overrides}
    splits_args = {"n_train": cfg["n_train"], "n_val": cfg["n_val"], "n_test": cfg["n_test"], "seed": cfg["data_seed"]}
    splits = make_splits(fab, **splits_args)
    label_names = list(LABELS[task])
    key_config = {"fab": fab, "task": task, "model": model_key(model_name), **cfg,
                  "data": fingerprint(splits.train, splits.validation)}
    tokenizer = pretrained.load_tokenizer(model_name)

    def build():
        torch.manual_seed(cfg["seed"])  # the head's initial weights
        model = train.SequenceClassifier(pretrained.load_encoder(model_name), len(label_names))
        ids = {n: i for i, n in enumerate(label_names)}
        data = {split: train.encode(tokenizer, [r.text for r in reports], [ids[getattr(r, task)] for r in reports],
                                    max_length=cfg["max_length"], num_labels=len(label_names))
                for split, reports in (("train", splits.train), ("validation", splits.validation))}
        # Only the word-embedding rows the training reports use are trained: the same model, faster on a CPU.
        result = train.fit(model, data["train"], data["validation"], train_config(cfg, used_embedding_rows_only=True),
                           progress=progress)
        meta = {"history": result.history, "steps": result.steps, "best_epoch": result.best_epoch,
                "train_seconds": result.seconds, "examples_per_second": result.examples_per_second,
                "device": str(next(model.parameters()).device)}
        return model.state_dict(), meta

    state, meta, hit = cache.cached_state(f"finetuned-{task}", key_config, build)
    model = train.SequenceClassifier(pretrained.load_encoder(model_name), len(label_names))
    model.load_state_dict(state)
    model = model.to(env.get_device()).eval()
    info = {"config": key_config, "label_names": label_names, "splits": {"fab": fab, **splits_args},
            "cached": hit, "path": str(cache.path_for(f"finetuned-{task}", key_config)),
            **{k: meta.get(k) for k in ("history", "steps", "best_epoch", "train_seconds", "examples_per_second", "device")}}
    return model, tokenizer, info


# ---------------------------------------------------------------- 08: the distilled student

#: Settings of the course's student (notebook 08); ``layers`` index the teacher's layers.
#: Three of the six layers, and a larger learning rate than fine-tuning a whole encoder needs:
#: in trials, students with one or two layers lost several points of accuracy, and a student
#: at the teacher's learning rate learnt too slowly for two epochs. Two epochs keep notebook 08,
#: which trains two students, within a notebook's time budget (docs/authoring.md).
#: ``transfer``: extra reports of the teacher's fab, without labels, that the student also
#: learns from (the teacher's logits as soft targets, its answer as the hard label): Hinton
#: et al. (2015) distil on a "transfer set" that need not be labelled, and TinyBERT (Jiao et
#: al. 2020) enlarges it for task-specific distillation.
DISTILL_DEFAULTS = {"layers": [0, 2, 4], "temperature": 2.0, "alpha": 0.5, "epochs": 2, "lr": 3e-4, "head_lr": 1e-3,
                    "batch_size": 16, "warmup_ratio": 0.1, "weight_decay": 0.01, "patience": 2, "seed": 0,
                    "transfer": 0}
#: Overrides of :data:`DISTILL_DEFAULTS` that train in seconds (grading mode, smoke tests; with ``QUICK`` for the teacher).
DISTILL_QUICK = {"epochs": 1}


def transfer_reports(splits: dict, n: int) -> list:
    """``n`` more reports of the split's fab, none a near-duplicate of its train, validation or test reports.

    ``splits`` are the keyword arguments of :func:`bertlab.data.make_splits` (a teacher's
    ``info["splits"]``); the reports follow its training reports in the same stream, and
    their labels are not used (the teacher labels them).
    """
    args.positive_int("transfer (a number of reports)", n)
    n_train = splits["n_train"]
    return make_splits(**{**splits, "n_train": n_train + n}).train[n_train:]


def _fingerprint_ids(input_ids) -> str:
    """A short hash of lists of token ids (part of a cache key)."""
    h = hashlib.sha256()
    for ids in input_ids:
        h.update(torch.tensor(ids, dtype=torch.int32).numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def cached_teacher_logits(teacher, data: train.TextDataset, tinfo: dict) -> torch.Tensor:
    """:func:`bertlab.distill.teacher_logits` (N, C) of the cached teacher (``tinfo``: its info) on ``data``, cached beside it."""
    key = {"teacher": tinfo["config"], "n": len(data), "ids": _fingerprint_ids(data.input_ids)}
    state, _, _ = cache.cached_state("teacher-logits", key, lambda: ({"logits": distill.teacher_logits(teacher, data)}, {}))
    return state["logits"]


def distilled_student(fab: str = "A", task: str = "failure_type", *, teacher_overrides: dict | None = None,
                      hidden_weight: float = 0.0, progress: bool = True, **overrides):
    """The course's student of the cached fine-tuned teacher: ``(student, tokenizer, info)``.

    ``teacher_overrides`` go to :func:`finetuned_classifier` (e.g. :data:`QUICK`);
    ``overrides`` change :data:`DISTILL_DEFAULTS` (``layers``, ``temperature``, ``alpha``
    (0: labels only), ``epochs``, ``lr``, ``transfer``...). Trained with
    :func:`bertlab.distill.distill` on the teacher's training reports (plus ``transfer``
    unlabelled ones, see :func:`transfer_reports`) and cached under a key of both
    configurations; ``info`` holds the teacher's info (``teacher``), the settings, the
    history, ``cached``, and the seconds the training (``train_seconds``) and the whole build
    with the teacher's logits (``build_seconds``) took. ``hidden_weight > 0`` adds
    DistilBERT's cosine loss between the student's layers and the teacher's
    (:func:`bertlab.distill.hidden_loss`) with that weight; it is a setting (in the key and
    ``info["settings"]``) only when it is not 0, so the students cached before it existed,
    and the models exported from them, keep their keys.
    """
    unknown = sorted(set(overrides) - set(DISTILL_DEFAULTS))
    if unknown:
        raise TypeError(f"distilled_student got unknown settings {unknown}; known: {sorted(DISTILL_DEFAULTS)}")
    cfg = {**DISTILL_DEFAULTS, **overrides}
    cfg["layers"] = list(cfg["layers"])
    args.integer("transfer (a number of unlabelled reports)", cfg["transfer"], low=0)
    args.number("hidden_weight (the weight of the hidden-state cosine loss)", hidden_weight, low=0)
    if hidden_weight:
        cfg["hidden_weight"] = float(hidden_weight)
    distill.distillation_loss(cfg["temperature"], cfg["alpha"])  # bad settings raise now, before the teacher loads
    teacher, tokenizer, tinfo = finetuned_classifier(fab, task, progress=progress, **(teacher_overrides or {}))
    distill.check_layers(cfg["layers"], teacher.encoder.config.num_hidden_layers)
    key_config = {"teacher": tinfo["config"], **cfg}  # the settings, not the TrainConfig: cached students stay valid
    max_length = tinfo["config"]["max_length"]

    def build():
        start = time.perf_counter()
        splits = make_splits(**tinfo["splits"])
        ids = {n: i for i, n in enumerate(tinfo["label_names"])}

        def encode(reports):
            return train.encode(tokenizer, [r.text for r in reports], [ids[getattr(r, task)] for r in reports],
                                max_length=max_length, num_labels=len(ids))

        train_data, val = encode(splits.train), encode(splits.validation)
        z = cached_teacher_logits(teacher, train_data, tinfo)  # (N, C)
        if cfg["transfer"]:
            extra = transfer_reports(tinfo["splits"], cfg["transfer"])
            extra_ids = tokenizer([r.text for r in extra], truncation=True, max_length=max_length)["input_ids"]
            z_extra = cached_teacher_logits(teacher, train.TextDataset(extra_ids), tinfo)
            train_data = train.TextDataset(list(train_data.input_ids) + list(extra_ids),
                                           list(train_data.labels) + z_extra.argmax(-1).tolist(), pad_id=train_data.pad_id)
            z = torch.cat([z, z_extra])
        torch.manual_seed(cfg["seed"])
        student = distill.student_from_teacher(teacher, cfg["layers"])
        # Only the word-embedding rows the training reports use are trained: the same updates (the
        # unused rows are only spared weight decay) without a dense gradient, Adam state and clipping
        # of the whole 30,522-row table at every step, which is much of a small student's step.
        config = train_config(cfg, used_embedding_rows_only=True)
        result = distill.distill(student, z, train_data, val, config, temperature=cfg["temperature"], alpha=cfg["alpha"],
                                 hidden_weight=hidden_weight, teacher=teacher, layers=cfg["layers"], progress=progress)
        meta = {"history": result.history, "best_epoch": result.best_epoch, "train_seconds": result.seconds,
                "build_seconds": time.perf_counter() - start}  # training plus the teacher's logits
        return student.state_dict(), meta

    state, meta, hit = cache.cached_state(f"student-{task}", key_config, build)
    student = distill.student_from_teacher(teacher, cfg["layers"])  # on the teacher's device; the teacher stays there
    student.load_state_dict(state)
    student = student.to(env.get_device()).eval()
    info = {"teacher": tinfo, "settings": cfg, "cached": hit, "path": str(cache.path_for(f"student-{task}", key_config)),
            **{k: meta.get(k) for k in ("history", "best_epoch", "train_seconds", "build_seconds")}}
    return student, tokenizer, info


# ---------------------------------------------------------------- the served model (bertlab export)


#: The served student (``bertlab export``; ``benchmarks/deploy.py`` benchmarks it): 2 of the teacher's layers,
#: [0, 3], distilled for 3 epochs on the 1,000 labelled reports and 4,000 unlabelled ones (about 7.5 minutes on
#: 2 cores, once; then cached). Measured on 2 CPU cores (500 test reports, teacher 0.872): 3 layers [0, 2, 4] on
#: 1,000 + 2,000 reports, 2 epochs: 0.886, but its ORT INT8 p50 was only 4.1-6.3x the teacher's in three runs;
#: 2 layers [0, 3] on 1,000 + 2,000 reports, 2 epochs: 0.838; on 1,000 + 4,000, 3 epochs: 0.888.
SERVED_STUDENT = {"layers": [0, 3], "transfer": 4000, "epochs": 3}


def deployment_vocabulary(tokenizer, tinfo: dict, documents: int = 2000) -> set[int]:
    """The WordPiece ids a trimmed deployment keeps: those of the teacher's training reports (``tinfo``: its
    info) and of ``documents`` documents of the unlabelled domain corpus (:func:`bertlab.vocab.domain_vocabulary`)."""
    corpus = [" ".join(doc) for doc in domain_corpus(documents, seed=0)]
    return vocab.domain_vocabulary(tokenizer, [r.text for r in make_splits(**tinfo["splits"]).train] + corpus)


def exported_model(*, int8: bool = True, trimmed: bool = True, progress: bool = True,
                   teacher_overrides: dict | None = None, **overrides) -> Path:
    """The course's served model, the deployment benchmark's smallest variant at the INT8 student's speed:
    :data:`SERVED_STUDENT` (changed by ``overrides``, see :func:`distilled_student`) exported to ONNX.

    With a trimmed vocabulary (:class:`bertlab.vocab.TrimmedVocabulary` over
    :func:`deployment_vocabulary`) if ``trimmed``; INT8 (ONNX Runtime's dynamic quantization) if
    ``int8``, else fp32. The export is checked against PyTorch (:func:`bertlab.deploy.check_onnx`).
    Returns the path of the file in the model cache, built now if missing.
    """
    student, tokenizer, info = distilled_student(teacher_overrides=teacher_overrides, progress=progress,
                                                 **{**SERVED_STUDENT, **overrides})
    key_config = {"student": info["settings"], "teacher": info["teacher"]["config"],
                  "int8": "per-channel" if int8 else False, "trimmed": trimmed}
    path = cache.path_for("served-student", key_config, suffix=".onnx")
    if not path.is_file():
        meta = deploy.model_metadata(info["teacher"]["label_names"], info["teacher"]["config"]["max_length"],
                                     layers=info["settings"]["layers"])
        model = student.cpu().eval()
        if trimmed:
            keep = deployment_vocabulary(tokenizer, info["teacher"])
            model = vocab.TrimmedVocabulary(model, keep, tokenizer.unk_token_id, tokenizer.all_special_ids)
        with tempfile.TemporaryDirectory(dir=path.parent) as d:  # beside the cache entry: renamed into place atomically
            fp32 = deploy.export_onnx(model, Path(d) / "student.onnx", metadata=meta)
            deploy.check_onnx(model, fp32)
            if int8:
                deploy.quantize_onnx(fp32, path)
            else:
                os.replace(fp32, path)
    return path


# ---------------------------------------------------------------- 06: the multi-task model

#: Settings of the course's multi-task model (notebook 06) on top of fine-tuning's
#: (``FINETUNE_DEFAULTS``): which tasks train, their loss weights, the
#: fraction of labels hidden per task, and the sentence vector. Grading mode and smoke tests
#: pass fine-tuning's quick overrides, ``QUICK``.
MULTITASK_DEFAULTS = {"tasks": list(multitask.TASKS), "weights": None, "missing": None, "missing_seed": 0, "pooling": "cls"}


def multitask_classifier(fab: str = "A", *, model_name: str | None = None, progress: bool = True, **overrides):
    """The encoder fine-tuned on several tasks of ``fab`` at once: ``(model, tokenizer, info)``.

    Like :func:`finetuned_classifier`, with its settings and :data:`MULTITASK_DEFAULTS`:
    ``tasks`` (one head each; a single task gives the single-task baseline with the very same
    code), ``weights`` (:func:`bertlab.multitask.multitask_loss`), ``missing`` (``{task: fraction}`` of the
    training and validation labels hidden with ``missing_seed``, :func:`bertlab.multitask.report_labels`; the
    test reports keep every label) and ``pooling``. Loaded from ``bertlab.cache`` when the
    same configuration and data were trained before, else trained with :func:`bertlab.multitask.fit_multitask`
    and cached. ``info`` holds the configuration, the label names per task, the history, the
    training time, ``splits`` (the ``make_splits`` arguments) and ``cached``. The model is in
    eval mode on ``bertlab.env.get_device()``.
    """
    defaults = {**FINETUNE_DEFAULTS, **MULTITASK_DEFAULTS}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise TypeError(f"multitask_classifier got unknown settings {unknown}; known: {sorted(defaults)}")
    cfg = {**defaults, **overrides}
    tasks = multitask._check_tasks(cfg["tasks"], "tasks")
    cfg["tasks"] = list(tasks)
    multitask.check_weights(cfg["weights"], tasks)
    args.one_of("pooling", cfg["pooling"], multitask.POOLING)
    splits_args = {"n_train": cfg["n_train"], "n_val": cfg["n_val"], "n_test": cfg["n_test"], "seed": cfg["data_seed"]}
    splits = make_splits(fab, **splits_args)
    multitask.report_labels(splits.train[:1], tasks, missing=cfg["missing"])  # checks missing now, not after loading a model
    key_config = {"fab": fab, "model": model_key(model_name), **cfg,
                  "data": fingerprint(splits.train, splits.validation)}
    tokenizer = pretrained.load_tokenizer(model_name)
    num_labels = multitask.num_labels_for(tasks)

    def build():
        torch.manual_seed(cfg["seed"])  # the heads' initial weights
        model = multitask.MultiTaskModel(pretrained.load_encoder(model_name), num_labels, pooling=cfg["pooling"])
        data = {}
        for split, seed_offset in (("train", 0), ("validation", 1)):
            reports = getattr(splits, split)
            labels = multitask.report_labels(reports, tasks, missing=cfg["missing"], seed=cfg["missing_seed"] + seed_offset)
            data[split] = multitask.encode_multitask(tokenizer, [r.text for r in reports], labels, max_length=cfg["max_length"])
        result = multitask.fit_multitask(model, data["train"], data["validation"], train_config(cfg),
                               weights=cfg["weights"], progress=progress)
        meta = {"history": result.history, "best_epoch": result.best_epoch, "train_seconds": result.seconds,
                "examples_per_second": result.examples_per_second}
        return model.state_dict(), meta

    state, meta, hit = cache.cached_state("multitask", key_config, build)
    model = multitask.MultiTaskModel(pretrained.load_encoder(model_name), num_labels, pooling=cfg["pooling"])
    model.load_state_dict(state)
    model = model.to(env.get_device()).eval()
    info = {"config": key_config, "label_names": {t: list(LABELS[t]) for t in tasks},
            "splits": {"fab": fab, **splits_args}, "cached": hit, "path": str(cache.path_for("multitask", key_config)),
            **{k: meta.get(k) for k in ("history", "best_epoch", "train_seconds", "examples_per_second")}}
    return model, tokenizer, info
