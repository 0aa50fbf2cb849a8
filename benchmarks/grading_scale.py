"""Grade one notebook for a class of N learners twice, serial and in parallel, and project a term.

Run: ``python benchmarks/grading_scale.py [NAME] [--learners 30] [--workers N]`` (default
00-welcome, 30 learners, one worker per CPU). Builds two throwaway copies of the course, hands
in the same N submissions to both (the simulated class's honest scenarios, cycled: perfect,
partial, blank, exception, stderr-warnings, out-of-order, ..., each learner with an id of its
own), then grades one copy with plain ``nbgrader autograde`` (one submission after another, as
an instructor would) and the other with the course's parallel grader
(``python -m bertlab.instructor.grading autograde --workers N``). Prints the wall and CPU
seconds per submission of each, checks that every learner got the same points from both and
the points the scenario must get, and projects a term (60 learners x 13 notebooks) on 2 and on
16 cores. The last line is one JSON object.

The projection assumes every notebook costs what this one costs per submission and that
grading is CPU-bound (each submission is a kernel running the notebook in grading mode): on C
cores with C workers a term takes about submissions x CPU seconds per submission / C. The
infinite-loop learner is left out (its cell timeout is waiting, not work); add the timeout once
per stuck learner.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bertlab.instructor import autograde, grading, submissions  # noqa: E402

#: The learners cycled through: every honest scenario but the infinite loop (see the docstring).
HONEST = tuple(s for s in submissions.SCENARIOS if s != "infinite-loop")
TERM = (60, 13)  # learners, notebooks


def class_of(subs: list[submissions.Submission], learners: int) -> list[submissions.Submission]:
    """``learners`` submissions cycling through ``subs`` (one per scenario), each with its own id."""
    if learners < 1 or not subs:
        raise ValueError(f"learners: expected at least 1 (and some scenarios), got {learners}")
    return [dataclasses.replace(subs[k % len(subs)], student=f"{subs[k % len(subs)].student}-{k:03d}")
            for k in range(learners)]


def build(folder: Path, name: str, learners: int, timeout: int) -> list[submissions.Submission]:
    grading.make_course(folder, [name], timeout)
    solution = grading.read(folder / "solutions" / name / f"{name}.ipynb")
    released = grading.read(folder / "notebooks" / name / f"{name}.ipynb")
    subs = class_of(submissions.fabricate(name, solution, released, HONEST), learners)
    grading.write_submissions(folder, subs)
    return subs


def cpu_of_children() -> float:
    t = os.times()
    return t.children_user + t.children_system


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", default="00-welcome", help="the assignment (default 00-welcome)")
    parser.add_argument("--learners", type=int, default=30, help="submissions to grade (default 30)")
    parser.add_argument("--workers", type=int, default=None, help="parallel workers (default: one per CPU)")
    parser.add_argument("--timeout", type=int, default=grading.CLASS_TIMEOUT, help="per-cell timeout (s)")
    args = parser.parse_args(argv)
    workers = args.workers or autograde.grade_workers()
    with tempfile.TemporaryDirectory(prefix="bertlab-scale-") as tmp:
        serial_dir, parallel_dir = Path(tmp) / "serial", Path(tmp) / "parallel"
        subs = build(serial_dir, args.name, args.learners, args.timeout)
        build(parallel_dir, args.name, args.learners, args.timeout)

        cpu0, start = cpu_of_children(), time.time()
        proc = autograde.nbgrader(serial_dir, "autograde", args.name, "--force", check=False)
        serial_s, serial_cpu = time.time() - start, cpu_of_children() - cpu0
        print(f"serial (nbgrader autograde): {len(subs)} submissions in {serial_s:.0f} s"
              + (f"; nbgrader exited {proc.returncode}" if proc.returncode else ""), flush=True)

        cpu0, start = cpu_of_children(), time.time()
        run = autograde.autograde_class(parallel_dir, [args.name], workers=workers, progress=False)
        parallel_s, parallel_cpu = time.time() - start, cpu_of_children() - cpu0
        print(f"parallel ({run.workers} workers, feedback included): {len(subs)} submissions in {parallel_s:.0f} s",
              flush=True)

        serial, parallel = autograde.gradebook_scores(serial_dir), autograde.gradebook_scores(parallel_dir)
    points = {s.student: sum(serial.get((s.student, args.name), {}).values()) for s in subs}
    differ = sorted(s.student for s in subs if serial.get((s.student, args.name)) != parallel.get((s.student, args.name)))
    wrong = sorted(s.student for s in subs if abs(points[s.student] - s.expected_total) > 1e-9)
    n = len(subs)
    cpu_per_sub = serial_cpu / n
    term = TERM[0] * TERM[1]
    out = {
        "assignment": args.name, "learners": n, "workers": run.workers, "cpus": os.cpu_count(),
        "serial_seconds_per_submission": round(serial_s / n, 1),
        "parallel_seconds_per_submission": round(parallel_s / n, 1),  # wall, feedback included
        "serial_cpu_seconds_per_submission": round(cpu_per_sub, 1),
        "parallel_cpu_seconds_per_submission": round(parallel_cpu / n, 1),
        "speed_up": round(serial_s / parallel_s, 2),
        "same_scores": not differ, "scores_differ": differ, "scores_as_expected": not wrong, "unexpected": wrong,
        "projected_term_hours": {f"{c} cores": round(term * cpu_per_sub / c / 3600, 1) for c in (2, 16)},
        "projected_term_serial_hours": round(term * serial_s / n / 3600, 1),
        "term": {"learners": TERM[0], "notebooks": TERM[1]},
        "load_average": round(os.getloadavg()[0], 1),
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(f"{'':<12} {'s/submission':>12} {'CPU s/sub':>10}")
    print(f"{'serial':<12} {out['serial_seconds_per_submission']:>12.1f} {out['serial_cpu_seconds_per_submission']:>10.1f}")
    print(f"{'parallel':<12} {out['parallel_seconds_per_submission']:>12.1f} {out['parallel_cpu_seconds_per_submission']:>10.1f}"
          f"   ({run.workers} workers, x{out['speed_up']:.2f})")
    print(f"scores: {'identical' if not differ else f'DIFFER for {differ}'} serial vs parallel; "
          f"{'every learner got the expected points' if not wrong else f'unexpected points for {wrong}'}")
    print(f"a term of {TERM[0]} learners x {TERM[1]} notebooks at this notebook's cost: serial "
          f"{out['projected_term_serial_hours']} h; {out['projected_term_hours']['2 cores']} h on 2 cores, "
          f"{out['projected_term_hours']['16 cores']} h on 16 (CPU-bound, one worker per core)")
    print(json.dumps(out))
    if differ or wrong:
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    main()
