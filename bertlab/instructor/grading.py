"""Grading you can trust: a simulated class, autograded by nbgrader end to end.

``python -m bertlab.instructor.grading class [NAMES] [--keep DIR]`` builds a throwaway nbgrader
course from solutions/ (its own gradebook and exchange, in a temporary folder), fabricates one
submission per scenario for every assignment, runs ``nbgrader autograde``, ``generate_feedback``
and ``export`` over the whole class, and prints each student's score against the score the
scenario must get. $BERTLAB_GRADE_WORKERS workers (default: one per CPU) grade shares of the
assignments at once, each in its own copy of the course, merged back before the export. The
test (tests/test_grading.py) and the benchmark (benchmarks/grading.py) use the same functions.

Every student hands in every notebook, fabricated from the released student version:

=================  ==========================================================================
perfect            every solution cell filled with the solution from solutions/
blank              the student version untouched
partial            the first half of the exercises solved, the rest left as stubs; in a
                   notebook with one exercise, a solution that passes the visible tests and
                   fails a hidden one (``VISIBLE_ONLY``) where one is registered
syntax-error       all solved, the last exercise's cell does not parse
exception          all solved, the last exercise raises an IndexError when called
infinite-loop      all solved, the last exercise's cell starts with a loop that never ends
                   (stopped by the cell timeout, so its function is never defined)
deleted-test       all solved, every test cell deleted (nbgrader adds them back and runs them)
edited-test        as partial with stubs, and the unsolved exercises' tests weakened to
                   ``assert True`` (nbgrader restores the original test, which fails)
stderr-warnings    all solved, each exercise also makes an ordinary numpy call that prints a
                   RuntimeWarning to stderr (warnings turned back on by the learner)
out-of-order       all solved, but the last exercise's cell moved to the end of the notebook
                   (it ran before its test in the learner's kernel) and stale outputs from
                   that session left in the cells
=================  ==========================================================================

Expected scores come from the test cells' points in the solution notebook: a test cell
earns its points when every exercise up to and including its own is correct, else 0 (tests
run top to bottom, so a test can use earlier exercises but never later ones). That is why a
broken exercise is always the last one: everything before it must still get full marks.

The throwaway course uses a 60 s cell timeout (``CLASS_TIMEOUT``) so the infinite loop costs
60 s, not the real course's 180 s; no cell of a notebook in grading mode may come near it, even
with two workers grading at once on 2 cores.
"""
from __future__ import annotations

import argparse
import csv
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nbgrader import utils as nbgrader_utils
from nbgrader.preprocessors import ClearHiddenTests
from traitlets import List, Unicode

from bertlab.instructor import course

ROOT = course.ROOT

#: Per-cell timeout (seconds) of the simulated class ($BERTLAB_CLASS_TIMEOUT); the real course
#: (nbgrader_config.py) uses 180. 30 s cut a slow imports cell off when two workers shared 2 busy cores.
CLASS_TIMEOUT = int(os.environ.get("BERTLAB_CLASS_TIMEOUT", "60"))

SCENARIOS = ("perfect", "blank", "partial", "syntax-error", "exception", "infinite-loop",
             "deleted-test", "edited-test", "stderr-warnings", "out-of-order")

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"

#: Solutions that pass an exercise's visible tests and fail a hidden one, by assignment and
#: solution grade_id. The "partial" student of a one-exercise notebook hands this in. The body
#: replaces the solution region (indentation is added). Add one when a notebook has a single
#: exercise; without it that notebook's "partial" is the same as "blank".
VISIBLE_ONLY: dict[str, dict[str, str]] = {
    "00-welcome": {
        # BERT's extended-mask idiom `1 - mask` works on 0/1 integers; the hidden test passes a
        # boolean mask, and `1 - bool_tensor` raises in torch.
        "mean_pool": (
            "padding = (1 - attention_mask).unsqueeze(-1).bool()  # True at padding\n"
            "summed = last_hidden_state.masked_fill(padding, 0.0).sum(dim=1)\n"
            "return summed / (~padding).sum(dim=1)"
        ),
    },
}

