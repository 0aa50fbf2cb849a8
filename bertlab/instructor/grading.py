"""Grading you can trust: a simulated class, autograded by nbgrader end to end.

``python -m bertlab.instructor.grading class [NAMES] [--keep DIR]`` builds a throwaway nbgrader
course from solutions/ (its own gradebook and exchange, in a temporary folder), fabricates one
submission per scenario for every assignment, runs ``nbgrader autograde``, ``generate_feedback``
and ``export`` over the whole class, and prints each student's score against the score the
scenario must get. $BERTLAB_GRADE_WORKERS workers (default: one per CPU) grade shares of the
assignments at once, each in its own copy of the course, merged back before the export. The
test (tests/test_grading.py) and the benchmark (benchmarks/grading.py) use the same functions.

``python -m bertlab.instructor.grading autograde [NAMES] [--workers N]`` grades a real class (an
nbgrader course's submitted/ folder) the same way, split by students, with a progress bar and a
CSV of per-submission times and scores (:func:`autograde_class`; docs/instructors.md).

The students and the scores they must get: ``bertlab.instructor.submissions`` (the hostile
students, who try to cheat the grader, on HOSTILE_NOTEBOOKS) and ``bertlab.instructor.attacks``
(those who go for the machine: the network, memory, disk; their notebooks grade under lowered
limits, and an accomplice on 127.0.0.1 answers hostile-network where the network is not cut).
``class`` grades every scenario on each notebook it is given, the hostile ones where they apply. What their feedback may show:
``bertlab.instructor.feedback``. What stops the cheats: ``bertlab.instructor.integrity`` and
``bertlab.instructor.sandbox``, which the course's nbgrader_config.py puts in ``nbgrader autograde``.

The throwaway course uses a 60 s cell timeout (``CLASS_TIMEOUT``) so the infinite loop costs
60 s, not the real course's 180 s; no cell of a notebook in grading mode may come near it, even
with two workers grading at once on 2 cores.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bertlab.instructor import attacks, course, sandbox
from bertlab.instructor.autograde import (
    ClassRun,
    autograde_class,
    grade_shards,
    grade_workers,
    gradebook_scores,
    nbgrader,
    write_feedback_index,
)
from bertlab.instructor.feedback import check_feedback
from bertlab.instructor.submissions import (
    ALL_SCENARIOS,
    HOSTILE_SCENARIOS,
    RESOURCE_SCENARIOS,
    SCENARIOS,
    WRONG,
    Submission,
    fabricate,
    fill,
)

ROOT = course.ROOT

#: Per-cell timeout (seconds) of the simulated class ($BERTLAB_CLASS_TIMEOUT); the real course
#: (nbgrader_config.py) uses 180. A shorter one cut a slow imports cell off when two workers shared a busy machine.
CLASS_TIMEOUT = int(os.environ.get("BERTLAB_CLASS_TIMEOUT", "60"))


# --------------------------------------------------------------------------- the course
def make_course(course_dir: Path, names: list[str] | None = None, timeout: int = CLASS_TIMEOUT,
                repo: Path = ROOT, limits: dict[str, dict[str, int]] | None = None) -> list[str]:
    """A throwaway copy of the course: solutions/, the course's nbgrader_config.py with a local
    exchange and the class timeout, a gradebook, and the released notebooks. Returns the names.
    ``limits``: the sandbox's limits of some notebooks' kernels (``c.Sandbox.assignment_limits``)."""
    course_dir = Path(course_dir)
    names = names or course.assignments(repo)
    (course_dir / "solutions").mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(Path(repo) / "solutions" / name, course_dir / "solutions" / name,
                        dirs_exist_ok=True, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    config = (Path(repo) / "nbgrader_config.py").read_text()
    config += (
        "\n\n# --- simulated class (bertlab.instructor.grading): a throwaway course in this folder ---\n"
        "c.Exchange.root = os.path.join(c.CourseDirectory.root, 'exchange')\n"
        f"c.Execute.timeout = {int(timeout)}  # the real course: 180 s\n"
        "# the simulated class grades wherever the test suite runs; where bubblewrap is missing its report's\n"
        "# first line says that it ran unsandboxed (a real course refuses: sandbox.refusal)\n"
        "c.Sandbox.allow_unsandboxed = True\n"
    )
    if limits:
        config += f"c.Sandbox.assignment_limits = {limits!r}  # lowered for the hostile students' hogs\n"
    (course_dir / "nbgrader_config.py").write_text(config)
    (course_dir / "exchange").mkdir(exist_ok=True)
    for name in names:
        nbgrader(course_dir, "generate_assignment", name, "--force", "--log-level=WARN")
    return names


def write_submissions(course_dir: Path, subs: list[Submission]) -> None:
    """Place each notebook where ``nbgrader collect`` would: submitted/STUDENT/ASSIGNMENT/."""
    import nbformat

    for s in subs:
        folder = Path(course_dir) / "submitted" / s.student / s.assignment
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(s.nb, folder / f"{s.assignment}.ipynb")


def read(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


def _shards(plan: dict[str, tuple[str, ...]], workers: int) -> list[list[str]]:
    """The assignments of ``plan`` that have students, split among at most ``workers`` workers
    by cost (submissions): the largest first, each to the least loaded worker, so the biggest
    notebooks go to different workers. Each shard keeps the course order."""
    graded = [n for n in plan if plan[n]]
    shards: list[list[str]] = [[] for _ in range(min(workers, len(graded)))]
    loads = [0] * len(shards)
    for name in sorted(graded, key=lambda n: -len(plan[n])):  # sorted() is stable: course order on ties
        k = loads.index(min(loads))
        shards[k].append(name)
        loads[k] += len(plan[name])
    return [[n for n in graded if n in shard] for shard in shards]


def run_class(course_dir: Path, names: list[str] | None = None, scenarios=SCENARIOS,
              timeout: int = CLASS_TIMEOUT, log=print, workers: int | None = None) -> ClassRun:
    """Build the course, fabricate the class, autograde, generate feedback and export.

    ``scenarios``: the students of every notebook (a tuple of :data:`SCENARIOS`), or a dict
    ``{notebook: scenarios}`` such as :func:`class_plan` gives (notebooks not in it: none).
    ``workers`` (default :func:`grade_workers`): assignments graded at once, each worker in its
    own copy of the course, merged back before the export; 1 grades in ``course_dir`` alone.
    """
    course_dir = Path(course_dir)
    workers = grade_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers: expected at least 1, got {workers}")
    names = list(names or course.assignments())
    plan = {n: tuple(scenarios.get(n, ())) if isinstance(scenarios, dict) else tuple(scenarios) for n in names}
    unknown = sorted({s for v in plan.values() for s in v} - set(ALL_SCENARIOS))
    if unknown:
        raise ValueError(f"scenarios: unknown {unknown}; known: {list(ALL_SCENARIOS)}")
    # the notebooks with resource scenarios (attacks) grade under lowered limits, which their hogs go past
    limits = {n: attacks.CLASS_LIMITS for n in names if set(plan[n]) & set(RESOURCE_SCENARIOS)}
    names = make_course(course_dir, names, timeout, limits=limits)
    contained = dict(network_cut=sandbox.cuts_network(sandbox.Sandbox()), limited=sandbox.mechanism() != "none",
                     processes_bounded=sandbox.processes_bounded())
    with attacks.Accomplice(_answers(course_dir, names, plan)) as accomplice:
        subs = []
        for name in names:
            solution = read(course_dir / "solutions" / name / f"{name}.ipynb")
            released = read(course_dir / "notebooks" / name / f"{name}.ipynb")
            subs += fabricate(name, solution, released, plan[name], port=accomplice.port, **contained)
        write_submissions(course_dir, subs)
        shards = [{name: list(plan[name]) for name in shard} for shard in _shards(plan, workers)]
        settings = sandbox.Sandbox(config=course.load_config(course_dir))
        run = ClassRun(course_dir, subs, workers=max(len(shards), 1), sandbox=sandbox.status_line(settings))
        start = time.time()
        grade_shards(course_dir, shards, run, log)
        run.grade_seconds = time.time() - start
    run.accomplice_calls = accomplice.calls
    write_feedback_index(course_dir, run.sandbox)
    proc = nbgrader(course_dir, "export")
    run.logs["export"] = proc.stdout + proc.stderr
    with open(course_dir / "grades.csv") as fh:
        for row in csv.DictReader(fh):
            run.exported[(row["student_id"], row["assignment"])] = float(row["score"])
    run.scores = gradebook_scores(course_dir)
    return run


def _answers(course_dir: Path, names: list[str], plan: dict[str, tuple[str, ...]]) -> dict:
    """The functions the accomplice of hostile-network computes: each such notebook's last
    exercise, from its solution cell (run here with torch imported)."""
    namespace: dict = {}
    for name in names:
        if "hostile-network" in plan[name]:
            from bertlab.instructor.submissions import layout

            nb = read(course_dir / "solutions" / name / f"{name}.ipynb")
            last = layout(nb, name).exercises[-1]
            cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == last)
            exec("import torch\n" + fill(cell.source), namespace)  # the instructor's own solution
    return namespace


def report(run: ClassRun, out=print) -> list[str]:
    """Print every submission's score against the expected one; return the mismatches."""
    bad = []
    out(run.sandbox)
    out(f"{'assignment':<16} {'student':<16} {'expected':>8} {'graded':>7} {'export':>7} {'seconds':>8}  note")
    for s in run.submissions:
        got = run.scores.get((s.student, s.assignment), {})
        total = sum(v or 0 for v in got.values()) if got else float("nan")
        exported = run.exported.get((s.student, s.assignment), float("nan"))
        ok = got == s.expected and exported == s.expected_total
        if not ok:
            bad.append(f"{s.assignment}/{s.student}: expected {s.expected}, graded {got}, exported {exported}")
        secs = run.student_seconds.get(s.assignment, {}).get(s.student, float("nan"))
        out(f"{s.assignment:<16} {s.student:<16} {s.expected_total:>8g} {total:>7g} {exported:>7g} {secs:>8.1f}"
            f"  {'ok' if ok else 'MISMATCH'} {s.note}")
    return bad


