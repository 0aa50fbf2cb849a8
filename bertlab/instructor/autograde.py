"""Autograding a class with nbgrader: workers in parallel, each in its own copy of the course.

``nbgrader autograde`` grades one submission after another (nbgrader#174) and shows no progress
(nbgrader#1456). :func:`autograde_class` (the command ``python -m bertlab.instructor.grading
autograde``) splits a class's submissions among workers by student; the simulated class
(:func:`bertlab.instructor.grading.run_class`) splits its notebooks among them. Either way each
worker grades in its own copy of the course and gradebook (:func:`shard_course`) with
:func:`grade_assignment`, and :func:`merge_shard` brings the grades, comments, flags,
autograded notebooks and feedback back into the course.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bertlab.instructor import course, sandbox
from bertlab.instructor.submissions import Submission


# --------------------------------------------------------------------------- nbgrader
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


# --------------------------------------------------------------------------- a class's grading
@dataclass
class ClassRun:
    """What grading a class recorded: times, exit codes, logs, scores (the simulated class also
    its fabricated ``submissions`` and ``exported`` grades.csv)."""
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
    workers: int = 1  # grading workers (each its own copy of the course)
    grade_seconds: float = 0.0  # wall time of autograde and feedback, all workers
    accomplice_calls: int = 0  # connections the accomplice of hostile-network got (the network is cut: 0)
    sandbox: str = ""  # sandbox.status_line(): how the submissions were isolated (first line of the reports)
    # grading workers (threads) record into one run: two shards of one assignment add to the same keys
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

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
    """Grading workers by default: $BERTLAB_GRADE_WORKERS, else one per CPU."""
    value = os.environ.get("BERTLAB_GRADE_WORKERS") or str(os.cpu_count() or 1)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"BERTLAB_GRADE_WORKERS: expected a whole number >= 1, got {value!r}")
    return int(value)


def shard_course(course_dir: Path, shard_dir: Path, names: list[str],
                 students: dict[str, list[str]] | None = None) -> Path:
    """A copy of the course that grades ``names`` only: the config, the gradebook (so its
    assignments and cells are the course's), their solutions and their submissions (of
    ``students[name]`` only, when given)."""
    shard_dir.mkdir(parents=True)
    for f in ("nbgrader_config.py", "gradebook.db"):
        shutil.copy2(course_dir / f, shard_dir / f)
    for name in names:
        shutil.copytree(course_dir / "solutions" / name, shard_dir / "solutions" / name)
        for sub in (course_dir / "submitted").glob(f"*/{name}"):
            if students is None or sub.parent.name in students[name]:
                shutil.copytree(sub, shard_dir / "submitted" / sub.parent.name / name)
    return shard_dir


def merge_shard(course_dir: Path, shard_dir: Path, names: list[str], students: dict[str, list[str]] | None = None) -> None:
    """Bring a graded shard back: its autograded/ and feedback/ folders, and its submissions of
    ``names`` (of ``students[name]`` only, when given: the shard's gradebook is a copy of the
    course's and holds everyone's earlier grades) into the course's gradebook (students,
    grades, comments, flags); a submission graded before is replaced."""
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
                if students is not None and st.id not in students[name]:
                    continue
                if any(old.student.id == st.id for old in dst.assignment_submissions(name)):
                    dst.remove_submission(name, st.id)
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


def grade_assignment(course_dir: Path, name: str, students: tuple[str, ...], run: ClassRun, log,
                     threads: int | None = None) -> None:
    """Autograde one assignment in ``course_dir`` (the course or a shard of it) and generate its
    feedback; record the times, exit status and logs in ``run`` (each worker its own keys).
    ``threads``: torch threads per kernel (None: torch's default, one per core)."""
    start = time.time()
    # nbgrader grades the other students when one fails and exits 1 at the end: record it,
    # and let the callers see which submissions were not graded
    proc, cpu = _nbgrader_cpu(course_dir, "autograde", name, "--force", threads=threads)
    seconds = time.time() - start
    # the autograded notebook is written when its student is done: the gaps are per-student times
    graded = [course_dir / "autograded" / s / name / f"{name}.ipynb" for s in students]
    done = sorted((p.stat().st_mtime, s) for s, p in zip(students, graded) if p.exists() and p.stat().st_mtime >= start)
    # several workers may grade shares of one assignment's students (autograde_class): each adds its
    # own, under the run's lock (a read-modify-write of the same key by two threads would lose one)
    with run.lock:
        run.autograde_rc[name] = proc.returncode or run.autograde_rc.get(name, 0)
        run.autograde_seconds[name] = max(seconds, run.autograde_seconds.get(name, 0.0))
        run.autograde_cpu[name] = cpu + run.autograde_cpu.get(name, 0.0)
        run.load[name] = os.getloadavg()[0]
        run.logs[f"autograde {name}"] = run.logs.get(f"autograde {name}", "") + proc.stdout + proc.stderr
        prev, times = start, run.student_seconds.setdefault(name, {})
        for t, s in done:
            times[s] = t - prev
            prev = t
    log(f"autograded {name}: {len(done)}/{len(students)} submissions in {seconds:.1f} s, "
        f"{seconds / len(students):.1f} s per submission "
        f"(CPU {cpu / len(students):.1f} s; load average {run.load[name]:.1f})"
        + (f"; nbgrader exited {proc.returncode}" if proc.returncode else ""))
    proc = nbgrader(course_dir, "generate_feedback", name, "--force")
    with run.lock:
        run.logs[f"generate_feedback {name}"] = run.logs.get(f"generate_feedback {name}", "") + proc.stdout + proc.stderr


def grade_shards(course_dir: Path, shards: list[dict[str, list[str]]], run: ClassRun, log=print,
                 tick=None) -> None:
    """Grade each shard (``{assignment: students}``) with a worker of its own, then merge.

    One shard is graded in ``course_dir`` itself; several each in a copy of the course
    (``shards/K``, :func:`shard_course`), merged back (:func:`merge_shard`) and removed. Each
    worker's kernels get their share of the cores. ``tick(folders)``, if given, is called about
    once a second while the workers run (a progress bar counts their autograded notebooks).
    """
    if not shards:
        return
    threads = max(1, (os.cpu_count() or 1) // len(shards)) if len(shards) > 1 else None
    log(f"grading {sum(len(v) for shard in shards for v in shard.values())} submissions with {len(shards)} worker(s)"
        + (f", {threads} torch thread(s) per kernel" if threads else "") + f": {[list(shard) for shard in shards]}")
    folders = ([shard_course(course_dir, course_dir / "shards" / str(k), list(shard), shard) for k, shard in enumerate(shards)]
               if len(shards) > 1 else [course_dir])

    def grade(folder: Path, shard: dict[str, list[str]]) -> None:
        for name, students in shard.items():
            grade_assignment(folder, name, tuple(students), run, log, threads)

    with ThreadPoolExecutor(len(shards)) as pool:  # threads suffice: the work is nbgrader's processes
        futures = [pool.submit(grade, folder, shard) for folder, shard in zip(folders, shards)]
        while not all(f.done() for f in futures):
            time.sleep(1.0)
            if tick is not None:
                tick(folders)
        for f in futures:
            f.result()  # a worker's exception is raised here
    if len(shards) > 1:
        for folder, shard in zip(folders, shards):
            merge_shard(course_dir, folder, list(shard), shard)
        shutil.rmtree(course_dir / "shards")


def write_feedback_index(course_dir: Path, status: str) -> Path:
    """``feedback/index.html``: the sandbox's status line first (``GRADED UNSANDBOXED`` where it
    was), then a link to every feedback page, by student."""
    import html

    course_dir = Path(course_dir)
    pages = sorted((course_dir / "feedback").glob("*/*/*.html"))
    rows = "\n".join(f'<li><a href="{html.escape(str(p.relative_to(course_dir / "feedback")))}">'
                     f"{html.escape(p.parts[-3])} / {html.escape(p.parts[-2])}</a></li>" for p in pages)
    out = course_dir / "feedback" / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"<p><strong>{html.escape(status)}</strong></p>\n<ul>\n{rows}\n</ul>\n")
    return out


# --------------------------------------------------------------------------- a real class, in parallel
def submitted(course_dir: Path, names: list[str] | None = None) -> dict[str, list[str]]:
    """``{assignment: students}`` with a notebook folder in ``course_dir``/submitted/ (where
    ``nbgrader collect`` puts them), for ``names`` or every assignment found; sorted."""
    found: dict[str, list[str]] = {}
    for folder in sorted(Path(course_dir).glob("submitted/*/*")):
        if folder.is_dir():
            found.setdefault(folder.name, []).append(folder.parent.name)
    if names is None:
        return found
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"names: no submissions of {missing} in {Path(course_dir) / 'submitted'}; "
                         f"found: {sorted(found) or 'none'}")
    return {n: found[n] for n in names}


