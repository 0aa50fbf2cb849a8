"""The course's pre-trained models (notebooks 03 and 07), each cached, and the domain text they use.

The companion of :mod:`bertlab.artifacts` for the models that keep pre-training the shipped
checkpoint on ``bertlab.data.domain_corpus``; the library (:mod:`bertlab.pretrain_loop`,
:mod:`bertlab.domain`) trains and measures them and reads no course data.

- :func:`checkpoint_with_mlm_head`: the shipped checkpoint (no MLM head) with a head trained
  on the domain corpus, encoder frozen (:func:`bertlab.pretrain_loop.train_mlm_head`), keyed
  by :func:`head_config`.
- :func:`continue_pretraining`: domain-adaptive pre-training (Gururangan et al. 2020,
  "Don't Stop Pretraining"): more MLM on the domain corpus, starting from that checkpoint and
  head, keyed by :func:`dapt_config`; :func:`domain_texts` are its training and held-out
  sentences and :func:`heldout_batches` the masked held-out batches its perplexity is measured on.
- :func:`domain_terms`: the fab's domain words, whose WordPiece fragmentation notebook 07 measures.
"""
from __future__ import annotations

from typing import Mapping

import torch

from bertlab import cache, env, pretrain_loop
from bertlab.data import FAILURE_TYPES, ROOT_CAUSES, domain_corpus
from bertlab.data.lexicon import POWER_DOMAINS
from bertlab.domain import mlm_batches
from bertlab.model import BertForPreTraining
from bertlab.pretrained import DEFAULT_NAME, is_default, load_tokenizer, model_name_or_dir
from bertlab.pretraining import PretrainingCollator

# ---------------------------------------------------------------- 03: the checkpoint's MLM head

#: How the cached MLM head of the shipped checkpoint is trained; the cache key is this dict
#: (plus the checkpoint), so changing any value trains and caches a new head.
HEAD_CONFIG = {
    "corpus_docs": 400,      # documents of bertlab.data.domain_corpus ...
    "corpus_seed": 0,        # ... and its seed
    "steps": 150,            # training steps (bertlab.train.fit) on the cached encoder features
    "lr": 1e-2,
    "batch_positions": 128,  # masked positions per step
    "mlm_probability": 0.15,
    "max_length": 64,
    "seed": 0,
    "version": 2,            # bump when the training code changes (2: trained by bertlab.train.fit)
}


def head_config(name: str | None = None, **overrides) -> dict:
    """:data:`HEAD_CONFIG` with ``overrides``, and the checkpoint it is for (the cache key)."""
    unknown = set(overrides) - set(HEAD_CONFIG)
    if unknown:
        raise ValueError(f"unknown MLM head settings {sorted(unknown)}; known: {sorted(HEAD_CONFIG)}")
    target = model_name_or_dir(name)
    return {"checkpoint": DEFAULT_NAME if is_default(target) else target, **HEAD_CONFIG, **overrides}


def checkpoint_with_mlm_head(config: dict | None = None, name: str | None = None, device=None,
                             progress: bool = True, plot: bool = False):
    """The checkpoint as a ``BertForPreTraining`` whose MLM head is trained, and its tokenizer.

    The head comes from ``bertlab.cache`` when one was trained with ``config`` (default:
    :func:`head_config`), else it is trained now by :func:`bertlab.pretrain_loop.train_mlm_head`
    on sentences of ``bertlab.data.domain_corpus`` (encoder frozen) and cached. The NSP head
    stays untrained. Returns ``(model in eval mode on device, tokenizer, info)`` (the model stays
    on the CPU when ``device`` is None); ``info`` holds whether the cache had it (``cached``) and
    the training record: ``eval`` (held-out MLM loss and accuracy at each validation step),
    ``baseline`` (the unigram model there), ``seconds`` (of training), ``positions``, ``sentences``.
    """
    config = dict(config) if config is not None else head_config(name)
    unknown = set(config) - set(HEAD_CONFIG) - {"checkpoint"}
    if unknown:
        raise ValueError(f"config has unknown MLM head settings {sorted(unknown)}")
    model = BertForPreTraining.from_pretrained(name)
    tokenizer = load_tokenizer(name)

    def build():
        texts = [s for doc in domain_corpus(config["corpus_docs"], config["corpus_seed"]) for s in doc]
        result, info = pretrain_loop.train_mlm_head(
            model, tokenizer, texts, config["steps"], lr=config["lr"], batch_positions=config["batch_positions"],
            mlm_probability=config["mlm_probability"], max_length=config["max_length"], seed=config["seed"],
            progress=progress, plot=plot)
        return pretrain_loop.head_state(model), {"eval": pretrain_loop.history_rows(result), "seconds": result.seconds,
                                                 "sentences": len(texts), **info}

    state, meta, hit = cache.cached_state("mlm-head", config, build)
    if hit:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(pretrain_loop.HEAD_KEYS) & set(missing):
            raise RuntimeError(f"cached MLM head does not fit the model: unexpected {unexpected}, missing {missing}")
    model.to(device if device is not None else "cpu")  # train_mlm_head trained it on fit's device
    model.eval()
    return model, tokenizer, {**meta, "cached": hit}


