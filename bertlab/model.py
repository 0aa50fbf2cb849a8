"""A from-scratch BERT encoder in plain torch (notebooks 01-03).

The module and parameter names follow Hugging Face's ``BertModel``, so the
shipped checkpoint loads with ``load_state_dict(..., strict=True)`` and the
outputs equal ``transformers.BertModel`` (tests/test_model.py checks both).
The names that look odd (``LayerNorm``, ``attention.self``, ``output``) are
there for that reason only.

Shapes: B batch, T sequence length, H hidden size, nh heads, hs = H // nh
head size, I intermediate size, V vocabulary size, N masked positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bertlab import args
from bertlab.pretrained import checkpoint_config, drop_legacy_buffers, load_checkpoint_state_dict, model_name_or_dir

_ENCODER_PARTS = ("embeddings", "encoder", "pooler")


@dataclass
class BertConfig:
    """Sizes of a BERT; the defaults are the shipped all-MiniLM-L6-v2. Bad values raise at construction."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02  # std of the normal init of fresh weights

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                if not args.is_int(value):
                    raise TypeError(f"BertConfig.{f.name} must be an int, got {value!r}")
                low = 0 if f.name == "pad_token_id" else 1
                if value < low:
                    raise ValueError(f"BertConfig.{f.name} must be >= {low}, got {value}")
            elif not args.is_real(value):
                raise TypeError(f"BertConfig.{f.name} must be a float, got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads}): each head gets hidden_size // num_attention_heads dims"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.layer_norm_eps <= 0 or self.initializer_range <= 0:
            raise ValueError("BertConfig.layer_norm_eps and initializer_range must be > 0")
        if self.pad_token_id >= self.vocab_size:
            raise ValueError(f"BertConfig.pad_token_id ({self.pad_token_id}) must be < vocab_size ({self.vocab_size})")

    @classmethod
    def from_pretrained(cls, folder_or_name: str | Path | None = None) -> "BertConfig":
        """The config of a checkpoint (default: the shipped one, or ``$BERTLAB_MODEL``).

        Reads its config.json; keys this model does not use are ignored. Raises
        ValueError for an architecture this BERT cannot reproduce (another
        activation than exact GELU, relative positions, a non-BERT model).
        """
        target = model_name_or_dir(folder_or_name)
        raw = checkpoint_config(target)
        checks = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
        for key, expected in checks.items():
            if raw.get(key, expected) != expected:
                raise ValueError(
                    f"{target}: config.json has {key}={raw[key]!r}; this from-scratch BERT implements "
                    f"only {key}={expected!r}"
                )
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


def extended_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive mask (B, 1, 1, T) from a (B, T) padding mask (1 real token, 0 padding).

    0 where a key may be attended to, the most negative ``dtype`` value where it
    is padding, so ``scores + mask`` broadcasts over heads and queries (B, nh, T, T)
    and softmax gives padding keys weight 0.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must have shape (B, T), got {tuple(attention_mask.shape)}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating point dtype, got {dtype}")
    keep = attention_mask[:, None, None, :].to(dtype)  # (B, 1, 1, T)
    return (1.0 - keep) * torch.finfo(dtype).min  # (B, 1, 1, T)


def scaled_dot_product_attention(q, k, v, mask=None, dropout: nn.Module | None = None):
    """softmax(q k^T / sqrt(d_k) + mask) v for q, k, v of shape (B, nh, T, hs).

    ``mask`` is additive and broadcastable to (B, nh, T, T), e.g. from
    :func:`extended_attention_mask`. ``dropout`` (a module) is applied to the
    attention probabilities. Returns (B, nh, T, hs).
    """
    d_k = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (B, nh, T, T)
    if mask is not None:
        scores = scores + mask
    probs = scores.softmax(dim=-1)  # (B, nh, T, T): each query's weights over the keys sum to 1
    if dropout is not None:
        probs = dropout(probs)
    return probs @ v  # (B, nh, T, hs)


class BertEmbeddings(nn.Module):
    """LayerNorm(word + position + token_type embeddings), then dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # Checkpoints saved by transformers < 4.31 also store position_ids (just arange(512));
        # we compute positions in forward, so drop that key instead of failing a strict load.
        self.register_load_state_dict_pre_hook(drop_legacy_buffers)

    def forward(self, input_ids, token_type_ids):
        T = input_ids.size(1)
        pos = torch.arange(T, device=input_ids.device)  # (T,)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)  # (B, T, H)
        x = x + self.token_type_embeddings(token_type_ids)  # the segment: (B, T, H)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head self-attention: project to q, k, v, split heads, attend, merge heads."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.n_head = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def split_heads(self, x):
        B, T, H = x.shape
        return x.view(B, T, self.n_head, H // self.n_head).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, x, mask=None):
        B, T, H = x.shape
        q, k, v = self.split_heads(self.query(x)), self.split_heads(self.key(x)), self.split_heads(self.value(x))
        y = scaled_dot_product_attention(q, k, v, mask, self.dropout)  # (B, nh, T, hs)
        return y.transpose(1, 2).reshape(B, T, H)  # (B, T, H): heads side by side again


class BertAddNorm(nn.Module):
    """LayerNorm(residual + dropout(dense(x))): the "Add & Norm" after attention and after the FFN."""

    def __init__(self, in_features: int, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, residual):
        return self.LayerNorm(residual + self.dropout(self.dense(x)))  # (B, T, H)


class BertAttention(nn.Module):
    """Self-attention followed by its Add & Norm (``attention.self``, ``attention.output``)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertAddNorm(config.hidden_size, config)

    def forward(self, x, mask=None):
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    """First half of the position-wise FFN: GELU(dense(x)), H -> I."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x):
        return F.gelu(self.dense(x))  # (B, T, I); exact (erf) GELU, as the checkpoint's "gelu"


class BertLayer(nn.Module):
    """One encoder layer: attention + Add & Norm, then FFN + Add & Norm (post-LN, as in BERT)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertAddNorm(config.intermediate_size, config)

    def forward(self, x, mask=None):
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)  # (B, T, H)