#: The class the test suite (and so CI) grades: every scenario on these notebooks, the
#: CORE_SCENARIOS on the others. The robustness scenarios (crash, loop, tampering) exercise
#: nbgrader and the course config, the same for every notebook; perfect/blank/partial check
#: each notebook's own points. $BERTLAB_FULL_CLASS=1, and benchmarks/grading.py, grade every
#: scenario on every notebook.
FULL_CLASS_NOTEBOOKS = ("00-welcome", "04-finetuning")
CORE_SCENARIOS = ("perfect", "blank", "partial")
#: The hostile students (submissions.HOSTILE_SCENARIOS) hand in on these notebooks in the test
#: suite; with $BERTLAB_FULL_CLASS, on every notebook with a wrong answer in submissions.WRONG.
HOSTILE_NOTEBOOKS = ("00-welcome",)


def class_plan(names: list[str], full: bool | None = None) -> dict[str, tuple[str, ...]]:
    """``{notebook: scenarios}`` of the simulated class; ``full`` (default: $BERTLAB_FULL_CLASS)
    gives every notebook every scenario. A notebook in FULL_CLASS_NOTEBOOKS, or the only
    one asked for, always gets every scenario."""
    if full is None:
        full = os.environ.get("BERTLAB_FULL_CLASS", "") not in ("", "0")
    plan = {n: SCENARIOS if full or n in FULL_CLASS_NOTEBOOKS or len(names) == 1 else CORE_SCENARIOS
            for n in names}
    for n in names:
        if n in WRONG and (full or n in HOSTILE_NOTEBOOKS or len(names) == 1):
            plan[n] = plan[n] + HOSTILE_SCENARIOS + RESOURCE_SCENARIOS
    return plan


