"""The BERT family (notebook 11): what RoBERTa, ALBERT, ELECTRA and a distilled BERT change, in code.

Built on ``transformers``' own model classes with tiny configurations; trained by the course's
one loop (:func:`bertlab.train.fit`, through :func:`pretrain`).

- :func:`dynamic_masks`: RoBERTa's dynamic masking, a new BERT mask (80/10/10) each epoch,
  against :func:`static_masks`, one mask fixed once and repeated.
- :func:`pack_sentences`: RoBERTa's full-sentence packing of a document's sentences.
- :func:`sop_pairs`: ALBERT's sentence-order prediction pairs (both orders of two consecutive
  segments of one document); :func:`albert_parameter_count`: the parameters of an ALBERT
  configuration (factorised embeddings, shared layers).
- :func:`rtd_labels`, :func:`electra_loss`: ELECTRA's replaced-token-detection labels and its
  combined loss; :class:`Electra`: a generator and a discriminator as one module.
- :class:`Pretrainer`: one variant (``bert``, ``roberta``, ``albert``, ``electra``, ``distilled``)
  with its loss; :func:`flops_per_step`: the estimated training FLOPs of one step, so that
  variants get an equal budget; :func:`pretrain`; :func:`encode_mean`: frozen features for a
  linear probe.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bertlab import args, distill, train
from bertlab.pretraining import IGNORE_INDEX, mask_tokens, mlm_loss

IN_ORDER, SWAPPED = 0, 1  # sentence-order prediction labels
ORIGINAL, REPLACED = 0, 1  # replaced-token detection labels
KINDS = ("bert", "roberta", "albert", "electra", "distilled")


# ---------------------------------------------------------------- RoBERTa: dynamic masking, packing


def dynamic_masks(input_ids: torch.Tensor, special_tokens_mask: torch.Tensor, epochs: int, *, vocab_size: int,
                  mask_token_id: int, mlm_probability: float = 0.15, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """RoBERTa's dynamic masking: ``epochs`` pairs ``(masked_ids, labels)``, a fresh BERT mask each epoch.

    One ``torch.Generator`` seeded once with ``seed`` draws every epoch's mask with
    :func:`bertlab.pretraining.mask_tokens` (80/10/10), so epochs differ and the whole list is
    reproducible. Special tokens are never chosen.
    """
    args.positive_int("epochs", epochs)
    g = torch.Generator().manual_seed(seed)
    return [mask_tokens(input_ids, special_tokens_mask, vocab_size=vocab_size, mask_token_id=mask_token_id,
                        mlm_probability=mlm_probability, generator=g) for _ in range(epochs)]


def static_masks(input_ids: torch.Tensor, special_tokens_mask: torch.Tensor, epochs: int, *, vocab_size: int,
                 mask_token_id: int, mlm_probability: float = 0.15, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """BERT's static masking: one mask drawn once, the same pair every epoch."""
    args.positive_int("epochs", epochs)
    once = dynamic_masks(input_ids, special_tokens_mask, 1, vocab_size=vocab_size, mask_token_id=mask_token_id,
                         mlm_probability=mlm_probability, seed=seed)[0]
    return [once] * epochs


def pack_sentences(documents: Sequence[Sequence[str]], tokenizer, max_length: int) -> list[str]:
    """Full-sentence packing: consecutive sentences of a document joined while they fit ``max_length`` tokens.

    A text never crosses a document boundary (RoBERTa's DOC-SENTENCES) and holds at least one
    sentence (a longer one is truncated later by the collator).
    """
    args.integer("max_length", max_length, low=3)
    budget, texts = max_length - 2, []  # room for [CLS] and [SEP]
    for doc in documents:
        current, used = [], 0
        for s in doc:
            n = len(tokenizer.tokenize(s))
            if current and used + n > budget:
                texts.append(" ".join(current))
                current, used = [], 0
            current.append(s)
            used += n
        if current:
            texts.append(" ".join(current))
    return texts