class BertEncoder(nn.Module):
    """A stack of ``num_hidden_layers`` BertLayers."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, x, mask=None):
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertPooler(nn.Module):
    """tanh(dense(hidden state of [CLS])): the sentence vector the NSP head reads."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x):
        return torch.tanh(self.dense(x[:, 0]))  # (B, H)


class BertModel(nn.Module):
    """The BERT encoder: embeddings, encoder stack, pooler.

    ``forward(input_ids, attention_mask=None, token_type_ids=None)`` takes
    LongTensors (B, T) and returns ``(last_hidden_state (B, T, H), pooled (B, H))``.
    ``attention_mask`` is 1 for real tokens and 0 for padding (default: all 1);
    ``token_type_ids`` is the segment, 0 or 1 (default: all 0).
    Raises ValueError/TypeError naming the argument on bad shapes or dtypes, and on
    ids out of range when they are on the CPU.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a bertlab.model.BertConfig, got {type(config).__name__}")
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.apply(lambda m: _init_weights(m, config))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        attention_mask, token_type_ids = self._check_inputs(input_ids, attention_mask, token_type_ids)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        mask = extended_attention_mask(attention_mask, x.dtype)  # (B, 1, 1, T)
        x = self.encoder(x, mask)  # (B, T, H)
        return x, self.pooler(x)

    def _check_inputs(self, input_ids, attention_mask, token_type_ids):
        c = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a LongTensor of shape (B, T), got {shape}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        B, T = input_ids.shape
        if T == 0 or T > c.max_position_embeddings:
            raise ValueError(f"input_ids has length T={T}; it must be 1..max_position_embeddings ({c.max_position_embeddings})")
        # The range checks copy the ids' min and max to the host: free on a CPU, but on a GPU a
        # sync at every forward pass; there the embedding lookup raises on a bad id anyway.
        on_cpu = input_ids.device.type == "cpu"
        if on_cpu:
            args.indices("input_ids", input_ids, c.vocab_size, "vocab_size")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must have the shape of input_ids {(B, T)}, got {tuple(attention_mask.shape)}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        elif token_type_ids.shape != input_ids.shape:
            raise ValueError(f"token_type_ids must have the shape of input_ids {(B, T)}, got {tuple(token_type_ids.shape)}")
        elif on_cpu:
            args.indices("token_type_ids", token_type_ids, c.type_vocab_size, "type_vocab_size")
        return attention_mask, token_type_ids

    @classmethod
    def from_pretrained(cls, name: str | Path | None = None) -> "BertModel":
        """This model with a checkpoint's weights (default: the shipped all-MiniLM-L6-v2), in eval mode.

        Loads with ``strict=True``: every tensor of the checkpoint's encoder and
        pooler must have a parameter of the same name and shape here.
        """
        model = cls(BertConfig.from_pretrained(name))
        state = {k: v for k, v in load_checkpoint_state_dict(name).items() if k.split(".")[0] in _ENCODER_PARTS}
        model.load_state_dict(state, strict=True)
        return model.eval()


class BertHeadTransform(nn.Module):
    """LayerNorm(GELU(dense(x))): the MLM head's transform before the vocabulary projection."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(F.gelu(self.dense(x)))