LOOP = "while True:  # the learner's loop never ends\n    pass\n"

STDERR_WARNING = """\
import warnings as _warnings, numpy as _np
with _warnings.catch_warnings():
    _warnings.simplefilter("always")  # env.setup() silenced warnings; this learner turned them on
    _np.mean(_np.zeros(0))  # an ordinary call: RuntimeWarning 'Mean of empty slice' on stderr"""


# --------------------------------------------------------------------------- notebook structure
@dataclass
class TestCell:
    __test__ = False  # not a pytest test class

    grade_id: str
    points: float
    exercise: int  # index of the exercise it follows (-1: before any exercise)
    hidden: bool  # has a hidden test region


@dataclass
class Layout:
    """The graded structure of one solution notebook."""
    assignment: str
    exercises: list[str]  # grade_ids of the code solution cells, in order
    tests: list[TestCell]

    @property
    def total(self) -> float:
        return sum(t.points for t in self.tests)

    def score(self, ok: list[bool], visible_only: int | None = None) -> dict[str, float]:
        """Expected points per test cell when exercise i is correct iff ``ok[i]``.

        ``visible_only``: that exercise passes its visible tests only, so its test cells
        without hidden tests still pass and those with hidden tests fail.
        """
        out = {}
        for t in self.tests:
            before = all(ok[: t.exercise]) if t.exercise >= 0 else True
            if t.exercise >= 0 and t.exercise == visible_only:
                passes = before and not t.hidden
            else:
                passes = before and (t.exercise < 0 or ok[t.exercise])
            out[t.grade_id] = t.points if passes else 0.0
        return out


def _nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def layout(solution_nb, assignment: str) -> Layout:
    """Exercises and test cells of a solution notebook (nbgrader metadata, in cell order)."""
    exercises: list[str] = []
    tests: list[TestCell] = []
    for cell in solution_nb.cells:
        meta = _nbgrader_meta(cell)
        if meta.get("task"):
            raise NotImplementedError(f"{assignment}: task cell {meta.get('grade_id')}: the simulated "
                                      "class grades autograded tests only")
        if meta.get("solution") and meta.get("grade"):
            raise NotImplementedError(f"{assignment}: manually graded cell {meta.get('grade_id')}: the "
                                      "simulated class grades autograded tests only")
        if meta.get("solution") and cell.cell_type == "code":
            exercises.append(meta["grade_id"])
        elif meta.get("grade"):
            tests.append(TestCell(meta["grade_id"], float(meta["points"]), len(exercises) - 1,
                                  BEGIN_HIDDEN in cell.source))
    if not exercises or not tests:
        raise ValueError(f"{assignment}: no exercise (code solution cell) or no test cell")
    return Layout(assignment, exercises, tests)


# --------------------------------------------------------------------------- fabrication
def _regions(lines: list[str]) -> list[tuple[int, int, str]]:
    """(begin line, end line, indentation) of each solution region."""
    out, begin = [], None
    for i, line in enumerate(lines):
        if BEGIN_SOLUTION in line:
            begin = i
        elif END_SOLUTION in line and begin is not None:
            indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
            out.append((begin, i, indent))
            begin = None
    return out


def fill(solution_source: str, first=None) -> str:
    """A learner's cell: the solution with its markers removed.

    ``first(body_lines, indent) -> lines`` rewrites the first solution region (the lines
    between the markers); the others keep the solution.
    """
    lines = solution_source.split("\n")
    regions = _regions(lines)
    if not regions:
        return solution_source
    out, pos = [], 0
    for k, (b, e, indent) in enumerate(regions):
        out += lines[pos:b]
        body = lines[b + 1:e]
        out += first(body, indent) if (k == 0 and first is not None) else body
        pos = e + 1
    out += lines[pos:]
    return "\n".join(out)


def _indented(text: str, indent: str) -> list[str]:
    return [indent + line for line in text.split("\n")]


