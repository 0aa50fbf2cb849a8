"""Mutants of 02-encoder (see bertlab/instructor/mutants/__init__.py)."""
from bertlab.instructor.mutants import edit

ATT_HEAD = '''def attention(q, k, v, mask=None, dropout=None):
    """softmax(q k^T / sqrt(d_k) + mask) v over the keys: returns (output (..., T_q, d_v), weights (..., T_q, T_k))."""
'''
SCORES = "scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., T_q, T_k)"
SOFTMAX = "weights = scores.softmax(dim=-1)  # over the keys: each query's weights sum to 1"
ATT_DROPOUT = """    if dropout is not None:
        weights = dropout(weights)
    return weights @ v, weights  # (..., T_q, d_v), (..., T_q, T_k)"""

SPLIT = "return x.view(B, T, n_head, H // n_head).transpose(1, 2)  # (B, nh, T, d_k)"
MERGE = "return x.transpose(1, 2).reshape(B, T, nh * d_k)  # (B, T, H)"

ADDNORM = "return self.LayerNorm(residual + self.dropout(self.dense(y)))  # (B, T, H)"
HEADS = "heads, _ = attention(Q, K, V, mask, self.dropout)  # (B, nh, T, d_k)"
GELU = "return F.gelu(self.dense(A))  # (B, T, I), exact GELU"
LAYER = "return self.output(self.intermediate(A), A)  # (B, T, H)"

LOOP = """        for layer in self.layer:
            X = layer(X, mask)  # (B, T, H)
        return X"""
EXT = "M = extended_attention_mask(attention_mask, X.dtype)  # (B, 1, 1, T)"