# ---------------------------------------------------------------- 07: continued pre-training

#: How the course adapts the shipped checkpoint to the domain corpus; the cache key is this dict
#: (plus the checkpoint and the MLM head's config), so changing a value trains a new model.
DAPT_CONFIG = {
    "corpus_docs": 400,      # training documents: the first corpus_docs of domain_corpus(..., corpus_seed)
    "corpus_seed": 0,
    "eval_docs": 60,         # held-out documents after every document the head or this run trained on
    "steps": 150,            # training steps of MLM on the whole model (encoder and MLM head)
    "lr": 1e-4,
    "batch_size": 32,        # sentences per step
    "max_length": 64,
    "mlm_probability": 0.15,
    "warmup": 0.1,
    "weight_decay": 0.01,
    "eval_every": 50,
    "seed": 0,
    "version": 2,            # bump when the training code changes (2: trained by bertlab.train.fit)
}
#: Overrides of :data:`DAPT_CONFIG` that train in seconds (grading mode, smoke tests).
DAPT_QUICK = {"corpus_docs": 16, "eval_docs": 8, "steps": 4, "batch_size": 8, "eval_every": 4}
# BertForPreTraining ties these to the word embeddings and the MLM bias: saved once, under those names.
_TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


def dapt_config(name: str | None = None, head: Mapping | None = None, **overrides) -> dict:
    """:data:`DAPT_CONFIG` with ``overrides``, the checkpoint and the MLM head's config (the cache key).

    ``head`` overrides :data:`HEAD_CONFIG` (e.g. ``{"steps": 4}``). Raises ValueError naming
    unknown settings.
    """
    unknown = sorted(set(overrides) - set(DAPT_CONFIG))
    if unknown:
        raise ValueError(f"unknown continued pre-training settings {unknown}; known: {sorted(DAPT_CONFIG)}")
    head_cfg = head_config(name, **dict(head or {}))
    return {"checkpoint": head_cfg["checkpoint"], "head": head_cfg, **DAPT_CONFIG, **overrides}


def domain_texts(config: Mapping) -> tuple[list[str], list[str]]:
    """``(training sentences, held-out sentences)`` of ``bertlab.data.domain_corpus`` for ``config``.

    The held-out documents come after every document the MLM head (``config["head"]``) and
    continued pre-training train on, and a held-out sentence that also occurs verbatim in the
    training text is dropped (the corpus repeats some stock sentences), so the perplexity
    is measured on text neither model saw.
    """
    head = config["head"]
    seed, n_train = config["corpus_seed"], config["corpus_docs"]
    start = max(n_train, head["corpus_docs"] if head["corpus_seed"] == seed else 0)
    docs = domain_corpus(start + config["eval_docs"], seed)
    train_texts = [s for d in docs[:n_train] for s in d]
    seen = set(train_texts)
    seen |= {s for d in domain_corpus(head["corpus_docs"], head["corpus_seed"]) for s in d}
    held = [s for d in docs[start:] for s in d if s not in seen]
    return train_texts, held


def heldout_batches(tokenizer, config: Mapping | None = None, *, batch_size: int = 64) -> list[dict]:
    """The held-out masked batches of ``config`` (default :func:`dapt_config`): the text of
    :func:`domain_texts`, masked once with seed ``config["seed"] + 1``. :func:`continue_pretraining`
    evaluates on exactly these, so perplexities computed on them match its ``info``."""
    config = dict(config) if config is not None else dapt_config()
    _, held = domain_texts(config)
    if not held:
        raise ValueError("config leaves no held-out sentence: raise eval_docs")
    return mlm_batches(tokenizer, held, batch_size=batch_size, max_length=config["max_length"],
                       mlm_probability=config["mlm_probability"], seed=config["seed"] + 1)


