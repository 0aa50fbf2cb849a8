"""Fine-tune and evaluate a tiny BERT with ``bertlab.train.fit``; run by tests/test_multiprocess.py.

    accelerate launch --cpu --num_processes 2 tests/multiprocess_fit.py OUT.json
    python tests/multiprocess_fit.py OUT.json      # the same on one process

The same global batch on any number of processes (fit's accelerator splits each batch among
them). Dropout is off, so one process and two compute the same thing. The main process
writes the step losses, the validation rows and an evaluation over 7 reports (uneven: 4 and
3 per batch of 4, so accelerate pads the last batch with copies) to OUT.json.
"""
from __future__ import annotations

import json
import sys

import torch

from bertlab import env, evaluation, train
from bertlab.data import FAILURE_TYPES, make_splits
from bertlab.model import BertConfig, BertModel
from bertlab.pretrained import load_tokenizer


def tiny_classifier(vocab_size: int) -> train.SequenceClassifier:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return train.SequenceClassifier(BertModel(cfg), len(FAILURE_TYPES), dropout=0.0)


def main(out_path: str) -> None:
    tokenizer = load_tokenizer()
    splits = make_splits("A", n_train=64, n_val=7, n_test=0, seed=0)
    ids = {name: i for i, name in enumerate(FAILURE_TYPES)}

    def data(reports):
        return train.encode(tokenizer, [r.text for r in reports], [ids[r.failure_type] for r in reports], max_length=48)

    train_data, val_data = data(splits.train), data(splits.validation)
    accelerator = env.make_accelerator("no", device="cpu")
    model = tiny_classifier(len(tokenizer))
    config = train.TrainConfig(lr=2e-3, epochs=2, batch_size=8, eval_batch_size=4, patience=None, seed=0,
                               mixed_precision="no", log_every=3)
    result = train.fit(model, train_data, val_data, config, progress=False, accelerator=accelerator)
    outputs, batch, loss = evaluation.collect_outputs(accelerator.prepare(model), val_data, batch_size=4,
                                                      accelerator=accelerator, loss_fn=train.cross_entropy)
    local = train.evaluate(model, val_data, batch_size=4)  # this process alone, over all 7 reports
    if accelerator.is_main_process:
        with open(out_path, "w") as fh:
            json.dump({"processes": accelerator.num_processes,
                       "steps": [s["loss"] for s in result.steps], "history": result.history,
                       "evaluation": {"loss": loss, "reports": len(batch["index"]),
                                      "index": sorted(batch["index"].tolist())},
                       "one_process_evaluation": local}, fh)


if __name__ == "__main__":
    main(sys.argv[1])
