"""Grading you can trust: a simulated class, autograded by nbgrader end to end.

``python -m bertlab.instructor.grading class [NAMES] [--keep DIR]`` builds a throwaway nbgrader
course from solutions/ (its own gradebook and exchange, in a temporary folder), fabricates one
submission per scenario for every assignment, runs ``nbgrader autograde``, ``generate_feedback``
and ``export`` over the whole class, and prints each student's score against the score the
scenario must get. $BERTLAB_GRADE_WORKERS workers (default: one per CPU) grade shares of the
assignments at once, each in its own copy of the course, merged back before the export. The
test (tests/test_grading.py) and the benchmark (benchmarks/grading.py) use the same functions.

The students and the scores they must get: ``bertlab.instructor.submissions`` (the hostile
students, who try to cheat the grader, on HOSTILE_NOTEBOOKS). What their feedback may show:
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
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bertlab.instructor import course
from bertlab.instructor.feedback import check_feedback
from bertlab.instructor.submissions import ALL_SCENARIOS, HOSTILE_SCENARIOS, SCENARIOS, WRONG, Submission, fabricate

ROOT = course.ROOT

#: Per-cell timeout (seconds) of the simulated class ($BERTLAB_CLASS_TIMEOUT); the real course
#: (nbgrader_config.py) uses 180. A shorter one cut a slow imports cell off when two workers shared a busy machine.
CLASS_TIMEOUT = int(os.environ.get("BERTLAB_CLASS_TIMEOUT", "60"))


# --------------------------------------------------------------------------- the course
def nbgrader(course_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run an nbgrader command in ``course_dir`` (it reads that folder's nbgrader_config.py)."""
    proc, _ = _nbgrader_cpu(course_dir, *args)
    if check and proc.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _nbgrader_cpu(course_dir: Path, *args: str, threads: int | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Run an nbgrader command; return its result and the CPU seconds it and its kernels used.

    ``threads``: torch threads of each kernel (OMP_NUM_THREADS), so that workers grading at
    once share the cores instead of each spinning one thread per core (on a busy machine
    that oversubscription slows a small model several times: benchmarks/grading.py).

    The venv's bin/ goes first on PATH: nbgrader runs the ``alembic`` executable when it
    creates a gradebook, and fails with "No such file or directory: 'alembic'" without it.
    os.wait4 measures this one process tree; RUSAGE_CHILDREN would also count the nbgrader
    runs of the other grading workers that ended meanwhile.
    """
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "nbgrader", *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(cmd, cwd=course_dir, stdout=out, stderr=err, env=env)
        try:
            _, status, usage = os.wait4(child.pid, 0)
        except BaseException:  # e.g. Ctrl-C: leave no nbgrader (and kernels) running
            child.kill()
            child.wait()
            raise
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0), err.seek(0)
        stdout, stderr = (f.read().decode(errors="replace") for f in (out, err))
    proc = subprocess.CompletedProcess(cmd, child.returncode, stdout, stderr)
    return proc, usage.ru_utime + usage.ru_stime


def make_course(course_dir: Path, names: list[str] | None = None, timeout: int = CLASS_TIMEOUT,
                repo: Path = ROOT) -> list[str]:
    """A throwaway copy of the course: solutions/, the course's nbgrader_config.py with a local
    exchange and the class timeout, a gradebook, and the released notebooks. Returns the names."""
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
    )
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


@dataclass
class ClassRun:
    course_dir: Path
    submissions: list[Submission]
    autograde_seconds: dict[str, float] = field(default_factory=dict)  # per assignment (wall)
    autograde_rc: dict[str, int] = field(default_factory=dict)  # exit status of `nbgrader autograde`
    autograde_cpu: dict[str, float] = field(default_factory=dict)  # per assignment (CPU, kernels too)
    load: dict[str, float] = field(default_factory=dict)  # per assignment: 1-min load average after
    student_seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # assignment -> student -> s
    scores: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)  # (student, a) -> cell -> pts
    exported: dict[tuple[str, str], float] = field(default_factory=dict)  # (student, a) -> score (grades.csv)
    logs: dict[str, str] = field(default_factory=dict)
    workers: int = 1  # assignments graded at once
    grade_seconds: float = 0.0  # wall time of autograde and feedback, all workers

    def submission(self, student: str, assignment: str) -> Submission:
        return next(s for s in self.submissions if s.student == student and s.assignment == assignment)

    def autograded(self, student: str, assignment: str) -> Path:
        return self.course_dir / "autograded" / student / assignment / f"{assignment}.ipynb"

    def feedback(self, student: str, assignment: str) -> Path:
        return self.course_dir / "feedback" / student / assignment / f"{assignment}.html"


def gradebook_scores(course_dir: Path) -> dict[tuple[str, str], dict[str, float]]:
    """Autograded points of every graded cell, from the course's gradebook."""
    from nbgrader.api import Gradebook

    out = {}
    with Gradebook(_gradebook_url(course_dir)) as gb:
        for a in gb.assignments:
            for sub in gb.assignment_submissions(a.name):
                for nb in sub.notebooks:
                    out[(sub.student.id, a.name)] = {g.name: g.score for g in nb.grades}
    return out


def _gradebook_url(course_dir: Path) -> str:
    return f"sqlite:///{Path(course_dir) / 'gradebook.db'}"


def grade_workers() -> int:
    """Grading workers of the simulated class: $BERTLAB_GRADE_WORKERS, else one per CPU."""
    value = os.environ.get("BERTLAB_GRADE_WORKERS") or str(os.cpu_count() or 1)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"BERTLAB_GRADE_WORKERS: expected a whole number >= 1, got {value!r}")
    return int(value)


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