# ---------------------------------------------------------------- ALBERT: SOP pairs, parameter count


def sop_pairs(documents: Sequence[Sequence[str]], seed: int = 0) -> list[tuple[str, str, int]]:
    """Sentence-order prediction pairs ``(a, b, label)`` (Lan et al. 2020, section 3.1).

    Every pair of consecutive sentences ``(s_i, s_i+1)`` of a document is used once: label 0
    (``IN_ORDER``) keeps the order, label 1 (``SWAPPED``) gives ``(s_i+1, s_i)``. Both sentences
    always come from one document, so topic cannot give the answer away (NSP's weakness). Exactly
    half the pairs are swapped (ceil/floor), shuffled; deterministic for ``seed``.
    """
    if isinstance(documents, str) or not isinstance(documents, Sequence):
        raise TypeError(f"documents must be a list of documents (lists of sentences), got {type(documents).__name__}")
    positions = [(d, i) for d, doc in enumerate(documents) for i in range(len(doc) - 1)]
    if not positions:
        raise ValueError("documents must hold at least one document with 2 or more sentences")
    rng = random.Random(seed)
    labels = [IN_ORDER] * ((len(positions) + 1) // 2) + [SWAPPED] * (len(positions) // 2)
    rng.shuffle(labels)
    rng.shuffle(positions)
    pairs = []
    for (d, i), label in zip(positions, labels):
        a, b = documents[d][i], documents[d][i + 1]
        pairs.append((a, b, label) if label == IN_ORDER else (b, a, label))
    return pairs


def albert_parameter_count(config) -> int:
    """The parameters of ``transformers.AlbertModel(config)`` (with its pooler), from the configuration alone.

    Embeddings V*E + P*E + S*E + LayerNorm 2E; the projection E*H + H; ``num_hidden_groups``
    groups of ``inner_group_num`` layers, shared by all ``num_hidden_layers`` (each: attention
    4(H*H + H) and its LayerNorm 2H, feed-forward H*I + I + I*H + H and its LayerNorm 2H); the
    pooler H*H + H.
    """
    V, E, H, I = config.vocab_size, config.embedding_size, config.hidden_size, config.intermediate_size
    embeddings = (V + config.max_position_embeddings + config.type_vocab_size) * E + 2 * E
    layer = 4 * (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H
    return embeddings + (E * H + H) + config.num_hidden_groups * config.inner_group_num * layer + (H * H + H)


# ---------------------------------------------------------------- ELECTRA: replaced-token detection


def rtd_labels(input_ids: torch.Tensor, corrupted_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Replaced-token detection labels (B, T): 1 where the token differs from the original, 0 where it
    equals it (a generator sample that happens to be the original counts as original, Clark et al.
    2020, section 2), ``IGNORE_INDEX`` (-100) at padding."""
    if input_ids.shape != corrupted_ids.shape or input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids, corrupted_ids and attention_mask must have one shape, got "
                         f"{tuple(input_ids.shape)}, {tuple(corrupted_ids.shape)}, {tuple(attention_mask.shape)}")
    labels = (corrupted_ids != input_ids).long()
    return labels.masked_fill(attention_mask == 0, IGNORE_INDEX)


def electra_loss(generator_loss: torch.Tensor, disc_logits: torch.Tensor, labels: torch.Tensor,
                 generator_weight: float = 50.0) -> dict[str, torch.Tensor]:
    """ELECTRA's loss ``generator_weight * L_MLM + L_disc``.

    ``L_disc``: binary cross-entropy of ``disc_logits`` (B, T) against :func:`rtd_labels`
    (B, T), averaged over the non-padding tokens (label != -100) only. Returns ``loss``,
    ``mlm_loss`` (the generator's) and ``rtd_loss``.
    """
    args.number("generator_weight", generator_weight, 0, float("inf"))
    if disc_logits.shape != labels.shape:
        raise ValueError(f"disc_logits {tuple(disc_logits.shape)} and labels {tuple(labels.shape)} must have one shape")
    real = labels != IGNORE_INDEX
    rtd = F.binary_cross_entropy_with_logits(disc_logits[real], labels[real].float())
    return {"loss": generator_weight * generator_loss + rtd, "mlm_loss": generator_loss, "rtd_loss": rtd}


class Electra(nn.Module):
    """A generator (``ElectraForMaskedLM``) and a discriminator (``ElectraForPreTraining``), embeddings shared.

    ``forward`` runs the generator on the masked input, samples a token at every masked position
    from its softmax (no gradient flows through the sample), puts the samples into the original
    text and returns the generator's MLM loss, the discriminator's logits and the RTD labels.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, sample_seed: int = 0):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        generator.electra.embeddings = discriminator.electra.embeddings  # shared token embeddings (paper, 3.2)
        generator.generator_lm_head.weight = discriminator.electra.embeddings.word_embeddings.weight
        self.sampler = torch.Generator().manual_seed(sample_seed)

    def forward(self, input_ids, attention_mask, token_type_ids, mlm_labels):
        chosen = mlm_labels != IGNORE_INDEX  # (B, T)
        logits = self.generator(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits
        gen_loss = mlm_loss(logits[chosen], mlm_labels[chosen])
        with torch.no_grad():
            probs = logits[chosen].float().softmax(-1).cpu()  # (N, V)
            samples = torch.multinomial(probs, 1, generator=self.sampler).squeeze(1).to(input_ids.device)
        original = torch.where(chosen, mlm_labels, input_ids)
        corrupted = original.masked_scatter(chosen, samples)
        disc = self.discriminator(input_ids=corrupted, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).logits  # (B, T)
        return {"mlm_loss": gen_loss, "disc_logits": disc, "rtd_labels": rtd_labels(original, corrupted, attention_mask)}


# ---------------------------------------------------------------- one module per variant, its loss, its cost


class Pretrainer(nn.Module):
    """One pre-training variant as a module ``fit`` can train: ``forward`` takes the batch's tensors.

    ``kind``: ``bert`` (BertForPreTraining: MLM + NSP), ``roberta`` (RobertaForMaskedLM: MLM),
    ``albert`` (AlbertForPreTraining: MLM + SOP), ``electra`` (:class:`Electra`), ``distilled``
    (a BertForMaskedLM student learning a frozen ``teacher``'s MLM distribution at temperature 2,
    mixed half and half with the labels: notebook 08's ``distill.kd_loss``). ``encoder`` is the encoder a
    downstream task uses (the discriminator's for ELECTRA).
    """

    def __init__(self, kind: str, model: nn.Module, teacher: nn.Module | None = None):
        super().__init__()
        args.one_of("kind", kind, KINDS)
        if (kind == "distilled") != (teacher is not None):
            raise ValueError("teacher must be given for kind='distilled' and only then")
        self.kind, self.model = kind, model
        self.teacher = [teacher.eval().requires_grad_(False)] if teacher is not None else None  # a list: not a submodule

    @property
    def encoder(self) -> nn.Module:
        m = self.model.discriminator if self.kind == "electra" else self.model
        return getattr(m, m.base_model_prefix)

    def forward(self, input_ids, attention_mask, token_type_ids, mlm_labels, pair_labels=None):
        if self.kind == "electra":
            return self.model(input_ids, attention_mask, token_type_ids, mlm_labels)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        mlm = out.logits if hasattr(out, "logits") else out.prediction_logits
        pair = getattr(out, "seq_relationship_logits", None)
        pair = getattr(out, "sop_logits", pair)
        result = {"mlm_logits": mlm, "pair_logits": pair}
        if self.teacher:
            with torch.no_grad():
                t = self.teacher[0](input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            result["teacher_logits"] = t.prediction_logits if hasattr(t, "prediction_logits") else t.logits
        return result


def variant_loss(outputs: dict, batch: dict, generator_weight: float = 50.0, temperature: float = 2.0,
                 alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """The loss of a :class:`Pretrainer`'s outputs (a ``loss_fn`` of ``fit``): MLM, + NSP/SOP, ELECTRA's, or KD."""
    if "disc_logits" in outputs:
        return electra_loss(outputs["mlm_loss"], outputs["disc_logits"], outputs["rtd_labels"], generator_weight)
    chosen = batch["mlm_labels"] != IGNORE_INDEX
    logits = outputs["mlm_logits"][chosen]  # (N, V)
    parts = {"mlm_loss": mlm_loss(logits, batch["mlm_labels"][chosen])}
    if "teacher_logits" in outputs:
        labels = batch["mlm_labels"][chosen]
        loss = distill.kd_loss(logits, outputs["teacher_logits"][chosen], labels, temperature=temperature, alpha=alpha)
        return {"loss": loss, **parts}
    if "pair_labels" in batch and outputs.get("pair_logits") is not None:
        parts["pair_loss"] = F.cross_entropy(outputs["pair_logits"], batch["pair_labels"])
    return {"loss": sum(parts.values()), **parts}


def flops_per_step(model: nn.Module, batch: dict) -> float:
    """Estimated training FLOPs of one step of ``model`` on ``batch``: every ``nn.Linear`` call counted.

    A matrix product of an (n, k) input with a (k, m) weight costs 2nkm; a call whose output
    needs a gradient costs three times that (forward, and the backward's two products), one
    without (a frozen teacher, under ``no_grad``) once. A shared layer counts each time it runs.
    Attention's score products (2T per token per layer and width) and element-wise work are
    left out, as in Kaplan et al.'s 6N estimate.
    """
    total = [0.0]

    def hook(module, inputs, output):
        n = inputs[0].numel() // module.in_features
        total[0] += 2.0 * n * module.in_features * module.out_features * (3 if output.requires_grad else 1)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    was = model.training
    try:
        model.train()
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids", "mlm_labels")}
        model(**inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return total[0]


def pretrain(model: Pretrainer, batches, steps: int, *, lr: float = 1e-3, seed: int = 0, progress: bool = True,
             generator_weight: float = 50.0) -> train.TrainResult:
    """``steps`` steps of ``model``'s pre-training objective with :func:`bertlab.train.fit` (AdamW,
    10% warm-up then linear decay, clipping at 1); ``batches``: a DataLoader of collated dicts, cycled."""
    args.positive_int("steps", steps)
    config = train.TrainConfig(lr=lr, max_steps=steps, patience=None, warmup_ratio=0.1, max_grad_norm=1.0,
                               weight_decay=0.01, seed=seed, eval_every=max(1, steps // 10))
    return train.fit(model, batches, config=config, loss_fn=lambda o, b: variant_loss(o, b, generator_weight),
                     progress=progress)


@torch.no_grad()
def encode_mean(encoder: nn.Module, tokenizer, texts: Sequence[str], max_length: int = 64,
                batch_size: int = 64) -> torch.Tensor:
    """Mean-pooled last hidden states (N, H) of a frozen ``encoder``: the features of a linear probe."""
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt", return_token_type_ids=True).to(device)
        h = encoder(**enc).last_hidden_state  # (B, T, H)
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        out.append(((h * m).sum(1) / m.sum(1)).cpu())
    return torch.cat(out)


class VariantCollator:
    """:class:`bertlab.pretraining.PretrainingCollator`'s batches (a new mask at every call: dynamic) for a
    :class:`Pretrainer`: NSP or SOP labels as ``pair_labels``, ``masked_positions`` dropped."""

    def __init__(self, tokenizer, max_length: int = 64, seed: int = 0, mlm_probability: float = 0.15):
        from bertlab.pretraining import PretrainingCollator

        self.collator = PretrainingCollator(tokenizer, mlm_probability=mlm_probability, seed=seed, max_length=max_length)

    def __call__(self, examples) -> dict[str, torch.Tensor]:
        batch = self.collator(examples)
        batch.pop("masked_positions")
        if "nsp_labels" in batch:
            batch["pair_labels"] = batch.pop("nsp_labels")
        return batch
