"""Fine-tuning throughput: dynamic padding, training only the used embedding rows; the wall time of notebooks 04 and 05.

    .venv/bin/python benchmarks/finetune.py [--reports 192] [--rounds 2] [--no-notebooks]

Fine-tunes the shipped checkpoint on fab A's failure types with ``bertlab.train.fit`` in
four ways, measured in one run, round-robin (the machine's speed drifts over minutes):

- fixed:   every batch padded to max_length (128) tokens
- dynamic: each batch padded to its longest report, batches drawn at random
- grouped: dynamic padding, batches of reports of similar length (fit's default)
- rows:    grouped, and only the word-embedding rows the reports use are trained
           (``TrainConfig.used_embedding_rows_only``, opt-in)

Then it runs the solution notebooks 04 and 05 top to bottom in fresh kernels (as a
learner would; cached models are reused, as for a learner running them again).
The last line printed is JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bertlab import env, pretrained, train  # noqa: E402
from bertlab.data import FAILURE_TYPES, make_splits  # noqa: E402
from bertlab.instructor import course  # noqa: E402

MAX_LENGTH = 128


def padding_ratio(data: train.TextDataset, batches: list[list[int]]) -> float:
    """Tokens computed (padding included) per real token."""
    lengths = data.lengths()
    computed = sum(len(b) * (data.pad_to or max(lengths[i] for i in b)) for b in batches)
    return computed / sum(lengths)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=192, help="training reports per measurement (default 192)")
    parser.add_argument("--rounds", type=int, default=2, help="round-robin repetitions (default 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-notebooks", action="store_true", help="skip running notebooks 04 and 05")
    args = parser.parse_args(argv)

    device = env.setup(seed=0)
    tokenizer = pretrained.load_tokenizer()
    reports = make_splits("A", n_train=args.reports, n_val=0, n_test=0).train
    ids = {name: i for i, name in enumerate(FAILURE_TYPES)}
    data = train.encode(tokenizer, [r.text for r in reports], [ids[r.failure_type] for r in reports],
                        max_length=MAX_LENGTH, num_labels=len(FAILURE_TYPES))
    variants = {  # name: (data, group_by_length, used_embedding_rows_only)
        "fixed": (data.with_padding(MAX_LENGTH), False, False),
        "dynamic": (data, False, False),
        "grouped": (data, True, False),
        "rows": (data, True, True),
    }
    model = train.SequenceClassifier(pretrained.load_encoder(), len(FAILURE_TYPES))
    speeds = {name: [] for name in variants}
    ratios = {}
    print(f"device: {env.describe_device(device)}; {len(data)} reports, mean {statistics.mean(data.lengths()):.0f} "
          f"tokens (max_length {MAX_LENGTH}), batch {args.batch_size}", flush=True)
    for rnd in range(args.rounds):
        for name, (d, grouped, rows) in variants.items():
            cfg = train.TrainConfig(epochs=1, batch_size=args.batch_size, group_by_length=grouped,
                                    used_embedding_rows_only=rows, seed=rnd)
            loader = train.make_loader(d, args.batch_size, shuffle=True, seed=rnd, group_by_length=grouped)
            ratios[name] = padding_ratio(d, [b["index"].tolist() for b in loader])
            result = train.fit(model, d, None, cfg, progress=False)
            speeds[name].append(result.examples_per_second)
            print(f"round {rnd + 1}  {name:<8} {result.examples_per_second:6.1f} reports/s  "
                  f"({ratios[name]:.2f} tokens computed per real token)", flush=True)

    summary = {name: round(statistics.median(v), 2) for name, v in speeds.items()}
    print("\nfine-tuning throughput (median over rounds)")
    for name, v in summary.items():
        print(f"  {name:<8} {v:6.1f} reports/s  x{v / summary['fixed']:.2f} vs fixed  "
              f"padding {ratios[name]:.2f} tokens per real token")

    walls = {}
    if not args.no_notebooks:
        for name in ("04-finetuning", "05-baselines"):
            path = ROOT / "solutions" / name / f"{name}.ipynb"
            r = course.run_notebook(path, timeout=900)
            walls[name] = round(r.seconds, 1)
            print(f"{name}: {r.seconds:.1f} s {'ok' if r.ok else 'FAILED: ' + r.error}", flush=True)

    out = {"reports_per_second": summary, "speedup_dynamic_vs_fixed": round(summary["dynamic"] / summary["fixed"], 3),
           "speedup_grouped_vs_fixed": round(summary["grouped"] / summary["fixed"], 3),
           "speedup_rows_vs_grouped": round(summary["rows"] / summary["grouped"], 3),
           "padding_ratio": {k: round(v, 3) for k, v in ratios.items()}, "notebook_seconds": walls,
           "reports": len(data), "batch_size": args.batch_size, "max_length": MAX_LENGTH, "device": str(device),
           "threads": __import__("torch").get_num_threads(), "machine": platform.processor() or platform.machine(),
           "when": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
