"""Deployment benchmark: the fp32 teacher against smaller, faster variants, measured in one run.

    .venv/bin/python benchmarks/deploy.py [--threads 2] [--latency-reports 200] [--student transfer] [--quick]

Variants (bertlab.benchmark.course_variants): the fine-tuned teacher in fp32 and with PyTorch
dynamic INT8; a distilled student (bertlab.artifacts.distilled_student) in fp32, PyTorch INT8,
ONNX Runtime fp32 and ONNX Runtime INT8, and ORT INT8 with its vocabulary trimmed to the
WordPieces of the training reports and the domain corpus.

The student here is not notebook 08's but the one `bertlab export` serves
(bertlab.artifacts.SERVED_STUDENT): 2 of the teacher's layers, [0, 3],
trained for 3 epochs on the 1,000 labelled reports and 4,000 more reports of the fab
without their labels (the teacher's logits as soft targets and its answers as labels).
Notebook 08 cannot afford that on a CPU (about 7.5 minutes, against 1.5 for its students).
It is trained once and cached; the seconds it took are printed and in the JSON.
--student notebook benchmarks notebook 08's own student (3 layers, labelled reports only).

Each variant is timed in its own process with the same number of threads (torch intra-op
threads = ORT intra_op_num_threads = --threads). Latency: batch 1, model only (tokenization
excluded), over the first --latency-reports test reports after 20 warm-up calls.
Throughput: batch 32 over all test reports, which also gives the accuracy.

Prints the table, then as the last line JSON: the best deployed variant (largest
min(p50 speed-up, size reduction) among those within 1 accuracy point of the teacher) and
its ratios to the fp32 teacher, and whether the issue's target (>= 6x lower p50, >= 6x
smaller, accuracy within 1 point) is met.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET = {"p50_ratio": 6.0, "size_ratio": 6.0, "max_accuracy_drop_points": 1.0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and ONNX Runtime (default 2)")
    parser.add_argument("--latency-reports", type=int, default=200, help="reports timed at batch 1 (default 200)")
    parser.add_argument("--student", choices=["transfer", "notebook"], default="transfer",
                        help="transfer (default): artifacts.SERVED_STUDENT, 2 layers distilled on 4,000 more unlabelled reports; "
                             "notebook: notebook 08's student")
    parser.add_argument("--quick", action="store_true", help="tiny models (bertlab.artifacts.QUICK): a smoke test, "
                                                              "numbers not meaningful")
    args = parser.parse_args(argv)

    import pandas as pd

    from bertlab import artifacts, benchmark, deploy, env
    from bertlab.data import make_splits

    env.setup(seed=0, device="cpu")  # deployment is on a CPU
    deploy.set_threads(args.threads)
    quick = artifacts.QUICK if args.quick else {}
    start = time.perf_counter()
    settings = dict(artifacts.SERVED_STUDENT) if args.student == "transfer" else {}
    if args.quick:
        settings.update(artifacts.DISTILL_QUICK, **({"transfer": 32} if settings else {}))
    student, tokenizer, info = artifacts.distilled_student(teacher_overrides=quick, **settings)
    teacher, _, tinfo = artifacts.finetuned_classifier(**quick)
    teacher, student = teacher.cpu().eval(), student.cpu().eval()
    splits = make_splits(**tinfo["splits"])
    label_id = {n: i for i, n in enumerate(tinfo["label_names"])}
    max_length = tinfo["config"]["max_length"]
    test_ids = tokenizer([r.text for r in splits.test], truncation=True, max_length=max_length)["input_ids"]
    test_y = [label_id[r.failure_type] for r in splits.test]
    keep = artifacts.deployment_vocabulary(tokenizer, tinfo)
    trained = "from the cache" if info["cached"] else "trained now"
    student_settings = info["settings"]
    print(f"teacher and student ready in {time.perf_counter() - start:.0f} s; student: layers {student_settings['layers']}, "
          f"{tinfo['splits']['n_train']} labelled + {student_settings['transfer']} unlabelled reports, "
          f"{student_settings['epochs']} epochs, {info['build_seconds'] or 0:.0f} s to build: "
          f"teacher logits and training ({trained}); "
          f"{len(keep)} WordPieces kept for the trimmed vocabulary", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        variants = benchmark.course_variants(teacher, student, folder, keep_ids=keep, tokenizer=tokenizer,
                                          label_names=tinfo["label_names"], max_length=max_length)
        bench = benchmark.Benchmark(test_ids, test_y, threads=args.threads, n_latency=args.latency_reports)
        table = bench.run(variants)
    pd.set_option("display.width", 200)
    print(f"\n{len(test_y)} test reports of fab {tinfo['splits']['fab']}; {args.threads} threads; "
          f"{platform.processor() or platform.machine()}")
    print(table.round(3).to_string())
    best = benchmark.best_variant(table, max_accuracy_drop=TARGET["max_accuracy_drop_points"])
    best["target_met"] = None if args.quick else bool(best["within_accuracy"] and best["p50_ratio"] >= TARGET["p50_ratio"]
                              and best["size_ratio"] >= TARGET["size_ratio"])
    best["threads"] = args.threads
    best["student"] = {"layers": info["settings"]["layers"], "transfer_reports": info["settings"]["transfer"],
                       "epochs": info["settings"]["epochs"], "build_seconds": round(info["build_seconds"] or 0.0, 1)}
    best["quick"] = args.quick
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in best.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