def _exception(body, indent):
    return [indent + "first = [][0]  # the learner's bug: IndexError"] + body


def _syntax_error(body, indent):
    return body + [indent + 'print("unfinished"']


def _stderr(body, indent):
    return _indented(STDERR_WARNING, indent) + body


@dataclass
class Submission:
    student: str  # the scenario
    assignment: str
    nb: object  # nbformat.NotebookNode
    expected: dict[str, float]  # points per test cell grade_id
    note: str = ""

    @property
    def expected_total(self) -> float:
        return sum(self.expected.values())


def fabricate(assignment: str, solution_nb, released_nb, scenarios=SCENARIOS) -> list[Submission]:
    """One submission per scenario, built from the released student notebook."""
    import nbformat

    lay = layout(solution_nb, assignment)
    n = len(lay.exercises)
    last = n - 1
    sol = {_nbgrader_meta(c).get("grade_id"): c for c in solution_nb.cells if _nbgrader_meta(c).get("solution")}
    test_ids = {t.grade_id for t in lay.tests}
    released_ids = [_nbgrader_meta(c).get("grade_id") for c in released_nb.cells]
    missing = (set(sol) | test_ids) - set(released_ids)
    if missing:
        raise ValueError(f"{assignment}: the released notebook lacks cells {sorted(missing)}: run 'make release'")
    half = n // 2
    variant = VISIBLE_ONLY.get(assignment, {})

    def build(edit: dict[str, str], drop=(), weaken=()):
        nb = nbformat.from_dict(json.loads(json.dumps(released_nb)))  # deep copy
        cells = []
        for cell in nb.cells:
            gid = _nbgrader_meta(cell).get("grade_id")
            if gid in drop:
                continue
            if gid in edit:
                cell.source = edit[gid]
            if gid in weaken:
                cell.source = "# the learner weakened this test so that it passes\nassert True"
            cells.append(cell)
        nb.cells = cells
        return nb

    def solved(ids, rewrite=None, which=()):
        """Solution cells ``ids`` filled from the solutions; ``rewrite`` applied to ``which``."""
        return {g: fill(sol[g].source, rewrite if g in which else None) for g in ids}

    all_ids = list(sol)  # code and markdown solution cells
    ex = lay.exercises
    full = [True] * n
    broken_last = [True] * last + [False]
    subs = []
    for s in scenarios:
        note = ""
        if s == "perfect":
            nb, exp = build(solved(all_ids)), lay.score(full)
        elif s == "blank":
            nb, exp = build({}), lay.score([False] * n)
        elif s in ("partial", "edited-test"):
            ok = [i < half for i in range(n)]
            edit = solved([g for g in all_ids if g not in ex[half:]])
            vis = None
            if n == 1 and ex[0] in variant and s == "partial":
                edit[ex[0]] = fill(sol[ex[0]].source, lambda body, indent: _indented(variant[ex[0]], indent))
                vis, note = 0, "passes the visible tests, fails a hidden one"
            elif n == 1 and s == "partial":
                note = "one exercise and no VISIBLE_ONLY entry: same as blank"
            weaken = [t.grade_id for t in lay.tests if t.exercise >= half] if s == "edited-test" else []
            nb, exp = build(edit, weaken=weaken), lay.score(ok, visible_only=vis)
        elif s in ("syntax-error", "exception"):
            rewrite = {"syntax-error": _syntax_error, "exception": _exception}[s]
            nb, exp = build(solved(all_ids, rewrite, which=[ex[last]])), lay.score(broken_last)
        elif s == "infinite-loop":
            # At the top of the cell, so it hangs once; a loop inside the function would hang
            # every cell that calls it, each for the full timeout.
            edit = solved(all_ids)
            edit[ex[last]] = LOOP + edit[ex[last]]
            nb, exp = build(edit), lay.score(broken_last)
        elif s == "deleted-test":
            nb, exp = build(solved(all_ids), drop=test_ids), lay.score(full)
        elif s == "stderr-warnings":
            nb, exp = build(solved(all_ids, _stderr, which=ex)), lay.score(full)
        elif s == "out-of-order":
            nb = build(solved(all_ids))
            moved = next(c for c in nb.cells if _nbgrader_meta(c).get("grade_id") == ex[last])
            nb.cells.remove(moved)
            nb.cells.append(moved)
            code = [c for c in nb.cells if c.cell_type == "code"]
            for k, c in enumerate(code):  # stale outputs of a session run in another order
                c.execution_count = len(code) - k
                c.outputs = [nbformat.v4.new_output("stream", name="stdout", text="visible tests passed\n")]
            exp = lay.score(broken_last)
        else:
            raise ValueError(f"scenarios: unknown scenario {s!r}; known: {SCENARIOS}")
        subs.append(Submission(s, assignment, nb, exp, note))
    return subs