def _shard_course(course_dir: Path, shard_dir: Path, names: list[str]) -> Path:
    """A copy of the course that grades ``names`` only: the config, the gradebook (so its
    assignments and cells are the course's), their solutions and their submissions."""
    shard_dir.mkdir(parents=True)
    for f in ("nbgrader_config.py", "gradebook.db"):
        shutil.copy2(course_dir / f, shard_dir / f)
    for name in names:
        shutil.copytree(course_dir / "solutions" / name, shard_dir / "solutions" / name)
        for sub in (course_dir / "submitted").glob(f"*/{name}"):
            shutil.copytree(sub, shard_dir / "submitted" / sub.parent.name / name)
    return shard_dir


def _merge(course_dir: Path, shard_dir: Path, names: list[str]) -> None:
    """Bring a graded shard back: its autograded/ and feedback/ folders, and its submissions of
    ``names`` (students, grades, comments, flags) into the course's gradebook."""
    from nbgrader.api import Gradebook
    from sqlalchemy.exc import SAWarning

    for tree in ("autograded", "feedback"):
        if (shard_dir / tree).is_dir():
            shutil.copytree(shard_dir / tree, course_dir / tree, dirs_exist_ok=True)
    with (Gradebook(_gradebook_url(shard_dir)) as src, Gradebook(_gradebook_url(course_dir)) as dst,
          warnings.catch_warnings()):
        # nbgrader's add_submission trips SQLAlchemy 2's "not in session, add operation ... will
        # not proceed" during autoflush; the rows are saved all the same (the merge test reads them)
        warnings.simplefilter("ignore", SAWarning)
        for name in names:
            for sub in src.assignment_submissions(name):
                st = sub.student
                dst.update_or_create_student(st.id, first_name=st.first_name, last_name=st.last_name,
                                             email=st.email, lms_user_id=st.lms_user_id)
                # add_submission creates an empty grade and comment for every cell; fill them in
                dst.add_submission(name, st.id, timestamp=sub.timestamp, extension=sub.extension)
                for nb in sub.notebooks:
                    into = dst.find_submission_notebook(nb.name, name, st.id)
                    into.flagged = nb.flagged
                    grades = {g.name: g for g in into.grades}
                    for g in nb.grades:
                        for col in ("auto_score", "manual_score", "extra_credit", "needs_manual_grade"):
                            setattr(grades[g.name], col, getattr(g, col))
                    comments = {c.name: c for c in into.comments}
                    for c in nb.comments:
                        comments[c.name].auto_comment = c.auto_comment
                        comments[c.name].manual_comment = c.manual_comment
        dst.db.commit()