def class_names() -> list[str] | None:
    """Assignments of the simulated class: $BERTLAB_CLASS (comma-separated) or None (all)."""
    names = [n.strip() for n in os.environ.get("BERTLAB_CLASS", "").split(",") if n.strip()]
    return names or None


# --------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertlab.instructor.grading", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cls = sub.add_parser("class", help="autograde a simulated class and compare every score with the expected one")
    cls.add_argument("names", nargs="*", help="assignments (default: $BERTLAB_CLASS, else all in solutions/)")
    cls.add_argument("--keep", type=Path, help="build the course in this (new) folder and keep it")
    cls.add_argument("--timeout", type=int, default=CLASS_TIMEOUT, help="per-cell timeout in seconds")
    grd = sub.add_parser("autograde", help="autograde a class's submissions with parallel workers and a progress bar, "
                                           "then generate the feedback (a real course: submitted/STUDENT/ASSIGNMENT/)")
    grd.add_argument("names", nargs="*", help="assignments (default: every one with submissions)")
    grd.add_argument("--course", type=Path, default=Path("."), help="the nbgrader course folder (default: .)")
    grd.add_argument("--workers", type=int, help="submissions graded at once (default: $BERTLAB_GRADE_WORKERS, else one per CPU)")
    grd.add_argument("--csv", type=Path, help="per-submission seconds and scores (default: COURSE/autograde_times.csv)")
    grd.add_argument("--allow-unsandboxed", action="store_true",
                     help="grade even where bubblewrap (the file-system sandbox) is unavailable; the report and "
                          "feedback/index.html then say so first (default: refuse there)")
    chk = sub.add_parser("check-feedback", help="look for hidden test source in a course's feedback/ pages")
    chk.add_argument("course", nargs="?", type=Path, default=Path("."), help="course folder (default: .)")
    args = parser.parse_args(argv)
    if args.command == "autograde":
        if args.allow_unsandboxed:  # read by c.Sandbox.allow_unsandboxed's default, here and in nbgrader's processes
            os.environ[sandbox.ALLOW_ENV] = "1"
        try:
            run = autograde_class(args.course, args.names or None, args.workers, csv_path=args.csv)
        except (ValueError, FileNotFoundError, FileExistsError, sandbox.SandboxUnavailable) as e:
            parser.error(str(e))
        print(run.sandbox)
        failed = sorted(a for a, rc in run.autograde_rc.items() if rc)
        graded = sum(len(v) for v in run.student_seconds.values())
        print(f"autograde: {graded} submissions in {run.grade_seconds:.0f} s with {run.workers} worker(s); "
              f"times and scores: {args.csv or Path(args.course) / 'autograde_times.csv'}; next: nbgrader export")
        if failed:
            print(f"nbgrader autograde exited non-zero for {failed}: see its log above; the others are graded")
        return 1 if failed else 0
    if args.command == "check-feedback":
        found = check_feedback(args.course)
        for page, lines in found.items():
            print(f"{page}: {len(lines)} hidden test line(s), e.g. {lines[0]!r}")
        pages = len(list((args.course / "feedback").glob("*/*/*.html")))
        print(f"check-feedback: {len(found)} of {pages} feedback pages show hidden tests")
        return 1 if found else 0
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep: {args.keep} exists and is not empty")
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="bertlab-class-")
    try:
        names = args.names or class_names() or course.assignments()
        run = run_class(Path(args.keep or tmp.name), names, class_plan(names, full=True), timeout=args.timeout)
        bad = report(run)
        print(f"class: {len(run.submissions) - len(bad)}/{len(run.submissions)} submissions graded as expected")
        return 1 if bad else 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
