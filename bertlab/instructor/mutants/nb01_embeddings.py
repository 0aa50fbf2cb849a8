"""Mutants of 01-embeddings (see bertlab/instructor/mutants/__init__.py)."""
from bertlab.instructor.mutants import edit

SUM_HEAD = '''def sum_embeddings(input_ids, token_type_ids, W_word, W_pos, W_type):
    """e[b, t] = W_word[input_ids[b, t]] + W_pos[t] + W_type[token_type_ids[b, t]]: (B, T) ids -> (B, T, H)."""
'''

POSITIONS = "positions = torch.arange(T, device=input_ids.device)  # (T,)"
RETURN = "return W_word[input_ids] + W_pos[positions] + W_type[token_type_ids]"
DROPOUT = "self.dropout = nn.Dropout(config.hidden_dropout_prob)"
FORWARD_RETURN = "return self.dropout(self.LayerNorm(e))  # (B, T, H)"

MUTANTS = {
    "sum_embeddings": {
        # positions 1..T: an off-by-one
        "positions from 1": edit((POSITIONS, "positions = torch.arange(1, T + 1, device=input_ids.device)")),
        # positions counted over the flattened batch: sequence 1 starts where sequence 0 ended
        "positions over the batch": edit((POSITIONS, "positions = torch.arange(input_ids.numel()).view_as(input_ids)")),
        # the segment table is forgotten
        "no segment embeddings": edit((RETURN, "return W_word[input_ids] + W_pos[positions]")),
        # T taken from the batch axis
        "T from axis 0": edit(("T = input_ids.shape[1]", "T = input_ids.shape[0]")),
        # padding positions zeroed, although every position gets its embeddings
        "zeroes the padding": edit((RETURN, RETURN + " * (input_ids != 0).unsqueeze(-1)")),
        # the tables used under no_grad: no gradient reaches them
        "no gradient to the tables": edit((RETURN, "with torch.no_grad():\n        " + RETURN)),
    },
    "Embeddings": {
        # dropout before the LayerNorm
        "dropout before LayerNorm": edit((FORWARD_RETURN, "return self.LayerNorm(self.dropout(e))")),
        # no dropout at all
        "no dropout": edit((FORWARD_RETURN, "return self.LayerNorm(e)")),
        # PyTorch's default eps (1e-5) instead of the config's
        "default LayerNorm eps": edit(("nn.LayerNorm(H, eps=config.layer_norm_eps)", "nn.LayerNorm(H)")),
        # BERT's usual dropout rate typed in
        "dropout 0.1 hard-coded": edit((DROPOUT, "self.dropout = nn.Dropout(0.1)")),
        # the shipped checkpoint's sizes typed in: 512 positions, 2 segments
        "checkpoint sizes hard-coded": edit(
            ("nn.Embedding(config.max_position_embeddings, H)", "nn.Embedding(512, H)"),
            ("nn.Embedding(config.type_vocab_size, H)", "nn.Embedding(2, H)")),
        # the [PAD] id of the shipped tokenizer typed in
        "padding_idx 0": edit(("padding_idx=config.pad_token_id", "padding_idx=0")),
        # without token_type_ids, segment 1 instead of 0
        "default segment 1": edit(("token_type_ids = torch.zeros_like(input_ids)",
                                   "token_type_ids = torch.ones_like(input_ids)")),
        # functional dropout that ignores the module's mode: on in eval mode too
        "dropout always on": edit((FORWARD_RETURN, "return F.dropout(self.LayerNorm(e), self.dropout.p)")),
    },
}

ALTERNATIVES = {
    "sum_embeddings": {
        "F.embedding, positions by cumsum": SUM_HEAD + (
            "    positions = torch.ones_like(input_ids).cumsum(dim=1) - 1  # (B, T): 0..T-1 in every row\n"
            "    return F.embedding(input_ids, W_word) + F.embedding(positions, W_pos) + F.embedding(token_type_ids, W_type)\n"),
        "one sequence at a time": SUM_HEAD + (
            "    rows = []\n"
            "    for ids, seg in zip(input_ids, token_type_ids):\n"
            "        rows.append(torch.stack([W_word[i] + W_pos[t] + W_type[s] for t, (i, s) in enumerate(zip(ids, seg))]))\n"
            "    return torch.stack(rows)\n"),
    },
    "Embeddings": {
        "modules called directly": edit(
            ("""        e = sum_embeddings(input_ids, token_type_ids, self.word_embeddings.weight,
                           self.position_embeddings.weight, self.token_type_embeddings.weight)  # (B, T, H)""",
             """        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        e = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)""")),
        "functional dropout with the module's mode": edit(
            (FORWARD_RETURN, "return F.dropout(self.LayerNorm(e), self.dropout.p, training=self.training)")),
    },
}