MUTANTS = {
    "attention": {
        # the softmax runs over the queries
        "softmax over the queries": edit((SOFTMAX, "weights = scores.softmax(dim=-2)")),
        # divided by d_k, not its square root
        "scaled by d_k": edit((SCORES, "scores = q @ k.transpose(-2, -1) / d_k")),
        # BERT-base's head size typed in: sqrt(64) = 8
        "d_k = 64 hard-coded": edit(("d_k = q.shape[-1]", "d_k = 64")),
        # the mask applied after the softmax: padding zeroed, weights no longer sum to 1
        "mask after the softmax": edit(
            ("""    if mask is not None:
        scores = scores + mask
    """ + SOFTMAX, """    weights = scores.softmax(dim=-1)
    if mask is not None:
        weights = weights.masked_fill(mask < 0, 0.0)""")),
        # q scaled in place: the caller's tensor changes
        "scales q in place": edit((SCORES, "q /= math.sqrt(d_k)\n    scores = q @ k.transpose(-2, -1)")),
        # dropout used, but the weights before it are returned
        "returns the weights before dropout": edit(
            (ATT_DROPOUT, """    dropped = dropout(weights) if dropout is not None else weights
    return dropped @ v, weights""")),
        # dropout on the output instead of the weights
        "dropout on the output": edit(
            (ATT_DROPOUT, """    out = weights @ v
    if dropout is not None:
        out = dropout(out)
    return out, weights""")),
    },
    "heads": {
        # the plain view the exercise warns about: tokens and heads mixed up
        "plain view": edit((SPLIT, "return x.view(B, n_head, T, H // n_head)")),
        # merge without moving the head axis back
        "merge without transpose": edit((MERGE, "return x.reshape(B, T, nh * d_k)")),
        # heads interleaved: feature j goes to head j % n_head
        "interleaved heads": edit((SPLIT, "return x.view(B, T, H // n_head, n_head).permute(0, 3, 1, 2)")),
        # merge puts the features of a head last: (T, d_k, nh) order
        "merge in the wrong order": edit((MERGE, "return x.permute(0, 2, 3, 1).reshape(B, T, nh * d_k)")),
        # split along the tokens
        "chunks along T": edit((SPLIT, "return torch.stack(x.chunk(n_head, dim=1), dim=1).reshape(B, n_head, T, H // n_head)")),
    },
    "EncoderLayer": {
        # no residual connection
        "no residual": edit((ADDNORM, "return self.LayerNorm(self.dropout(self.dense(y)))")),
        # dropout after the LayerNorm
        "dropout after LayerNorm": edit((ADDNORM, "return self.dropout(self.LayerNorm(residual + self.dense(y)))")),
        # dropout on the sum, residual included
        "dropout on the residual sum": edit((ADDNORM, "return self.LayerNorm(self.dropout(residual + self.dense(y)))")),
        # no dropout on the attention weights
        "no attention dropout": edit((HEADS, "heads, _ = attention(Q, K, V, mask)")),
        # the tanh approximation of GELU
        "tanh GELU": edit((GELU, "return F.gelu(self.dense(A), approximate='tanh')")),
        # the shipped checkpoint's 12 heads typed in
        "12 heads hard-coded": edit(
            ("Q = split_heads(self.query(X), self.n_head)", "Q = split_heads(self.query(X), 12)"),
            ("K = split_heads(self.key(X), self.n_head)", "K = split_heads(self.key(X), 12)"),
            ("V = split_heads(self.value(X), self.n_head)", "V = split_heads(self.value(X), 12)")),
        # the feed-forward residual taken from X instead of A
        "FFN residual from X": edit(("A = self.attention(X, mask)  # (B, T, H)\n        " + LAYER,
                                     "A = self.attention(X, mask)  # (B, T, H)\n        return self.output(self.intermediate(A), X)")),
        # functional dropout that ignores eval mode
        "dropout always on": edit((ADDNORM, "return self.LayerNorm(residual + F.dropout(self.dense(y), self.dropout.p))")),
    },
    "MiniBert": {
        # the layers run top-down
        "layers in reverse": edit((LOOP, """        for layer in reversed(self.layer):
            X = layer(X, mask)
        return X""")),
        # every layer reads the embeddings, only the last one's output is kept
        "layers not chained": edit((LOOP, """        out = X
        for layer in self.layer:
            out = layer(X, mask)
        return out""")),
        # the 0/1 mask passed as if it were M
        "0/1 mask as M": edit((EXT, "M = attention_mask[:, None, None, :].to(X.dtype)")),
        # without attention_mask, every token is treated as padding
        "default mask zeros": edit(("attention_mask = torch.ones_like(input_ids)", "attention_mask = torch.zeros_like(input_ids)")),
        # the shipped checkpoint's 6 layers typed in (fine on shallower models)
        "6 layers hard-coded": edit((LOOP, """        for layer in self.layer[:6]:
            X = layer(X, mask)
        return X""")),
        # segment ids never reach the embeddings
        "token_type_ids dropped": edit(("X = self.embeddings(input_ids, token_type_ids)", "X = self.embeddings(input_ids)")),
    },
}

ALTERNATIVES = {
    "attention": {
        "einsum, scale on q": ATT_HEAD + (
            "    scores = torch.einsum('...qd,...kd->...qk', q * q.shape[-1] ** -0.5, k)\n"
            "    if mask is not None:\n"
            "        scores = scores + mask\n"
            "    weights = F.softmax(scores, dim=-1)\n"
            "    if dropout is not None:\n"
            "        weights = dropout(weights)\n"
            "    return torch.matmul(weights, v), weights\n"),
    },
    "heads": {
        "reshape and permute, split by chunks": edit(
            (SPLIT, "return x.reshape(B, T, n_head, -1).permute(0, 2, 1, 3)"),
            (MERGE, "return torch.cat(x.unbind(dim=1), dim=-1)")),
    },
    "EncoderLayer": {
        "functional dropout with the module's mode, HF-style names": edit(
            (ADDNORM, "h = F.dropout(self.dense(y), p=self.dropout.p, training=self.training)\n"
                      "        return self.LayerNorm(h + residual)"),
            (GELU, "return 0.5 * self.dense(A) * (1.0 + torch.erf(self.dense(A) / math.sqrt(2.0)))")),
    },
    "MiniBert": {
        "mask by hand, reduce over layers": edit(
            (EXT, "M = (1.0 - attention_mask[:, None, None, :].to(X.dtype)) * torch.finfo(X.dtype).min"),
            (LOOP, """        import functools
        return functools.reduce(lambda h, layer: layer(h, mask), self.layer, X)""")),
    },
}
