"""Domain adaptation and transfer (notebook 07): layer freezing, MLM perplexity, WordPiece fragmentation.

- :func:`freeze_layers`, :func:`trainable_parameter_names`: freeze the embeddings and the
  lower k encoder layers by index, so that only the upper layers and the head train (the
  lower layers hold the most general features: Howard & Ruder 2018; Sun et al. 2019).
- :func:`mlm_nll`, :func:`mlm_perplexity`: ``exp`` of the masked-LM cross-entropy per
  masked token over a whole held-out set (token-weighted, not a mean of batch means),
  with the masks of :func:`bertlab.pretraining.mask_tokens` fixed by :func:`mlm_batches`.
- :func:`wordpiece_pieces`, :func:`fragmentation`: how many WordPiece tokens a domain word
  costs (a general vocabulary splits "electromigration" into several pieces).
- :func:`transformers_encoder`: a ``bertlab.model.BertModel`` as a ``transformers.BertModel``
  with the same weights, to fine-tune the adapted and the original encoder the same way.

The course's domain-adapted checkpoint (continued pre-training on the domain corpus) is
``bertlab.artifacts_pretraining.continue_pretraining``.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch.nn as nn

from bertlab import args
from bertlab.pretrain_loop import mlm_totals

# ---------------------------------------------------------------- freezing


def _find_bert(model: nn.Module) -> nn.Module:
    """The BERT encoder inside ``model``: the module with ``embeddings`` and ``encoder.layer``."""
    for candidate in (model, getattr(model, "encoder", None), getattr(model, "bert", None)):
        if (isinstance(candidate, nn.Module) and hasattr(candidate, "embeddings")
                and isinstance(getattr(getattr(candidate, "encoder", None), "layer", None), nn.ModuleList)):
            return candidate
    raise TypeError("model must be a BERT (transformers or bertlab.model BertModel) or wrap one as .encoder "
                    f"(SequenceClassifier, MultiTaskModel) or .bert (BertForPreTraining); got {type(model).__name__}")


def num_layers(model: nn.Module) -> int:
    """The number of encoder layers of the BERT in ``model``."""
    return len(_find_bert(model).encoder.layer)


def freeze_layers(model: nn.Module, k: int) -> nn.Module:
    """Freeze the embeddings and encoder layers ``0..k-1`` of the BERT in ``model``; everything else trains.

    ``k = 0`` freezes nothing (full fine-tuning); ``k = num_layers`` freezes the whole encoder
    stack, so only what sits above it (pooler, heads) trains. Layers are counted from the
    input: layer 0 is the lowest. Freezing sets ``requires_grad = False``: no gradient is
    computed for those parameters (and backpropagation stops below the lowest trainable
    layer, which saves time), and :func:`bertlab.train.param_groups` leaves them out of the
    optimizer. Every other parameter of ``model`` is set trainable, so calling it again with
    another ``k`` gives exactly that setting. Works for ``transformers`` and ``bertlab.model``
    BERTs and for models wrapping one as ``.encoder`` or ``.bert``. Returns ``model``.
    Raises ValueError for ``k`` outside ``0..num_layers``, TypeError for a model without a BERT.
    """
    bert = _find_bert(model)
    n = len(bert.encoder.layer)
    args.integer("k", k, 0, n)  # the number of encoder layers to freeze
    for p in model.parameters():
        p.requires_grad_(True)
    if k > 0:
        frozen = [bert.embeddings, *bert.encoder.layer[:k]]
        for module in frozen:
            for p in module.parameters():  # a head tied to the word embeddings is frozen with them
                p.requires_grad_(False)
    return model


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that will train (``requires_grad``), in ``named_parameters`` order."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


# ---------------------------------------------------------------- perplexity


def mlm_batches(tokenizer, texts: Sequence[str], *, batch_size: int = 32, max_length: int = 64,
                mlm_probability: float = 0.15, seed: int = 0) -> list[dict]:
    """Masked batches of ``texts`` with the masks drawn once (a list, not a loader).

    Each is a dict from :class:`bertlab.pretraining.PretrainingCollator` (``input_ids``,
    ``token_type_ids``, ``attention_mask``, ``mlm_labels``, all (B, T)). Because the masks are
    fixed, two models evaluated on the same list predict the very same tokens: the only fair
    way to compare perplexities.
    """
    from bertlab.pretraining import PretrainingCollator

    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give at least one text")
    args.positive_int("batch_size", batch_size)
    collate = PretrainingCollator(tokenizer, mlm_probability=mlm_probability, seed=seed, max_length=max_length)
    return [collate(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]


def mlm_nll(model: nn.Module, batches: Iterable[dict]) -> tuple[float, int]:
    """``(sum of -log p(token) over every masked position of batches, number of those positions)``.

    A batch holds ``input_ids`` (B, T), ``attention_mask`` and ``token_type_ids`` (optional)
    and the labels as ``mlm_labels`` (:class:`~bertlab.pretraining.PretrainingCollator`) or
    ``labels`` (transformers' collator): the original id at a masked position, -100 elsewhere.
    ``model`` is a ``bertlab.model.BertForPreTraining`` (logits computed at the masked
    positions only) or a ``transformers`` masked LM. Runs in eval mode (no dropout) on the
    model's device and leaves the model in the mode it was in.
    """
    totals = mlm_totals(model, batches)
    return totals["nll"], totals["n"]


def mlm_perplexity(model: nn.Module, batches: Iterable[dict]) -> float:
    """Masked-LM perplexity ``exp(sum_i -log p(w_i | context) / N)`` over the N masked tokens of ``batches``.

    The mean is over tokens, not over batches: a batch with more masked tokens weighs more,
    so the result does not depend on how the texts were cut into batches. It is the
    exponential of :func:`bertlab.pretraining.mlm_loss` computed on all the batches at once.
    A model that guesses uniformly over V tokens scores V; a perfect one 1. Each masked token
    is predicted from both sides, over random masks (as in the Hugging Face course, chapter 7);
    not the pseudo-perplexity of Salazar et al. (2020), which masks every token once in turn.
    Raises ValueError when no position is masked.
    """
    total, n = mlm_nll(model, batches)
    if n == 0:
        raise ValueError("batches hold no masked position (all labels are -100): perplexity is undefined")
    return math.exp(total / n)


# ---------------------------------------------------------------- WordPiece fragmentation


def wordpiece_pieces(tokenizer, terms: Sequence[str]) -> dict[str, list[str]]:
    """``{term: its WordPiece tokens}``, e.g. ``{"electromigration": ["electro", "##mi", "##gration"]}``."""
    terms = _check_terms(terms)
    return {t: tokenizer.tokenize(t) for t in terms}


def fragmentation(tokenizer, terms: Sequence[str]) -> float:
    """Mean number of WordPiece tokens per word of ``terms`` (1.0: every word is one token).

    A term may hold several words ("gate oxide breakdown"); each whitespace-separated word
    counts once. The tokenizer's own pre-tokenizer still splits a word at punctuation
    ("VDD_CORE" -> vdd, _, core): those pieces count too.
    """
    terms = _check_terms(terms)
    words = [w for t in terms for w in t.split()]
    if not words:
        raise ValueError("terms hold no word (only whitespace)")
    return sum(len(tokenizer.tokenize(w)) for w in words) / len(words)


def _check_terms(terms) -> list[str]:
    if isinstance(terms, str):
        raise TypeError("terms must be a list of strings, got a single str; wrap it in a list")
    terms = list(terms)
    if not terms:
        raise ValueError("terms is empty: give at least one term")
    bad = next((i for i, t in enumerate(terms) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"terms[{bad}] must be a str, got {type(terms[bad]).__name__}")
    return terms


def transformers_encoder(bert: nn.Module):
    """A ``transformers.BertModel`` with the weights of ``bert`` (a ``bertlab.model.BertModel``), in eval mode.

    The two share parameter names, so the state dict loads as it is; use it to fine-tune the
    domain-adapted encoder (``model.bert`` of
    :func:`bertlab.artifacts_pretraining.continue_pretraining`) with exactly the
    code that fine-tunes the original one (``bertlab.pretrained.load_encoder``).
    """
    from dataclasses import asdict

    import transformers

    from bertlab.model import BertModel

    if not isinstance(bert, BertModel):
        raise TypeError(f"bert must be a bertlab.model.BertModel (e.g. model.bert), got {type(bert).__name__}")
    cfg = transformers.BertConfig(**asdict(bert.config), hidden_act="gelu", position_embedding_type="absolute")
    out = transformers.BertModel(cfg)
    missing, unexpected = out.load_state_dict(bert.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]  # buffers, not weights
    if missing or unexpected:
        raise RuntimeError(f"weights do not fit transformers.BertModel: missing {missing}, unexpected {unexpected}")
    return out.to(next(bert.parameters()).device).eval()


# ---------------------------------------------------------------- transfer: frozen lower layers


def course_encoder(encoder: nn.Module):
    """A ``bertlab.model.BertModel`` with the weights of a ``transformers`` BERT ``encoder``, in eval mode.

    The inverse of :func:`transformers_encoder`: it lets :func:`layer_states` and
    :class:`bertlab.baselines.TopLayersClassifier` start from a fine-tuned classifier's
    encoder (e.g. ``bertlab.train.finetuned_classifier(...)[0].encoder``). A course
    ``BertModel`` is returned as it is.
    """
    from bertlab.model import BertConfig, BertModel

    if isinstance(encoder, BertModel):
        return encoder
    cfg = getattr(encoder, "config", None)
    if cfg is None or not hasattr(encoder, "embeddings"):
        raise TypeError(f"encoder must be a transformers BertModel or a bertlab.model.BertModel, got {type(encoder).__name__}")
    if getattr(cfg, "hidden_act", "gelu") != "gelu" or getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        raise ValueError("encoder must use exact GELU and absolute positions, as bertlab.model.BertModel does")
    names = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "max_position_embeddings", "type_vocab_size", "hidden_dropout_prob", "attention_probs_dropout_prob",
             "layer_norm_eps", "pad_token_id", "initializer_range")
    out = BertModel(BertConfig(**{n: getattr(cfg, n) for n in names}))
    state = {k: v for k, v in encoder.state_dict().items() if not k.endswith(("position_ids", "token_type_ids"))}
    missing, unexpected = out.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("pooler.")]:
        raise RuntimeError(f"weights do not fit bertlab.model.BertModel: missing {missing}, unexpected {unexpected}")
    return out.to(next(encoder.parameters()).device).eval()