class BertMLMHead(nn.Module):
    """Token scores over the vocabulary: transform, then x @ E^T + b with E the word embeddings (tied)."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = BertHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight  # tied: one (V, H) matrix reads and writes tokens
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias  # the same tensor under HF's second name, cls.predictions.decoder.bias

    def forward(self, x):
        return self.decoder(self.transform(x))  # (..., V)


class BertPreTrainingHeads(nn.Module):
    """The MLM head (``predictions``) and the NSP head (``seq_relationship``, 2 classes)."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = BertMLMHead(config, word_embeddings)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


class BertForPreTraining(nn.Module):
    """BERT with its two pre-training heads: masked LM and next sentence prediction.

    ``forward(input_ids, attention_mask=None, token_type_ids=None, masked_positions=None)``
    returns ``(mlm_logits, nsp_logits)``. nsp_logits is (B, 2), class 0 = IsNext,
    1 = NotNext. mlm_logits is (B, T, V) when ``masked_positions`` is None; with
    a BoolTensor (B, T) it is (N, V) for the N True positions in row-major order
    (the order of ``labels[masked_positions]``), which skips the (V x H)
    projection everywhere else: most of the compute of a small BERT.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config, self.bert.embeddings.word_embeddings)
        # Not self.cls.apply: that would re-init the tied word embeddings through the decoder.
        for head in (self.cls.predictions.transform, self.cls.seq_relationship):
            head.apply(lambda m: _init_weights(m, config))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, masked_positions=None):
        x, pooled = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, H), (B, H)
        if masked_positions is not None:
            if masked_positions.shape != input_ids.shape or masked_positions.dtype != torch.bool:
                raise ValueError(
                    f"masked_positions must be a BoolTensor shaped like input_ids {tuple(input_ids.shape)}, "
                    f"got {masked_positions.dtype} {tuple(masked_positions.shape)}"
                )
            x = x[masked_positions]  # (N, H)
        return self.cls.predictions(x), self.cls.seq_relationship(pooled)  # (B, T, V) or (N, V); (B, 2)

    @classmethod
    def from_pretrained(cls, name: str | Path | None = None) -> "BertForPreTraining":
        """Encoder and pooler from a checkpoint; the heads from it too when it has them, else fresh.

        The shipped all-MiniLM-L6-v2 has no MLM/NSP head, so both heads start
        from a random init and must be trained. Returned in train mode.
        """
        model = cls(BertConfig.from_pretrained(name))
        state = {k if k.startswith("cls.") else "bert." + k: v for k, v in load_checkpoint_state_dict(name).items()
                 if k.startswith("cls.") or k.split(".")[0] in _ENCODER_PARTS}  # the heads keep their names
        missing, unexpected = model.load_state_dict(state, strict=False)
        not_heads = [k for k in missing if not k.startswith("cls.")]
        if unexpected or not_heads:
            raise RuntimeError(f"checkpoint does not fit BertForPreTraining: missing {not_heads}, unexpected {unexpected}")
        return model


def _init_weights(module: nn.Module, config: BertConfig):
    """BERT's init: normal(0, initializer_range) weights, zero biases, LayerNorm = identity."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=config.initializer_range)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=config.initializer_range)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