# --------------------------------------------------------------------------- the course
def nbgrader(course_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run an nbgrader command in ``course_dir`` (it reads that folder's nbgrader_config.py)."""
    proc, _ = _nbgrader_cpu(course_dir, *args)
    if check and proc.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _nbgrader_cpu(course_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run an nbgrader command; return its result and the CPU seconds it and its kernels used.

    The venv's bin/ goes first on PATH: nbgrader runs the ``alembic`` executable when it
    creates a gradebook, and fails with "No such file or directory: 'alembic'" without it.
    os.wait4 measures this one process tree; RUSAGE_CHILDREN would also count the nbgrader
    runs of the other grading workers that ended meanwhile.
    """
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
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


def _grade(course_dir: Path, name: str, students: tuple[str, ...], run: ClassRun, log) -> None:
    """Autograde one assignment in ``course_dir`` (the course or a shard of it) and generate its
    feedback; record the times, exit status and logs in ``run`` (each worker its own keys)."""
    start = time.time()
    # nbgrader grades the other students when one fails and exits 1 at the end: record it,
    # and let the callers see which submissions were not graded
    proc, cpu = _nbgrader_cpu(course_dir, "autograde", name, "--force")
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
    unknown = sorted({s for v in plan.values() for s in v} - set(SCENARIOS))
    if unknown:
        raise ValueError(f"scenarios: unknown {unknown}; known: {list(SCENARIOS)}")
    names = make_course(course_dir, names, timeout)
    subs = []
    for name in names:
        solution = read(course_dir / "solutions" / name / f"{name}.ipynb")
        released = read(course_dir / "notebooks" / name / f"{name}.ipynb")
        subs += fabricate(name, solution, released, plan[name])
    write_submissions(course_dir, subs)
    shards = _shards(plan, workers)
    run = ClassRun(course_dir, subs, workers=max(len(shards), 1))
    log(f"grading {len(subs)} submissions with {run.workers} worker(s): {shards}")

    def grade(folder: Path, shard: list[str]) -> None:
        for name in shard:
            _grade(folder, name, plan[name], run, log)

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


# --------------------------------------------------------------------------- feedback
class HideHiddenTests(ClearHiddenTests):
    """Feedback without hidden tests: their source and the tracebacks that quote it.

    nbgrader's feedback shows the autograded notebook, in which the hidden tests were put
    back. This removes the hidden regions from graded cells and, in those cells, replaces an
    error's traceback (IPython quotes the failing line and its neighbours) with the error's
    last line. nbgrader_config.py puts it in ``GenerateFeedback.preprocessors``.
    """

    # configurable, as in GetGrades: nbconvert's HTML exporter sets it for every preprocessor
    display_data_priority = List(["text/html", "application/pdf", "text/latex", "image/svg+xml", "image/png",
                                  "image/jpeg", "text/plain"]).tag(config=True)
    notice = Unicode(
        "(traceback not shown: this cell runs hidden tests; run the visible tests in your "
        "notebook to see where your code fails)",
        help="Shown instead of the traceback of an error in a cell with hidden tests.",
    ).tag(config=True)

    def preprocess_cell(self, cell, resources, index):
        if not nbgrader_utils.is_grade(cell):  # only test cells hold hidden tests
            return cell, resources
        if self._remove_hidden_test_region(cell) and cell.cell_type == "code":
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output.get('ename', 'Error')}: {output.get('evalue', '')}",
                                           self.notice]
        return cell, resources


def html_text(page: str) -> str:
    """The visible text of an HTML page: tags dropped, entities decoded, spaces collapsed."""
    page = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", page)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", page)))


#: Shorter hidden-test lines (``try:``, ``except ValueError:``) also occur in library tracebacks.
MIN_LEAK_CHARS = 20


def hidden_lines(solution_nb, released_nb) -> list[str]:
    """Distinctive lines of the hidden tests (at least ``MIN_LEAK_CHARS`` characters) that the
    student version does not already show."""
    shown = re.sub(r"\s+", " ", "\n".join(c.source for c in released_nb.cells))
    lines = []
    for cell in solution_nb.cells:
        inside = False
        for line in cell.source.split("\n"):
            if BEGIN_HIDDEN in line:
                inside = True
            elif END_HIDDEN in line:
                inside = False
            elif inside and line.strip():
                text = re.sub(r"\s+", " ", line.strip())
                if len(text) >= MIN_LEAK_CHARS and text not in shown:
                    lines.append(text)
    return lines


def leaks(page: str, solution_nb, released_nb) -> list[str]:
    """Hidden test lines (or the hidden-test markers) that appear in a feedback page."""
    text = html_text(page)
    found = [line for line in hidden_lines(solution_nb, released_nb) if line in text]
    return found + [m for m in (BEGIN_HIDDEN, END_HIDDEN) if m in text]


def check_feedback(course_dir: Path, source: str = "solutions", release: str = "notebooks") -> dict[str, list[str]]:
    """Hidden test lines found in the feedback pages of a real course: {page: lines}.

    HideHiddenTests keeps them out of the test cells, but a learner's own cells run as the
    grader and can read the solutions or the gradebook and print them; run this after
    ``nbgrader generate_feedback`` and before ``release_feedback``.
    """
    import nbformat

    course_dir = Path(course_dir)
    found = {}
    for page in sorted((course_dir / "feedback").glob("*/*/*.html")):
        name, nb = page.parent.name, page.stem
        sol = course_dir / source / name / f"{nb}.ipynb"
        rel = course_dir / release / name / f"{nb}.ipynb"
        if not (sol.is_file() and rel.is_file()):
            continue
        lines = leaks(page.read_text(errors="replace"), nbformat.read(sol, as_version=4),
                      nbformat.read(rel, as_version=4))
        if lines:
            found[str(page.relative_to(course_dir))] = lines
    return found


#: The class the test suite (and so CI) grades: every scenario on these notebooks, the
#: CORE_SCENARIOS on the others. The robustness scenarios (crash, loop, tampering) exercise
#: nbgrader and the course config, the same for every notebook; perfect/blank/partial check
#: each notebook's own points. $BERTLAB_FULL_CLASS=1, and benchmarks/grading.py, grade every
#: scenario on every notebook.
FULL_CLASS_NOTEBOOKS = ("00-welcome", "04-finetuning")
CORE_SCENARIOS = ("perfect", "blank", "partial")


def class_plan(names: list[str], full: bool | None = None) -> dict[str, tuple[str, ...]]:
    """``{notebook: scenarios}`` of the simulated class; ``full`` (default: $BERTLAB_FULL_CLASS)
    gives every notebook every scenario. A notebook in FULL_CLASS_NOTEBOOKS, or the only
    one asked for, always gets every scenario."""
    if full is None:
        full = os.environ.get("BERTLAB_FULL_CLASS", "") not in ("", "0")
    return {n: SCENARIOS if full or n in FULL_CLASS_NOTEBOOKS or len(names) == 1 else CORE_SCENARIOS
            for n in names}


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