def _grade(course_dir: Path, name: str, students: tuple[str, ...], run: ClassRun, log, threads: int | None = None) -> None:
    """Autograde one assignment in ``course_dir`` (the course or a shard of it) and generate its
    feedback; record the times, exit status and logs in ``run`` (each worker its own keys).
    ``threads``: torch threads per kernel (None: torch's default, one per core)."""
    start = time.time()
    # nbgrader grades the other students when one fails and exits 1 at the end: record it,
    # and let the callers see which submissions were not graded
    proc, cpu = _nbgrader_cpu(course_dir, "autograde", name, "--force", threads=threads)
    seconds = time.time() - start
    run.autograde_rc[name] = proc.returncode
    run.autograde_seconds[name] = seconds
    run.autograde_cpu[name] = cpu
    run.load[name] = os.getloadavg()[0]
    run.logs[f"autograde {name}"] = proc.stdout + proc.stderr
    # the autograded notebook is written when its student is done: the gaps are per-student times
    graded = [course_dir / "autograded" / s / name / f"{name}.ipynb" for s in students]
    done = sorted((p.stat().st_mtime, s) for s, p in zip(students, graded) if p.exists())
    prev, run.student_seconds[name] = start, {}
    for t, s in done:
        run.student_seconds[name][s] = t - prev
        prev = t
    log(f"autograded {name}: {len(done)}/{len(students)} submissions in {seconds:.1f} s, "
        f"{seconds / len(students):.1f} s per submission "
        f"(CPU {cpu / len(students):.1f} s; load average {run.load[name]:.1f})"
        + (f"; nbgrader exited {proc.returncode}" if proc.returncode else ""))
    proc = nbgrader(course_dir, "generate_feedback", name, "--force")
    run.logs[f"generate_feedback {name}"] = proc.stdout + proc.stderr


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
    names = make_course(course_dir, names, timeout)
    subs = []
    for name in names:
        solution = read(course_dir / "solutions" / name / f"{name}.ipynb")
        released = read(course_dir / "notebooks" / name / f"{name}.ipynb")
        subs += fabricate(name, solution, released, plan[name])
    write_submissions(course_dir, subs)
    shards = _shards(plan, workers)
    run = ClassRun(course_dir, subs, workers=max(len(shards), 1))
    # each worker's kernels get their share of the cores
    threads = max(1, (os.cpu_count() or 1) // len(shards)) if len(shards) > 1 else None
    log(f"grading {len(subs)} submissions with {run.workers} worker(s)"
        + (f", {threads} torch thread(s) per kernel" if threads else "") + f": {shards}")

    def grade(folder: Path, shard: list[str]) -> None:
        for name in shard:
            _grade(folder, name, plan[name], run, log, threads)

    start = time.time()
    if len(shards) > 1:
        folders = [_shard_course(course_dir, course_dir / "shards" / str(k), shard) for k, shard in enumerate(shards)]
        with ThreadPoolExecutor(len(shards)) as pool:  # threads suffice: the work is nbgrader's processes
            list(pool.map(grade, folders, shards))  # list(): a worker's exception is raised here
        for folder, shard in zip(folders, shards):
            _merge(course_dir, folder, shard)
        shutil.rmtree(course_dir / "shards")
    else:
        for shard in shards:
            grade(course_dir, shard)
    run.grade_seconds = time.time() - start
    proc = nbgrader(course_dir, "export")
    run.logs["export"] = proc.stdout + proc.stderr
    with open(course_dir / "grades.csv") as fh:
        for row in csv.DictReader(fh):
            run.exported[(row["student_id"], row["assignment"])] = float(row["score"])
    run.scores = gradebook_scores(course_dir)
    return run


def report(run: ClassRun, out=print) -> list[str]:
    """Print every submission's score against the expected one; return the mismatches."""
    bad = []
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
            plan[n] = plan[n] + HOSTILE_SCENARIOS
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
    chk = sub.add_parser("check-feedback", help="look for hidden test source in a course's feedback/ pages")
    chk.add_argument("course", nargs="?", type=Path, default=Path("."), help="course folder (default: .)")
    args = parser.parse_args(argv)
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
        run = run_class(Path(args.keep or tmp.name), args.names or class_names(), timeout=args.timeout)
        bad = report(run)
        print(f"class: {len(run.submissions) - len(bad)}/{len(run.submissions)} submissions graded as expected")
        return 1 if bad else 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