def continue_pretraining(config: Mapping | None = None, *, name: str | None = None, device=None,
                         progress: bool = True, plot: bool = False):
    """The checkpoint after more MLM pre-training on the domain corpus: ``(model, tokenizer, info)``.

    Starts from :func:`checkpoint_with_mlm_head` (the shipped encoder with an MLM head trained
    on the frozen encoder; cached too), then trains the whole model (encoder and head; the NSP
    head is unused) for ``config["steps"]`` steps of MLM on the training sentences of
    :func:`domain_texts` with :func:`bertlab.pretrain_loop.pretrain` (``bertlab.train.fit``:
    AdamW, warm-up and decay, clipping, a progress bar, live curves with ``plot``; the weights
    with the lowest held-out MLM loss are kept). The result is loaded from ``bertlab.cache``
    when a model with the same ``config`` (default: :func:`dapt_config`) was trained before.
    The model is a ``bertlab.model.BertForPreTraining`` in eval mode on ``device`` (default:
    ``bertlab.env.get_device()``). ``info`` holds the config, ``cached``, the held-out MLM loss
    and accuracy before training (``before``) and during it (``eval``: ``step``, ``mlm_loss``,
    ``mlm_acc`` every ``eval_every`` steps), the mean training losses between evaluations
    (``train``: ``step``, ``loss``, ``mlm_loss``), the training time (``seconds``, evaluation
    excluded), ``steps_per_second`` and sentence counts.
    """
    from torch.utils.data import DataLoader

    config = dict(config) if config is not None else dapt_config(name)
    unknown = sorted(set(config) - set(DAPT_CONFIG) - {"checkpoint", "head"})
    if unknown:
        raise ValueError(f"config has unknown continued pre-training settings {unknown}")
    missing = sorted((set(DAPT_CONFIG) | {"head"}) - set(config))
    if missing:
        raise ValueError(f"config lacks settings {missing}: build it with bertlab.artifacts_pretraining.dapt_config")
    device = torch.device(device) if device is not None else env.get_device()
    tokenizer = load_tokenizer(name)

    def build():
        model, _, head_info = checkpoint_with_mlm_head(config["head"], name, device=device, progress=progress)
        for p in model.parameters():  # the head was trained on a frozen encoder: now everything trains
            p.requires_grad_(True)
        train_texts, held = domain_texts(config)
        eval_batches = heldout_batches(tokenizer, config)
        before = pretrain_loop.evaluate(model, eval_batches)
        loader = DataLoader(train_texts, batch_size=config["batch_size"], shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(config["seed"]),
                            collate_fn=PretrainingCollator(tokenizer, config["mlm_probability"], seed=config["seed"],
                                                           max_length=config["max_length"]))
        result = pretrain_loop.pretrain(model, loader, config["steps"], lr=config["lr"], warmup=config["warmup"],
                                        weight_decay=config["weight_decay"], eval_batches=eval_batches,
                                        eval_every=config["eval_every"], plot=plot, progress=progress,
                                        title="domain MLM", seed=config["seed"])
        state = {k: v for k, v in model.state_dict().items() if k not in _TIED}
        meta = {"before": before, "eval": pretrain_loop.history_rows(result),
                "train": pretrain_loop.history_rows(result, "train_"), "seconds": result.seconds,
                "steps_per_second": result.steps_per_second, "sentences": len(train_texts),
                "heldout_sentences": len(held), "head_cached": head_info["cached"]}
        return state, meta

    state, meta, hit = cache.cached_state("domain-mlm", config, build)
    model = BertForPreTraining.from_pretrained(name)
    missing_keys, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing_keys) - set(_TIED):
        raise RuntimeError(f"cached domain model does not fit: unexpected {unexpected}, missing {missing_keys}")
    model = model.to(device).eval()
    info = {**meta, "config": config, "cached": hit, "path": str(cache.path_for("domain-mlm", config))}
    return model, tokenizer, info


def domain_terms() -> list[str]:
    """Words of the fab's domain: root causes, failure types and power domains of ``bertlab.data``."""
    words = {w for name in (*ROOT_CAUSES, *FAILURE_TYPES) for w in name.split("_") if len(w) > 2}
    return sorted(words) + list(POWER_DOMAINS)