def _student_shards(plan: dict[str, list[str]], workers: int) -> list[dict[str, list[str]]]:
    """Each worker's share of the class: submission k (in assignment, then student order) goes to
    worker k mod workers, so the shares differ by at most one submission per assignment."""
    items = [(a, s) for a in plan for s in plan[a]]
    shards: list[dict[str, list[str]]] = [{} for _ in range(min(workers, len(items)))]
    for k, (a, s) in enumerate(items):
        shards[k % len(shards)].setdefault(a, []).append(s)
    return shards


def autograde_class(course_dir: Path, names: list[str] | None = None, workers: int | None = None,
                    progress: bool = True, csv_path: Path | None = None) -> ClassRun:
    """``nbgrader autograde`` and ``generate_feedback`` for every submission of ``names`` (default:
    every assignment in submitted/) in ``course_dir``, by ``workers`` processes at once (default
    :func:`grade_workers`), with a progress bar and an estimate of the time left.

    Each worker grades its share of the students (:func:`_student_shards`) in its own copy of the
    course and gradebook (``shards/K``, removed afterwards); the grades, comments, flags,
    autograded notebooks and feedback are merged into the course, as a serial run would have
    written them. Writes one row per submission (assignment, student, worker, seconds, score,
    max_score) to ``csv_path`` (default ``course_dir/autograde_times.csv``). Run ``nbgrader export``
    afterwards for grades.csv.
    """
    from nbgrader.api import Gradebook
    from tqdm.auto import tqdm

    course_dir = Path(course_dir).resolve()
    for f in ("nbgrader_config.py", "gradebook.db"):
        if not (course_dir / f).is_file():
            raise FileNotFoundError(f"course_dir: {course_dir} has no {f}; run the command in an nbgrader course "
                                    "folder (its gradebook is made by `nbgrader generate_assignment`)")
    workers = grade_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers: expected at least 1, got {workers}")
    plan = submitted(course_dir, names)
    if not plan:
        raise ValueError(f"course_dir: no submissions in {course_dir / 'submitted'} (STUDENT/ASSIGNMENT/ folders)")
    if (course_dir / "shards").exists():
        raise FileExistsError(f"course_dir: {course_dir / 'shards'} exists (an interrupted run?): remove it first")
    with Gradebook(_gradebook_url(course_dir)) as gb:
        known = {a.name: a.max_score for a in gb.assignments}
    unknown = [a for a in plan if a not in known]
    if unknown:
        raise ValueError(f"names: {unknown} not in {course_dir / 'gradebook.db'}; run `nbgrader generate_assignment "
                         f"{unknown[0]}` first (it records the assignment's graded cells)")
    settings = sandbox.Sandbox(config=course.load_config(course_dir))
    refused = sandbox.refusal(settings)
    if refused:  # after the arguments are checked, before anything is graded: no half-graded class
        raise sandbox.SandboxUnavailable(refused)
    shards = _student_shards(plan, workers)
    run = ClassRun(course_dir, [], workers=len(shards), sandbox=sandbox.status_line(settings))
    bar = tqdm(total=sum(len(v) for v in plan.values()), unit="submission", desc="autograde", disable=not progress)
    start = time.time()

    def tick(folders: list[Path]) -> None:  # the autograded notebooks written since the start
        done = sum(p.stat().st_mtime >= start for folder in folders for a, students in plan.items()
                   for p in (folder / "autograded" / s / a / f"{a}.ipynb" for s in students) if p.exists())
        bar.update(done - bar.n)

    try:
        grade_shards(course_dir, shards, run, bar.write, tick)
        tick([course_dir])  # merged back (copies keep their times)
    finally:
        bar.close()
    run.grade_seconds = time.time() - start
    run.scores = gradebook_scores(course_dir)
    write_feedback_index(course_dir, run.sandbox)
    worker_of = {(a, s): k for k, shard in enumerate(shards) for a, students in shard.items() for s in students}
    csv_path = Path(csv_path) if csv_path else course_dir / "autograde_times.csv"
    with open(csv_path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["assignment", "student", "worker", "seconds", "score", "max_score"])
        for a, students in plan.items():
            for s in students:
                got = run.scores.get((s, a))
                out.writerow([a, s, worker_of[(a, s)], f"{run.student_seconds.get(a, {}).get(s, float('nan')):.1f}",
                              "" if got is None else f"{sum(v or 0 for v in got.values()):g}", f"{known[a]:g}"])
    return run
