"""Time nbgrader autograding of the simulated class (bertlab.instructor.grading).

Run: ``python benchmarks/grading.py [NAMES] [--keep DIR] [--workers N]`` (default: every
notebook in solutions/, or $BERTLAB_CLASS). Builds the throwaway course, fabricates one
submission per scenario for each notebook, runs ``nbgrader autograde`` once per notebook over
the whole class (``--workers`` notebooks at once, default $BERTLAB_GRADE_WORKERS or one per
CPU; 1 grades them one after another, as an instructor would) and prints, per notebook, the
wall seconds per submission, the CPU seconds per submission (nbgrader and its kernels) and the
load average when it finished, then a per-student table and the whole class's wall seconds per
submission against the sum of its notebooks' (what one worker would have taken). The last line
is one JSON object.

Each submission is one kernel running the notebook top to bottom with NBGRADER_EXECUTION set;
the infinite-loop student adds one cell timeout (``CLASS_TIMEOUT``, 60 s here, 180 s in the
real course). The wall time depends on what else the machine runs: compare the CPU figure
and the load average between runs. Target: at most 20 s per submission per notebook on 2
cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bertlab.instructor import course, grading, submissions  # noqa: E402

TARGET_S = 20.0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="assignments (default: $BERTLAB_CLASS, else all)")
    parser.add_argument("--keep", type=Path, help="build the course in this (new) folder and keep it")
    parser.add_argument("--timeout", type=int, default=grading.CLASS_TIMEOUT, help="per-cell timeout (s)")
    parser.add_argument("--workers", type=int, help="notebooks graded at once (default: $BERTLAB_GRADE_WORKERS, else CPUs)")
    args = parser.parse_args(argv)
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="bertlab-bench-")
    folder = Path(args.keep or tmp.name)
    load_before = os.getloadavg()[0]
    start = time.time()
    try:
        run = grading.run_class(folder, args.names or grading.class_names(), timeout=args.timeout,
                                log=lambda msg: print(msg, flush=True), workers=args.workers)
        bad = grading.report(run)
        # the perfect student's slowest cell: how close a normal cell comes to the class timeout
        slowest = {}
        for a in run.autograde_seconds:
            cells = course.cell_seconds(grading.read(run.autograded("perfect", a)))
            if cells:
                top = max(cells, key=lambda c: c.seconds)
                slowest[a] = {"cell": top.cell_id, "seconds": round(top.seconds, 1),
                              "cells_total_s": round(sum(c.seconds for c in cells), 1)}
    finally:
        if tmp is not None:
            tmp.cleanup()
    total = time.time() - start
    n = len(submissions.SCENARIOS)
    per_nb = {a: round(run.autograde_seconds[a] / n, 1) for a in sorted(run.autograde_seconds)}  # workers end in any order
    cpu_nb = {a: round(run.autograde_cpu[a] / n, 1) for a in per_nb}
    print()
    print(f"{'notebook':<18} {'s/submission':>12} {'CPU s/sub':>10} {'load':>6} {'slowest cell (perfect)':>24}"
          f"  (target <= {TARGET_S:g} s)")
    for a in per_nb:
        sc = slowest.get(a, {})
        print(f"{a:<18} {per_nb[a]:>12.1f} {cpu_nb[a]:>10.1f} {run.load[a]:>6.1f} "
              f"{sc.get('seconds', float('nan')):>14.1f} s {sc.get('cell', ''):>7}  "
              f"{'ok' if per_nb[a] <= TARGET_S else 'over target'}")
    graded = sum(run.autograde_seconds.values())
    subs = len(run.submissions)
    print(f"{run.workers} worker(s): the class took {run.grade_seconds / subs:.1f} s of wall time per submission "
          f"(autograde and feedback); its notebooks' autograde runs add up to {graded / subs:.1f} s per submission")
    out = {
        "seconds_per_submission": per_nb,
        "cpu_seconds_per_submission": cpu_nb,
        "mean_seconds_per_submission": round(graded / (n * len(per_nb)), 1) if per_nb else None,
        "slowest_cell_perfect": slowest,
        "student_seconds": {a: {s: round(t, 1) for s, t in d.items()} for a, d in run.student_seconds.items()},
        "submissions_per_notebook": n,
        "autograde_seconds_total": round(graded, 1),
        "class_seconds_total": round(total, 1),  # course set-up, feedback and export included
        "workers": run.workers,
        "grade_wall_seconds_per_submission": round(run.grade_seconds / subs, 1),  # all workers, feedback included
        "graded_as_expected": len(run.submissions) - len(bad),
        "submissions": subs,
        "cell_timeout_s": args.timeout,
        "target_s": TARGET_S,
        "load_average": {"before": round(load_before, 1), **{a: round(v, 1) for a, v in run.load.items()}},
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
