"""Does the fast mutation runner give nbgrader's verdicts? One notebook, both paths.

Run: ``python benchmarks/mutation.py NOTEBOOK [--exercise ID ...] [--keep DIR] [--timeout S]``
(e.g. ``00-welcome``). First the fast path (``bertlab.instructor.mutation``: one grading-mode
kernel, each variant redefined in it and its exercise's test cells re-run). Then the full path:
a throwaway course (``bertlab.instructor.grading.make_course``), one submission per variant (the
perfect student's notebook with that exercise's cell replaced by the variant's source), and
``nbgrader autograde`` over them all: each submission runs top to bottom in its own kernel, the
hidden tests put back by nbgrader, and the gradebook gives the points of every test cell.

For each variant it prints the test cells of its exercise that lost points on each path and
whether they agree; test cells of *other* exercises that lost points in the full path (a later
exercise that calls this one) are listed too, but not compared: the fast path only re-runs the
exercise's own tests. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bertlab.instructor import autograde, course, grading, mutation, submissions  # noqa: E402


def full_path(name: str, variants: list, folder: Path, timeout: int) -> tuple[dict[str, dict[str, float]], float]:
    """Autograde one submission per variant; return {student: {test grade_id: points}} and the seconds."""
    import nbformat

    grading.make_course(folder, [name], timeout)
    solution = grading.read(folder / "solutions" / name / f"{name}.ipynb")
    released = grading.read(folder / "notebooks" / name / f"{name}.ipynb")
    perfect = submissions.fabricate(name, solution, released, ("perfect",))[0]
    subs = []
    for k, v in enumerate(variants):
        nb = nbformat.from_dict(json.loads(json.dumps(perfect.nb)))
        cell = next(c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == v.exercise)
        cell.source = v.source
        subs.append(type(perfect)(student=f"variant{k:02d}", assignment=name, nb=nb, expected={}, note=v.name))
    grading.write_submissions(folder, subs)
    start = time.time()
    proc = autograde.nbgrader(folder, "autograde", name, "--force", check=False)
    seconds = time.time() - start
    scores = autograde.gradebook_scores(folder)
    if proc.returncode != 0:
        print(f"nbgrader autograde exited {proc.returncode}:\n{proc.stderr[-3000:]}", file=sys.stderr)
    return {s.student: scores.get((s.student, name), {}) for s in subs}, seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", metavar="NOTEBOOK", help="an assignment, e.g. 00-welcome")
    parser.add_argument("--exercise", action="append", help="only this exercise (grade_id); repeatable")
    parser.add_argument("--keep", type=Path, help="build the course in this (new) folder and keep it")
    parser.add_argument("--timeout", type=int, default=grading.CLASS_TIMEOUT, help="per-cell timeout (s)")
    args = parser.parse_args(argv)
    if args.name not in course.assignments():
        parser.error(f"unknown notebook {args.name!r}; the course has {course.assignments()}")

    solution = grading.read(ROOT / "solutions" / args.name / f"{args.name}.ipynb")
    lay = submissions.layout(solution, args.name)
    variants, problems = mutation.suite(args.name, solution)
    variants = [v for v in variants if not args.exercise or v.exercise in args.exercise]
    points = {t.grade_id: t.points for t in lay.tests}
    own = {ex: {t.grade_id for t in lay.tests if t.exercise == k} for k, ex in enumerate(lay.exercises)}

    start = time.time()
    fast = mutation.run_notebook(args.name, only=args.exercise, timeout=args.timeout)
    fast_seconds = time.time() - start
    by_name = {(o.exercise, o.name): o for o in fast.outcomes}

    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="bertlab-mutation-bench-")
    folder = Path(args.keep or tmp.name)
    try:
        graded, full_seconds = full_path(args.name, variants, folder, args.timeout)
    finally:
        if tmp is not None:
            tmp.cleanup()

    rows, agree = [], 0
    print(f"\n{'exercise':<18} {'kind':<11} {'fast path':<28} {'nbgrader autograde':<28} {'':<8} variant")
    for k, v in enumerate(variants):
        scores = graded[f"variant{k:02d}"]
        lost = {t for t, p in points.items() if scores.get(t) is None or scores[t] < p}
        full_own, others = lost & own[v.exercise], sorted(lost - own[v.exercise])
        o = by_name.get((v.exercise, v.name))
        fast_own = set(o.failed) if o is not None else set()
        same = o is not None and not o.error and fast_own == full_own
        agree += same
        rows.append({"exercise": v.exercise, "variant": v.name, "kind": v.kind, "fast": sorted(fast_own),
                     "nbgrader": sorted(full_own), "other_cells_nbgrader": others, "agree": same})
        print(f"{v.exercise:<18} {v.kind:<11} {', '.join(sorted(fast_own)) or '-':<28} "
              f"{', '.join(sorted(full_own)) or '-':<28} {'agree' if same else 'DIFFER':<8} {v.name}"
              + (f"   (also lost in nbgrader: {', '.join(others)})" if others else ""))
    n = len(variants)
    print(f"\n{agree}/{n} verdicts agree; fast path {fast_seconds:.0f} s (one kernel), "
          f"nbgrader autograde {full_seconds:.0f} s ({full_seconds / max(n, 1):.1f} s per submission)")
    out = {"notebook": args.name, "variants": n, "agree": agree, "fast_seconds": round(fast_seconds, 1),
           "autograde_seconds": round(full_seconds, 1), "suite_problems": problems, "rows": rows}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result["agree"] == result["variants"] else 1)
