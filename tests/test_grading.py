"""Grading you can trust: a simulated class autograded by nbgrader, and the self-study check.

The slow tests build a throwaway course from solutions/ (bertlab.instructor.grading), fabricate one
submission per scenario for every notebook, and run ``nbgrader autograde``,
``generate_feedback`` and ``export`` over the class once (module fixture); each test then
reads what that run left behind. See bertlab/instructor/submissions.py for the scenarios and how
their expected scores are computed from the test cells' points.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from bertlab.instructor import autograde, course, feedback, grading, integrity, submissions

NAMES = grading.class_names() or course.assignments()  # $BERTLAB_CLASS limits the simulated class
PLAN = grading.class_plan(NAMES)  # every scenario on some notebooks, the core ones on the rest
PAIRS = [(a, s) for a in NAMES for s in PLAN[a]]
PAIR_IDS = [f"{a}/{s}" for a, s in PAIRS]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _solution(name, root=course.ROOT):
    return nbformat.read(root / "solutions" / name / f"{name}.ipynb", as_version=4)


def _released(name, root):
    """The student version as nbgrader generates it now (in ``root``/notebooks)."""
    return nbformat.read(root / "notebooks" / name / f"{name}.ipynb", as_version=4)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A folder whose notebooks/ holds freshly generated student versions of every assignment."""
    root = tmp_path_factory.mktemp("fresh")
    course.release(release_dir=root / "notebooks")
    return root


def _grade_id(cell):
    return cell.metadata.get("nbgrader", {}).get("grade_id")


# --------------------------------------------------------------------------- fast: configuration
def test_course_config_for_trustworthy_grading():
    cfg = course.load_config()
    assert cfg.Execute.timeout == 180 and cfg.Execute.interrupt_on_timeout, "a stuck cell must be stopped"
    assert cfg.OverwriteCells.add_missing_cells, "a deleted test cell must be added back and graded"
    assert "bertlab.instructor.feedback.HideHiddenTests" in cfg.GenerateFeedback.preprocessors, "feedback must hide hidden tests"
    assert cfg.IgnorePattern.enabled
    steps = list(cfg.Autograde.autograde_preprocessors)
    assert steps[0] == "bertlab.instructor.integrity.GuardedExecute", "autograde must scan, reset and check markers"
    assert not any(str(x).endswith(".Execute") for x in steps), "nbgrader's plain Execute must not run as well"
    assert "nbgrader.preprocessors.SaveAutoGrades" in steps and "nbgrader.preprocessors.IgnorePattern" in steps


def test_learner_and_instructor_labs():
    """`make lab` puts .jupyter/learner on JUPYTER_CONFIG_PATH (no instructor panels, no news pop-up),
    `make lab-instructor` .jupyter/instructor (every nbgrader panel)."""
    def page_config(who):
        return json.loads((course.ROOT / ".jupyter" / who / "labconfig" / "page_config.json").read_text())["disabledExtensions"]

    for target, who in (("lab", "learner"), ("lab-instructor", "instructor")):
        proc = subprocess.run(["make", "-n", target], cwd=course.ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert f'JUPYTER_CONFIG_PATH="{course.ROOT}/.jupyter/{who}' in proc.stdout, proc.stdout
        assert page_config(who)["@jupyterlab/apputils-extension:announcements"] is True, "no news pop-up"
    learner = page_config("learner")
    for plugin in ("create-assignment", "formgrader", "course-list"):
        assert learner[f"@jupyter/nbgrader:{plugin}"] is True, f"the learner sees {plugin}"
    assert not any(k in learner for k in ("@jupyter/nbgrader:validate-assignment", "@jupyter/nbgrader:assignment-list",
                                          "@jupyter/nbgrader:menu")), "the learner keeps Validate and Assignments"
    assert not any("nbgrader" in k for k in page_config("instructor")), "the instructor keeps every panel"
    server = json.loads((course.ROOT / ".jupyter" / "learner" / "jupyter_server_config.json").read_text())
    assert server["ServerApp"]["jpserver_extensions"]["nbgrader.server_extensions.formgrader"] is False


def _stderr_of(code):
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip(), f"expected stderr from {code!r}"
    return proc.stderr


@pytest.mark.parametrize("code", [
    # exactly what the stderr-warnings student runs, after env.setup() silenced warnings
    "import warnings; warnings.filterwarnings('ignore')\n" + submissions.STDERR_WARNING,
    "import torch; torch.tensor(torch.zeros(1))",  # UserWarning: To copy construct from a tensor
    "import warnings; warnings.warn('x', FutureWarning)",
    "import warnings; warnings.warn('x', DeprecationWarning, stacklevel=1)",
    "import logging; logging.basicConfig(); logging.getLogger('transformers').warning('slow tokenizer')",
    "from tqdm import tqdm\nfor _ in tqdm(range(3)): pass",
], ids=["numpy-runtimewarning", "torch-userwarning", "futurewarning", "deprecationwarning", "logging", "tqdm"])
def test_harmless_stderr_is_dropped_before_grading(code):
    """IgnorePattern (course config) drops real library stderr, so it cannot zero a test cell."""
    from nbgrader.preprocessors import IgnorePattern
    from nbgrader.utils import determine_grade

    text = _stderr_of(code)
    cell = nbformat.v4.new_code_cell("pass", metadata={"nbgrader": {
        "grade": True, "grade_id": "t", "points": 2, "solution": False, "locked": True, "schema_version": 3}})
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text=text)]
    assert determine_grade(cell) == (0, 2), "nbgrader zeroes a test cell with stderr"
    cell, _ = IgnorePattern(config=course.load_config()).preprocess_cell(cell, {}, 0)
    assert determine_grade(cell) == (2, 2), f"this stderr still costs the points: {text!r}"


def test_other_stderr_still_costs_the_points():
    from nbgrader.preprocessors import IgnorePattern
    from nbgrader.utils import determine_grade

    cell = nbformat.v4.new_code_cell("pass", metadata={"nbgrader": {
        "grade": True, "grade_id": "t", "points": 1, "solution": False, "locked": True, "schema_version": 3}})
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="shape mismatch in batch 3\n")]
    cell, _ = IgnorePattern(config=course.load_config()).preprocess_cell(cell, {}, 0)
    assert determine_grade(cell) == (0, 1)


def test_feedback_preprocessor_hides_hidden_source_and_traceback():
    source = ("assert f(1) == 1, 'visible'\n### BEGIN HIDDEN TESTS\n"
              "secret = f(-1)\nassert secret == 0, 'f of a negative'\n### END HIDDEN TESTS")
    cell = nbformat.v4.new_code_cell(source, metadata={"nbgrader": {
        "grade": True, "grade_id": "t", "points": 1, "solution": False, "locked": True, "schema_version": 3}})
    cell.outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue="f of a negative",
                                           traceback=["Cell In[3], line 4", "----> 4 secret = f(-1)"])]
    cell, _ = feedback.HideHiddenTests().preprocess_cell(cell, {}, 0)
    shown = cell.source + json.dumps(cell.outputs)
    assert "secret" not in shown and "HIDDEN" not in shown
    assert "assert f(1) == 1" in cell.source, "the visible tests stay in the feedback"
    assert cell.outputs[0]["traceback"][0] == "AssertionError: f of a negative"


def test_class_plan():
    names = ["00-welcome", "04-finetuning", "07-other"]
    plan = grading.class_plan(names, full=False)
    assert plan["04-finetuning"] == submissions.SCENARIOS
    assert plan["00-welcome"] == submissions.SCENARIOS + submissions.HOSTILE_SCENARIOS + submissions.RESOURCE_SCENARIOS, \
        "the hostile class on 00"
    assert set(grading.HOSTILE_NOTEBOOKS) <= set(submissions.WRONG), "a hostile notebook needs a WRONG answer"
    assert plan["07-other"] == grading.CORE_SCENARIOS
    assert set(grading.CORE_SCENARIOS) < set(submissions.SCENARIOS)
    assert {"perfect", "blank"} <= set(grading.CORE_SCENARIOS), "test_notebooks.py skips validate for them"
    assert all(v[:len(submissions.SCENARIOS)] == submissions.SCENARIOS for v in grading.class_plan(names, full=True).values())
    assert grading.class_plan(["07-other"], full=False) == {"07-other": submissions.SCENARIOS}, "one notebook asked for: all"
    assert set(grading.FULL_CLASS_NOTEBOOKS) <= set(course.assignments()), "FULL_CLASS_NOTEBOOKS names a missing notebook"
    with pytest.raises(ValueError, match="unknown"):
        grading.run_class(course.ROOT / ".no-such-class", ["00-welcome"], scenarios={"00-welcome": ("napping",)})


# --------------------------------------------------------------------------- fast: parallel grading
def test_shards_cover_every_assignment_once_and_balance():
    plan = {"00-a": submissions.SCENARIOS, "01-b": grading.CORE_SCENARIOS, "02-c": grading.CORE_SCENARIOS,
            "03-d": (), "04-e": submissions.SCENARIOS, "05-f": grading.CORE_SCENARIOS}
    graded = [n for n in plan if plan[n]]
    for workers in (1, 2, 3, 10):
        shards = grading._shards(plan, workers)
        assert len(shards) == min(workers, len(graded))
        assert sorted(n for shard in shards for n in shard) == graded, "each assignment with students, once"
        assert all(shard == sorted(shard) for shard in shards), "a shard grades in course order"
        loads = [sum(len(plan[n]) for n in shard) for shard in shards]
        assert max(loads) - min(loads) <= len(submissions.SCENARIOS), loads
    assert not any({"00-a", "04-e"} <= set(shard) for shard in grading._shards(plan, 2)), "the big two apart"
    with pytest.raises(ValueError, match="workers"):
        grading.run_class(course.ROOT / ".no-such-class", ["00-welcome"], workers=0)


def test_grading_workers_share_the_cores(tmp_path, monkeypatch):
    """A worker's nbgrader (and so its kernels) runs with OMP_NUM_THREADS = its share of the
    cores, which torch takes as its thread count; without ``threads`` the environment is the grader's."""
    seen, real_popen = [], subprocess.Popen

    def popen(cmd, **kwargs):
        seen.append(kwargs["env"])
        return real_popen(cmd, **kwargs)

    monkeypatch.setattr(autograde.subprocess, "Popen", popen)
    for threads in (1, None):
        proc, _ = autograde._nbgrader_cpu(tmp_path, "--version", threads=threads)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert seen[0]["OMP_NUM_THREADS"] == "1"
    assert seen[1].get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")
    script = "import torch; print(torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", script], env=seen[0], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1", f"a kernel with OMP_NUM_THREADS=1 runs torch on {out.strip()} threads"


@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")  # nbgrader's add_submission: see autograde.merge_shard
def test_merging_shards_gives_the_union(tmp_path, monkeypatch):
    """Two graded shards (copies of one course, tiny files, scores written with nbgrader's API)
    merge into the course's gradebook and folders."""
    from nbgrader.api import Gradebook

    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")  # alembic
    course_dir = tmp_path / "course"
    (course_dir / "solutions").mkdir(parents=True)
    (course_dir / "nbgrader_config.py").write_text("c = get_config()\n")
    with Gradebook(f"sqlite:///{course_dir / 'gradebook.db'}") as gb:
        for name in ("00-a", "01-b"):
            (course_dir / "solutions" / name).mkdir()
            gb.add_assignment(name)
            gb.add_notebook(name, name)
            gb.add_grade_cell("test", name, name, max_score=2, cell_type="code")
            gb.add_solution_cell("answer", name, name)
    graded = {("perfect", "00-a"): 2.0, ("blank", "00-a"): 0.0, ("perfect", "01-b"): 2.0, ("partial", "01-b"): 1.0}
    shards = [autograde.shard_course(course_dir, tmp_path / "shards" / str(k), [name])
              for k, name in enumerate(("00-a", "01-b"))]  # as run_class does: all copied, then graded
    for k, (shard, name) in enumerate(zip(shards, ("00-a", "01-b"))):
        with Gradebook(f"sqlite:///{shard / 'gradebook.db'}") as gb:
            for (student, a), points in graded.items():
                if a == name:
                    gb.add_student(student)
                    gb.add_submission(name, student)
                    gb.find_grade("test", name, name, student).auto_score = points
                    gb.find_comment("answer", name, name, student).auto_comment = f"{student} in shard {k}"
                    for tree, ext in (("autograded", "ipynb"), ("feedback", "html")):
                        page = shard / tree / student / name / f"{name}.{ext}"
                        page.parent.mkdir(parents=True)
                        page.write_text(student)
            gb.db.commit()
        autograde.merge_shard(course_dir, shard, [name])
    assert autograde.gradebook_scores(course_dir) == {key: {"test": v} for key, v in graded.items()}
    with Gradebook(f"sqlite:///{course_dir / 'gradebook.db'}") as gb:
        assert gb.find_comment("answer", "01-b", "01-b", "partial").auto_comment == "partial in shard 1"
    run = autograde.ClassRun(course_dir, [])
    for student, a in graded:
        assert run.autograded(student, a).read_text() == run.feedback(student, a).read_text() == student
    # a regrade of one student (autograde_class): the shard's gradebook, a copy of the course's, also
    # holds the other students' grades, stale by then: only the regraded student's replace the course's
    with Gradebook(f"sqlite:///{shards[0] / 'gradebook.db'}") as gb:
        gb.find_grade("test", "00-a", "00-a", "blank").auto_score = 1.0
        gb.find_grade("test", "00-a", "00-a", "perfect").auto_score = 0.0
        gb.db.commit()
    autograde.merge_shard(course_dir, shards[0], ["00-a"], {"00-a": ["blank"]})
    scores = autograde.gradebook_scores(course_dir)
    assert scores[("blank", "00-a")] == {"test": 1.0}, "the regraded submission replaces the old one"
    assert scores[("perfect", "00-a")] == {"test": 2.0}, "a student outside the shard's share is not merged"


def test_student_shards_split_every_assignment_evenly(tmp_path, capsys):
    plan = {"00-a": [f"s{i:02d}" for i in range(7)], "01-b": ["s00", "s01"], "02-c": []}
    for workers in (1, 2, 3, 20):
        shards = autograde._student_shards(plan, workers)
        assert len(shards) == min(workers, 9)
        pairs = sorted((a, s) for shard in shards for a, students in shard.items() for s in students)
        assert pairs == sorted((a, s) for a in plan for s in plan[a]), "every submission exactly once"
        sizes = [sum(map(len, shard.values())) for shard in shards]
        assert max(sizes) - min(sizes) <= 1, sizes
    for student, a in (("bob", "01-b"), ("ann", "00-a"), ("bob", "00-a")):
        (tmp_path / "submitted" / student / a).mkdir(parents=True)
    assert autograde.submitted(tmp_path) == {"00-a": ["ann", "bob"], "01-b": ["bob"]}
    assert autograde.submitted(tmp_path, ["01-b"]) == {"01-b": ["bob"]}
    with pytest.raises(ValueError, match=r"names: no submissions of \['09-z'\]"):
        autograde.submitted(tmp_path, ["09-z"])
    with pytest.raises(SystemExit):
        grading.main(["autograde", "--course", str(tmp_path)])
    assert "has no nbgrader_config.py" in capsys.readouterr().err, "the command names what is missing"
    (tmp_path / "nbgrader_config.py").touch()
    with pytest.raises(FileNotFoundError, match="has no gradebook.db"):
        autograde.autograde_class(tmp_path)
    (tmp_path / "gradebook.db").touch()
    with pytest.raises(ValueError, match="workers: expected at least 1, got 0"):
        autograde.autograde_class(tmp_path, workers=0)


def test_autograde_command_refuses_an_assignment_the_gradebook_lacks(tmp_path, monkeypatch):
    from nbgrader.api import Gradebook

    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")  # alembic
    (tmp_path / "nbgrader_config.py").write_text("c = get_config()\n")
    with Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}") as gb:
        gb.add_assignment("00-a")
    for a in ("00-a", "01-b"):
        (tmp_path / "submitted" / "ann" / a).mkdir(parents=True)
    with pytest.raises(ValueError, match=r"names: \['01-b'\] not in .*nbgrader generate_assignment 01-b"):
        autograde.autograde_class(tmp_path, progress=False)
    assert not (tmp_path / "shards").exists() and not (tmp_path / "autograde_times.csv").exists(), "nothing written"


@pytest.mark.slow
def test_autograde_command_grades_a_class_in_parallel(tmp_path, capsys):
    """The instructor's command on a real nbgrader course: two workers, each a share of the
    students, the scores the serial class gets, feedback, a CSV of times, progress on stderr."""
    course_dir = tmp_path / "course"
    name = "00-welcome"
    grading.make_course(course_dir, [name])
    subs = submissions.fabricate(name, _solution(name, course_dir), _released(name, course_dir), grading.CORE_SCENARIOS)
    grading.write_submissions(course_dir, subs)
    assert grading.main(["autograde", name, "--course", str(course_dir), "--workers", "2"]) == 0
    out, err = capsys.readouterr()
    assert f"autograde: {len(subs)} submissions" in out and "worker(s)" in out
    assert f"{len(subs)}/{len(subs)}" in err, "the progress bar reaches every submission"
    scores = autograde.gradebook_scores(course_dir)
    for s in subs:
        assert scores[(s.student, name)] == s.expected, f"{s.student}: {scores[(s.student, name)]} vs {s.expected}"
        assert (course_dir / "feedback" / s.student / name / f"{name}.html").is_file()
    assert not (course_dir / "shards").exists()
    import csv as csv_module
    with open(course_dir / "autograde_times.csv") as fh:
        rows = list(csv_module.DictReader(fh))
    assert sorted(r["student"] for r in rows) == sorted(s.student for s in subs)
    assert {r["worker"] for r in rows} == {"0", "1"}, "both workers graded"
    for r, s in ((r, next(s for s in subs if s.student == r["student"])) for r in rows):
        assert float(r["score"]) == s.expected_total and float(r["seconds"]) > 0


# --------------------------------------------------------------------------- fast: fabrication
@pytest.mark.slow  # generating the student versions takes seconds per notebook
@pytest.mark.parametrize("name", NAMES)
def test_fabricated_submissions(fresh, name):
    solution, released = _solution(name), _released(name, fresh)
    lay = submissions.layout(solution, name)
    subs = {s.student: s for s in submissions.fabricate(name, solution, released)}
    assert set(subs) == set(submissions.SCENARIOS)
    assert subs["perfect"].expected_total == lay.total > 0
    assert subs["blank"].expected_total == 0, "every graded test must fail on the student version"
    assert subs["blank"].nb.cells == released.cells
    stub = course.load_config().ClearSolutions.code_stub["python"]
    assert not any(stub in c.source for c in subs["perfect"].nb.cells), "perfect leaves a stub"
    assert not any("BEGIN SOLUTION" in c.source for c in subs["perfect"].nb.cells)
    assert not any(c.metadata.get("nbgrader", {}).get("grade") for c in subs["deleted-test"].nb.cells)
    for s in subs.values():
        nbformat.validate(s.nb)
        assert set(s.expected) == {t.grade_id for t in lay.tests}
        assert 0 <= s.expected_total <= lay.total
    last = {t.grade_id for t in lay.tests if t.exercise == len(lay.exercises) - 1}
    for broken in ("syntax-error", "exception", "infinite-loop", "out-of-order"):
        assert subs[broken].expected_total == lay.total - sum(t.points for t in lay.tests if t.grade_id in last)


# --------------------------------------------------------------------------- slow: the class
@pytest.fixture(scope="module")
def klass(tmp_path_factory, pytestconfig):
    """The class of PLAN, autograded once (minutes). Its log (seconds per submission of each
    notebook) goes to the terminal, like the course's table of wall times: CI's record of both."""
    assert "NBGRADER_EXECUTION" not in os.environ
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def log(msg):
        with capture.global_and_fixture_disabled():
            print(f"\n[class] {msg}", flush=True)

    return grading.run_class(tmp_path_factory.mktemp("class"), NAMES, scenarios=PLAN, log=log)


@pytest.mark.slow
def test_the_batch_finishes_for_every_student(klass):
    failed = {a: rc for a, rc in klass.autograde_rc.items() if rc}
    assert not failed, f"nbgrader autograde exited non-zero for {failed}: " + "\n".join(
        line for a in failed for line in klass.logs[f"autograde {a}"].splitlines()
        if "ERROR" in line or "Error:" in line)[-3000:]
    for s in klass.submissions:
        assert klass.autograded(s.student, s.assignment).is_file(), f"{s.assignment}/{s.student} was not autograded"
        assert (s.student, s.assignment) in klass.scores, f"{s.assignment}/{s.student} has no grades"
        assert klass.feedback(s.student, s.assignment).is_file(), f"{s.assignment}/{s.student} has no feedback"
        assert (s.student, s.assignment) in klass.exported, f"{s.assignment}/{s.student} is not in grades.csv"


@pytest.mark.slow
@pytest.mark.parametrize("name,student", PAIRS, ids=PAIR_IDS)
def test_exact_score(klass, name, student):
    sub = klass.submission(student, name)
    got = klass.scores[(student, name)]
    assert got == sub.expected, f"{name}/{student}: points per test cell {got}, expected {sub.expected} {sub.note}"
    assert klass.exported[(student, name)] == sub.expected_total, "grades.csv disagrees with the gradebook"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_full_marks_for_perfect_zero_for_blank(klass, name):
    total = submissions.layout(_solution(name, klass.course_dir), name).total
    assert klass.exported[("perfect", name)] == total
    assert klass.exported[("blank", name)] == 0


def _test_cells(nb):
    return {_grade_id(c): c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")}


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if {"edited-test", "deleted-test"} <= set(PLAN[n])])
def test_edited_and_deleted_tests_are_restored(klass, name):
    originals = _test_cells(_solution(name, klass.course_dir))
    for student in ("edited-test", "deleted-test"):
        graded = _test_cells(nbformat.read(klass.autograded(student, name), as_version=4))
        assert set(graded) == set(originals), f"{student}: test cells {sorted(graded)}, expected {sorted(originals)}"
        for gid, cell in graded.items():
            assert originals[gid].source in cell.source, f"{student}: {gid} was not restored to the original"
            assert cell.execution_count is not None, f"{student}: restored {gid} did not run"
    sub = klass.submission("edited-test", name)
    weakened = [c for c in sub.nb.cells if "weakened" in c.source]
    assert weakened, "the edited-test student weakened no test"
    assert all(sub.expected[_grade_id(c)] == 0 for c in weakened), "a weakened test must fail once restored"


def _timeout_error(cell):
    names = [o.get("ename") for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    return "CellTimeoutError" in names


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if "infinite-loop" in PLAN[n]])
def test_the_timeout_stops_the_loop_and_grading_goes_on(klass, name):
    nb = nbformat.read(klass.autograded("infinite-loop", name), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    hung = [i for i, c in enumerate(code) if _timeout_error(c)]
    assert len(hung) == 1, f"expected exactly the looping cell to time out, got cells {hung}"
    assert submissions.LOOP.split("\n")[0] in code[hung[0]].source
    after = [c for c in code[hung[0] + 1:] if c.execution_count is None]
    assert not after, f"{len(after)} cells after the loop were not executed"


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if len(submissions.layout(_solution(n), n).exercises) == 1
                                  and n in submissions.VISIBLE_ONLY])
def test_visible_only_solution_fails_in_the_hidden_tests(klass, name):
    """The partial student of a one-exercise notebook passes the visible tests: only the
    hidden tests (restored by nbgrader) catch it."""
    nb = nbformat.read(klass.autograded("partial", name), as_version=4)
    for gid, cell in _test_cells(nb).items():
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if not errors or "BEGIN HIDDEN TESTS" not in cell.source:
            continue
        lines = cell.source.split("\n")
        hidden_from = next(i for i, line in enumerate(lines) if "BEGIN HIDDEN TESTS" in line) + 1
        tb = ANSI.sub("", "\n".join(errors[0].traceback))
        failed_at = int(re.search(r"Cell In\[\d+\], line (\d+)", tb).group(1))
        assert failed_at > hidden_from, f"{gid} failed at line {failed_at}, in the visible tests:\n{tb[-1500:]}"


@pytest.mark.slow
def test_feedback_never_shows_hidden_tests(klass):
    leaked, detector_works = {}, False
    for name in NAMES:
        solution, released = _solution(name, klass.course_dir), _released(name, klass.course_dir)
        if not feedback.hidden_lines(solution, released):
            continue
        for student in PLAN[name]:
            page = klass.feedback(student, name).read_text()
            found = feedback.leaks(page, solution, released)
            if found:
                leaked[f"{name}/{student}"] = found[:3]
            visible = next(c for c in released.cells if c.metadata.get("nbgrader", {}).get("grade"))
            first = visible.source.strip().split("\n")[0].strip()
            assert first in feedback.html_text(page), f"{name}/{student}: the visible tests are missing from the feedback"
        # nbgrader's default feedback (plain HTML of the autograded notebook) does leak: the check can see it
        from nbconvert import HTMLExporter
        plain, _ = HTMLExporter().from_notebook_node(nbformat.read(klass.autograded("partial", name), as_version=4))
        detector_works |= bool(feedback.leaks(plain, solution, released))
    assert not leaked, f"hidden test source in the feedback: {leaked}"
    assert feedback.check_feedback(klass.course_dir) == {}, "the instructors' check disagrees"
    assert detector_works, "the leak check found nothing even in nbgrader's unfiltered HTML"


@pytest.mark.slow
def test_grading_log_reports_restored_and_timed_out_cells(klass):
    logs = "\n".join(v for k, v in klass.logs.items() if k.startswith("autograde"))
    assert "Missing grade cell" in logs, "nbgrader did not report adding back the deleted test cells"
    assert "Traceback (most recent call last)" not in logs, "nbgrader itself crashed on a submission"


# --------------------------------------------------------------------------- slow: the exchange
@pytest.mark.slow
def test_exchange_round_trip(tmp_path):
    """release_assignment -> fetch_assignment -> submit -> collect, with the exchange in tmp_path."""
    course_dir = tmp_path / "course"
    name = NAMES[0]
    grading.make_course(course_dir, [name])
    home = tmp_path / "student"
    home.mkdir()
    autograde.nbgrader(course_dir, "release_assignment", name)
    proc = autograde.nbgrader(course_dir, "list")
    listed = proc.stdout + proc.stderr
    assert name in listed, listed
    # A learner works in their own folder; the course id and exchange come from a global config
    # (/etc/jupyter/nbgrader_config.py on a hub; here a private JUPYTER_CONFIG_DIR).
    etc = tmp_path / "etc-jupyter"
    etc.mkdir()
    (etc / "nbgrader_config.py").write_text(
        f"c = get_config()\nc.CourseDirectory.course_id = 'bertlab'\nc.Exchange.root = {str(course_dir / 'exchange')!r}\n")
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(etc),
               PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    for args in (["fetch_assignment", name], ["submit", name]):
        proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=home, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (home / name / f"{name}.ipynb").is_file()
    autograde.nbgrader(course_dir, "collect", name)
    submitted = list((course_dir / "submitted").glob(f"*/{name}/{name}.ipynb"))
    assert len(submitted) == 1, f"collect did not place the submission: {submitted}"
    assert (submitted[0].parent / "timestamp.txt").is_file()


# --------------------------------------------------------------------------- slow: self-study
SELF_CHECK = "00-welcome"


def test_make_validate_is_the_nbgrader_cli():
    """`make validate NB=...` (README, notebook 00) runs `nbgrader validate` on that notebook."""
    nb = f"notebooks/{SELF_CHECK}/{SELF_CHECK}.ipynb"
    proc = subprocess.run(["make", "-n", "validate", f"NB={nb}"], cwd=course.ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"nbgrader validate {nb}" in proc.stdout, proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("folder,passes", [("notebooks", False), ("solutions", True)])
def test_nbgrader_validate_cli_reports_what_the_learner_needs(folder, passes):
    """The documented self-check, run as a learner would from the course folder. It exits 0
    either way, so the text is what tells a failing exercise from a passing one."""
    nb = f"{folder}/{SELF_CHECK}/{SELF_CHECK}.ipynb"
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "nbgrader"), "validate", nb],
                          cwd=course.ROOT, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    if passes:
        assert "Success! Your notebook passes all the tests." in out, out[-3000:]
        assert "VALIDATION FAILED" not in out
    else:
        assert "VALIDATION FAILED" in out, out[-3000:]
        assert "NotImplementedError" in out, "the report should show which exercise is not done"


# --------------------------------------------------------------------------- fast: integrity
def test_scan_finds_every_trick_and_nothing_in_honest_work():
    """The static scan (bertlab.instructor.integrity) reports each hostile trick and nothing in the
    honest students' cells, nor in any instructor notebook's cells."""
    name = "00-welcome"
    sol, rel = _solution(name), nbformat.read(course.ROOT / "notebooks" / name / f"{name}.ipynb", as_version=4)
    ins = integrity.instructor_sources(sol) | integrity.instructor_sources(rel)
    for s in submissions.fabricate(name, sol, rel, submissions.ALL_SCENARIOS):
        found = integrity.scan(s.nb, ins)
        if s.student in submissions.HOSTILE_SCENARIOS:
            assert found, f"{s.student}: the scan found nothing"
        elif s.student in submissions.RESOURCE_SCENARIOS:
            assert not found, f"{s.student} is written past the scan (only the sandbox may stop it): {found}"
        else:
            assert not found, f"{s.student} (honest) flagged: {[str(f) for f in found]}"
    for n in course.assignments():
        nb = _solution(n)
        own = integrity.instructor_sources(nb)
        assert integrity.scan(nb, own) == [], f"{n}: an instructor cell counted as the learner's"
        solved = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"]
        for c in solved:  # the solutions, as a learner would hand them in
            assert integrity.scan_source(c.source) == [], f"{n}: the solution {_grade_id(c)} is flagged"
    for source in ("import sys\nsys.settrace(lambda *a: None)", "sys.setprofile(f)",
                   "open('../../../gradebook.db', 'wb')", "open(p, mode='a').write('x')",
                   "import os\nos.chdir('/')", "get_ipython().ast_transformers.append(t)",
                   "class A:\n    def __eq__(self, other):\n        return True",
                   "__builtins__.abs = lambda x: 0", "import builtins\nbuiltins.AssertionError = Exception",
                   "from pathlib import Path\nPath('x').write_text('y')", "!rm -rf ~", "exec(code)",
                   "get_ipython().events.register('pre_run_cell', f)", "import socket"):
        assert integrity.scan_source(source), f"not flagged: {source!r}"


def _graded(source, gid="t"):
    return nbformat.v4.new_code_cell(source, metadata={"nbgrader": {
        "grade": True, "grade_id": gid, "points": 1, "solution": False, "locked": True, "schema_version": 3}})


def _guarded_run(tmp_path, cells, **settings):
    """Run GuardedExecute (as nbgrader autograde does) on a small notebook in a course folder
    ``tmp_path``; the kernel's folder is autograded/learner/a."""
    from traitlets.config import Config

    folder = tmp_path / "autograded" / "learner" / "a"
    folder.mkdir(parents=True)
    (tmp_path / "solutions" / "a").mkdir(parents=True)
    (tmp_path / "solutions" / "a" / "key.txt").write_text("the answer key")
    (tmp_path / "gradebook.db").write_text("grades")
    cfg = Config()
    cfg.CourseDirectory.root = str(tmp_path)
    cfg.CourseDirectory.source_directory = "solutions"  # as the course names it
    cfg.Execute.timeout = 60
    cfg.Sandbox.allow_unsandboxed = True  # these tests grade wherever the suite runs; test_grading_refuses_... checks the default
    for k, v in settings.pop("sandbox", {}).items():
        setattr(cfg.Sandbox, k, v)
    for k, v in settings.items():
        setattr(cfg.GuardedExecute, k, v)
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    pp = integrity.GuardedExecute(config=cfg)
    nb, _ = pp.preprocess(nb, {"metadata": {"path": str(folder)},
                                "nbgrader": {"student": "learner", "assignment": "a", "notebook": "a"}})
    return nb


def _errors(cell):
    return [o.get("ename") for o in cell.outputs if o.get("output_type") == "error"]


def test_guarded_execute_resets_the_kernel_and_checks_markers(tmp_path):
    """Without the scan, the kernel reset and the end-of-cell marker still stop the tricks; with
    it, the test cells after a tampering cell get 0 and say why. Honest cells are untouched."""
    wrong = "def f(x):\n    return 0  # wrong: should be x"
    transformer = ("get_ipython().input_transformers_post.append("
                   "lambda lines: ['pass\\n'] if any('assert' in l for l in lines) else lines)")
    blank_all = "get_ipython().input_transformers_post.append(lambda lines: ['pass\\n'])"
    patched = "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})"
    nb = _guarded_run(tmp_path, [nbformat.v4.new_code_cell(wrong), nbformat.v4.new_code_cell(transformer),
                                 _graded("assert f(1) == 1, 'f(1)'\nprint('visible tests passed')", "t1"),
                                 nbformat.v4.new_code_cell(patched),
                                 _graded("assert AssertionError.__name__ == 'AssertionError'", "t2"),
                                 nbformat.v4.new_code_cell("import sys\nsys.settrace(lambda *a: None)"),
                                 _graded("import sys\nassert sys.gettrace() is None, 'trace on'", "t4"),
                                 nbformat.v4.new_code_cell(blank_all),
                                 _graded("print('ok')", "t3")],
                      scan_enabled=False)
    assert [c.source for c in nb.cells if integrity.GUARD_TAG in c.metadata.get("tags", [])] == []
    t1, t2, t4, t3 = (c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade"))
    assert _errors(t4) == [], "the trace function was turned off before the test"
    assert _errors(t1) == ["AssertionError"], "the reset removed the transformer: the wrong answer fails"
    assert _errors(t2) == [], "builtins were restored before the test"
    assert _errors(t3) == [integrity.ENAME], "a test cell rewritten to `pass` has no marker"
    assert "did not run to its end" in t3.outputs[0]["evalue"]
    assert not any("bertlab-graded-" in json.dumps(c.outputs) for c in nb.cells), "the marker is removed"
    assert t2.source == "assert AssertionError.__name__ == 'AssertionError'", "the test's source is restored"

    honest = _guarded_run(tmp_path / "honest", [nbformat.v4.new_code_cell("def f(x):\n    return x"),
                                                _graded("assert f(1) == 1\nprint('visible tests passed')")])
    (t,) = [c for c in honest.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert _errors(t) == [] and t.outputs[0]["text"] == "visible tests passed\n"
    from nbgrader.utils import determine_grade
    assert determine_grade(t)[0] == 1

    scanned = _guarded_run(tmp_path / "scanned", [nbformat.v4.new_code_cell("def f(x):\n    return x"),
                                                  _graded("assert f(1) == 1", "t0"),
                                                  nbformat.v4.new_code_cell(transformer),
                                                  _graded("assert f(2) == 2", "t1")])
    t0, t1 = (c for c in scanned.cells if c.metadata.get("nbgrader", {}).get("grade"))
    assert _errors(t0) == [], "a test before the tampering cell keeps its points"
    assert _errors(t1)[0] == integrity.ENAME and "input transformer" in t1.outputs[0]["evalue"]
    assert determine_grade(t1)[0] == 0


def test_sandbox_hides_the_graders_files():
    """In the sandbox the kernel sees no solutions/ or gradebook and writes only its own folder;
    where bubblewrap cannot run here, the grading log must say so (never silently unsandboxed).
    The course is in /var/tmp: the sandbox gives the kernel a /tmp of its own."""
    import tempfile
    from pathlib import Path

    from bertlab.instructor import sandbox

    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="bertlab-sandbox-") as tmp:
        _sandbox_probe(Path(tmp), sandbox)


def test_sandbox_with_the_course_under_tmp(tmp_path):
    """A course (or a clone of this repository, as on a CI machine) under /tmp stays visible under
    the kernel's private /tmp, with its solutions and gradebook still hidden."""
    from bertlab.instructor import sandbox

    assert Path("/tmp") in tmp_path.resolve().parents, tmp_path
    _sandbox_probe(tmp_path, sandbox)


def test_sandbox_says_when_it_cannot_cut_the_network(monkeypatch, tmp_path):
    """Where bubblewrap cannot make a network namespace, the kernel talks TCP and keeps the
    network, and the grading log's Sandbox: line says so (never silently)."""
    import dataclasses

    from bertlab.instructor import sandbox

    real = sandbox.facts()
    monkeypatch.setattr(sandbox, "facts", lambda: dataclasses.replace(real, netns="bwrap --unshare-net failed: a test"))
    assert not sandbox.cuts_network(sandbox.Sandbox())
    if sandbox.mechanism() == "bwrap":
        assert "network NOT cut (bwrap --unshare-net failed: a test)" in sandbox.describe()
    _sandbox_probe(tmp_path, sandbox)


def test_sandbox_keeps_a_repository_under_tmp_importable(monkeypatch, tmp_path):
    """Laid out as bwrap reads it: the private /tmp first, then the repository, the venv and the
    course read-only again, then the hidden paths over them."""
    from bertlab.instructor import sandbox

    monkeypatch.setattr(sandbox, "facts", lambda: sandbox.Facts())  # bubblewrap works, as far as wrap() knows
    clone = tmp_path / "clone"
    (clone / "solutions").mkdir(parents=True)
    monkeypatch.setattr(sandbox.course, "ROOT", clone)
    cmd = sandbox.wrap(["python", "-m", "ipykernel_launcher"], str(tmp_path), config=None)
    tmpfs, keep = cmd.index("/tmp", cmd.index("--tmpfs")), cmd.index(str(clone.resolve()))
    assert tmpfs < keep and cmd[keep - 1] == "--ro-bind", cmd
    assert cmd.index("--chdir") > keep


def _sandbox_probe(tmp_path, sandbox):
    """Also: no network (a listener of this test's on 127.0.0.1 is out of reach) and no other
    process in sight (a PID namespace of its own), where bubblewrap can do that here."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    try:
        _sandbox_probe_with(tmp_path, sandbox, listener.getsockname()[1])
    finally:
        listener.close()


def _sandbox_probe_with(tmp_path, sandbox, port):
    probe = ("import pathlib, os, socket\n"
             "try:\n    socket.create_connection(('127.0.0.1', %d), timeout=10).close(); print('network open')\n"
             "except OSError as e:\n    print('network cut', type(e).__name__)\n"
             "print('processes', sum(p.isdigit() for p in os.listdir('/proc')))\n" % port +
             "root = pathlib.Path.cwd().parents[2]\n"
             "print('key', (root / 'solutions' / 'a' / 'key.txt').exists())\n"
             "try:\n    print('gradebook', (root / 'gradebook.db').read_text() == 'grades')\n"
             "except OSError as e:\n    print('gradebook', False, type(e).__name__)\n"
             "try:\n    (root / 'escaped.txt').write_text('x'); print('wrote outside')\n"
             "except OSError as e:\n    print('write outside refused', type(e).__name__)\n"
             "from jupyter_core.paths import jupyter_runtime_dir\n"
             "print('runtime', len(list(pathlib.Path(jupyter_runtime_dir()).glob('*.json'))))\n"
             "pathlib.Path('mine.txt').write_text('x'); print('own folder ok')")
    nb = _guarded_run(tmp_path, [nbformat.v4.new_code_cell(probe)], scan_enabled=False)
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert "own folder ok" in text, text
    if sandbox.mechanism() == "bwrap":
        assert "key False" in text and "gradebook False" in text and "write outside refused" in text, text
        assert not (tmp_path / "escaped.txt").exists()
        assert "runtime 0" in text, "other kernels' connection files (their keys) must be hidden"
        assert sandbox.describe().startswith("Sandbox: bubblewrap")
        assert int(re.search(r"processes (\d+)", text).group(1)) < 10, "the grader's processes are out of sight"
        if sandbox.cuts_network(sandbox.Sandbox()):
            assert "network cut ConnectionRefusedError" in text and "no network" in sandbox.describe(), text
        else:
            assert "network open" in text and "network NOT cut" in sandbox.describe(), text
    else:
        assert "NOT SANDBOXED" in sandbox.describe()


def test_sandbox_bounds_the_processes_of_a_root_grader(tmp_path):
    """prlimit --nproc does not bind root: a pids cgroup per kernel does (where it can be made;
    the log says which). The hog is bounded (40 processes of 5 s) whatever happens."""
    from bertlab.instructor import sandbox

    hog = ("import multiprocessing as mp, time\nn = 0\ntry:\n    for _ in range(40):\n"
           "        mp.Process(target=time.sleep, args=(5,), daemon=True).start(); n += 1\n"
           "except OSError as e:\n    print('refused after', n, e.strerror)\nelse:\n    print('started', n)")
    nb = _guarded_run(tmp_path, [nbformat.v4.new_code_cell(hog), _graded("print('graded after')")],
                      scan_enabled=False, sandbox={"processes": 30})
    text = "".join(o.get("text", "") for c in nb.cells for o in c.outputs)
    assert "graded after" in text, text
    if sandbox.processes_bounded():
        assert "refused after" in text and "Resource temporarily unavailable" in text, text
        assert "processes: a pids cgroup per kernel" in sandbox.describe() or os.getuid() != 0
    else:
        assert "started 40" in text and "process count NOT limited" in sandbox.describe(), text


def _every_machine():
    """Facts of every kind of machine: bubblewrap working, missing or refused its namespaces; a network
    namespace or not; prlimit or not; a pids cgroup or not; root or not."""
    import itertools

    from bertlab.instructor import sandbox

    for bwrap, netns, prlimit, cgroup, root in itertools.product(
            ("", sandbox.BWRAP_MISSING, "No permissions to creating new namespace"), ("", "bwrap --unshare-net failed: 1"),
            (True, False), ("", "no cgroup v1 pids hierarchy"), (True, False)):
        if bwrap and not netns:
            continue  # no network namespace without bubblewrap
        yield sandbox.Facts(bwrap=bwrap, netns=netns or ("no bubblewrap" if bwrap else ""), prlimit=prlimit,
                            pids_cgroup=cgroup, root=root)


def test_sandbox_decisions_and_the_log_line_agree_on_every_machine():
    """describe() is computed from the same facts as the decisions: on every kind of machine (driven
    here, whatever this one has), the line says exactly what the kernel gets."""
    from bertlab.instructor import sandbox

    machines = list(_every_machine())
    assert len(machines) == 32
    for f in machines:
        for enabled, cut, allow in ((True, True, False), (True, False, False), (True, True, True), (False, True, False)):
            s = sandbox.Sandbox(enabled=enabled, cut_network=cut, allow_unsandboxed=allow)
            line, bounded = sandbox.describe(s, f), sandbox.processes_bounded(f, s)
            where = f"{f}, enabled={enabled}, cut_network={cut}: {line}"
            assert ("NOT SANDBOXED" not in line) == sandbox.isolates_files(s, f) == (enabled and not f.bwrap), where
            assert ("no network (own network namespace" in line) == sandbox.cuts_network(s, f), where
            assert ("processes: a pids cgroup per kernel" in line) == (bounded and not f.pids_cgroup), where
            assert ("processes: --nproc" in line) == (bounded and bool(f.pids_cgroup)), where
            assert ("process count NOT limited" in line) == (enabled and not bounded), where
            # prlimit --nproc does not bind root: only a cgroup bounds a root grader
            assert bounded == (enabled and (not f.pids_cgroup or (not f.root and (not f.bwrap or f.prlimit)))), where
            refused = sandbox.refusal(s, f)
            assert bool(refused) == (enabled and not allow and bool(f.bwrap)), where
            if refused:
                assert f.bwrap in refused and "apt-get install bubblewrap" in refused and "--allow-unsandboxed" in refused
            status = sandbox.status_line(s, f)
            assert status.startswith("GRADED UNSANDBOXED") == (not sandbox.isolates_files(s, f)) and line in status
    # the case of issue 32: no bubblewrap, root, a writable pids cgroup: bounded, and the line says how
    f = sandbox.Facts(bwrap=sandbox.BWRAP_MISSING, netns="no bubblewrap", pids_cgroup="", root=True)
    assert sandbox.processes_bounded(f) and "processes: a pids cgroup per kernel" in sandbox.describe(f=f)
    assert sandbox.mechanism(f) == "prlimit" and "NOT SANDBOXED for files" in sandbox.describe(f=f)


def test_grading_refuses_without_the_file_sandbox_unless_allowed(monkeypatch, tmp_path, capsys):
    """Where bubblewrap is missing, nbgrader autograde (GuardedExecute) and the class command refuse,
    naming the package; --allow-unsandboxed grades, and the report says so first."""
    import dataclasses

    from bertlab.instructor import sandbox

    missing = dataclasses.replace(sandbox.facts(), bwrap=sandbox.BWRAP_MISSING, netns="no bubblewrap")
    monkeypatch.setattr(sandbox, "facts", lambda: missing)
    with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install bubblewrap"):
        _guarded_run(tmp_path / "refused", [_graded("print('graded')")], sandbox={"allow_unsandboxed": False})
    nb = _guarded_run(tmp_path / "allowed", [_graded("print('graded')")], sandbox={"allow_unsandboxed": True})
    assert nb.cells[0].outputs[0]["text"] == "graded\n"
    from nbgrader.api import Gradebook

    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")  # alembic
    course_dir = tmp_path / "course"
    course_dir.mkdir()
    (course_dir / "nbgrader_config.py").write_text((course.ROOT / "nbgrader_config.py").read_text())
    with Gradebook(f"sqlite:///{course_dir / 'gradebook.db'}") as gb:
        gb.add_assignment("00-a")
    (course_dir / "submitted" / "ann" / "00-a").mkdir(parents=True)
    monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
    graded = []
    monkeypatch.setattr(autograde, "grade_shards", lambda *a, **k: graded.append(a))
    with pytest.raises(SystemExit) as exit_:
        grading.main(["autograde", "--course", str(course_dir)])
    assert exit_.value.code == 2 and not graded, "refused before anything was graded"
    err = capsys.readouterr().err
    assert "refusing to grade without the file-system sandbox" in err and "apt-get install bubblewrap" in err, err
    assert grading.main(["autograde", "--course", str(course_dir), "--allow-unsandboxed"]) == 0 and graded
    out = capsys.readouterr().out
    assert out.startswith("GRADED UNSANDBOXED (grades may not be trustworthy). Sandbox: NOT SANDBOXED"), out
    assert (course_dir / "feedback" / "index.html").read_text().startswith("<p><strong>GRADED UNSANDBOXED")
    assert sandbox.Sandbox().allow_unsandboxed, "--allow-unsandboxed reaches nbgrader's processes through the environment"


@pytest.mark.slow
def test_the_sandbox_tests_pass_with_bubblewrap_hidden(tmp_path):
    """The fresh machine of issue 32: the sandbox and refusal tests run again in a process whose PATH
    has no bwrap (every other program still there), and pass. Where this machine has no bubblewrap,
    this run of the suite already is that machine."""
    import shutil

    if not shutil.which("bwrap"):
        pytest.skip("no bubblewrap here: the tests above ran without it")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        for exe in Path(folder).glob("*") if Path(folder).is_dir() else ():
            if exe.name != "bwrap" and not (bin_dir / exe.name).exists():
                (bin_dir / exe.name).symlink_to(exe)
    env = dict(os.environ, PATH=str(bin_dir))
    env.pop("BERTLAB_ALLOW_UNSANDBOXED", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
                           # the sandbox's own tests, not those reading the simulated class (it would be graded again)
                           "-k", "sandbox_hides or sandbox_with or sandbox_says or sandbox_keeps or sandbox_bounds "
                                 "or sandbox_decisions or refuses or sandboxed_kernel"],
                          cwd=course.ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\b9 passed", proc.stdout), proc.stdout[-2000:]
    assert shutil.which("bwrap", path=str(bin_dir)) is None


def test_sandboxed_kernel_is_interrupted_at_the_cell_timeout(tmp_path):
    """The cell timeout still interrupts a loop in the sandboxed kernel (by a message on the
    control channel: a SIGINT would also stop bubblewrap), and the next cells run."""
    from traitlets.config import Config

    cfg = Config()
    cfg.CourseDirectory.root = str(tmp_path)
    cfg.Execute.timeout = 3
    cfg.Execute.iopub_timeout = 60  # as the course (nbgrader_config.py): the machine may be busy
    cfg.Sandbox.allow_unsandboxed = True
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("while True:\n    pass"),
                                         _graded("print('after the loop')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb, _ = integrity.GuardedExecute(config=cfg).preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    assert "CellTimeoutError" in _errors(nb.cells[0])
    assert _errors(nb.cells[1]) == [] and nb.cells[1].outputs[0]["text"] == "after the loop\n"


# --------------------------------------------------------------------------- slow: hostile students
HOSTILE = [(a, s) for a, s in PAIRS if s in submissions.HOSTILE_SCENARIOS]


def _flags(nb):
    return [o for c in nb.cells for o in c.get("outputs", [])
            if o.get("output_type") == "error" and o.get("ename") == integrity.ENAME]


@pytest.mark.slow
@pytest.mark.parametrize("name,student", HOSTILE, ids=[f"{a}/{s}" for a, s in HOSTILE])
def test_hostile_submission_gets_zero_and_a_flag(klass, name, student):
    """0 for the exercise it cheats on (test_exact_score), and the reason in the graded test cell,
    the feedback and the grading log."""
    assert klass.exported[(student, name)] == 0
    nb = nbformat.read(klass.autograded(student, name), as_version=4)
    assert _flags(nb), f"{name}/{student}: no {integrity.ENAME} in the autograded notebook"
    assert "tampers with grading" in feedback.html_text(klass.feedback(student, name).read_text())
    assert f"Integrity: {student}:" in klass.logs[f"autograde {name}"]


@pytest.mark.slow
def test_honest_students_are_never_flagged_and_the_sandbox_is_logged(klass):
    from bertlab.instructor import sandbox

    for s in klass.submissions:
        if s.student in submissions.HOSTILE_SCENARIOS:
            continue
        nb = nbformat.read(klass.autograded(s.student, s.assignment), as_version=4)
        assert not _flags(nb), f"{s.assignment}/{s.student} (honest) was flagged: {_flags(nb)}"
        assert f"Integrity: {s.student}:" not in klass.logs[f"autograde {s.assignment}"]
    logs = "\n".join(v for k, v in klass.logs.items() if k.startswith("autograde"))
    assert "Sandbox: " in logs, "the grading log must say how submissions were isolated"
    assert klass.sandbox.startswith("GRADED UNSANDBOXED") == (sandbox.mechanism() != "bwrap"), klass.sandbox
    index = (klass.course_dir / "feedback" / "index.html").read_text()
    assert klass.sandbox.replace("&", "&amp;") in index.split("\n")[0].replace("&#x27;", "'"), index[:500]
    assert index.count("<li>") == len(klass.submissions), "the index links every feedback page"
    lines = []
    grading.report(klass, out=lines.append)
    assert lines[0] == klass.sandbox, "the class report says first how the class was isolated"
    if sandbox.mechanism() == "bwrap":
        assert not (klass.course_dir / submissions.HOSTILE_FILE).exists(), "a submission wrote into the course root"
    else:
        assert "NOT SANDBOXED" in logs


RESOURCE = [(a, s) for a, s in PAIRS if s in submissions.RESOURCE_SCENARIOS]


@pytest.mark.slow
@pytest.mark.parametrize("name,student", RESOURCE, ids=[f"{a}/{s}" for a, s in RESOURCE])
def test_the_sandbox_stops_the_attacks_on_the_machine(klass, name, student):
    """Network, memory, disk, processes: 0 for the exercise (test_exact_score), stopped by the sandbox (the
    scan does not see them), with the error in the exercise's cell or its test; the kernel lives
    on. Where the sandbox cannot stop one here, the student is expected to get the points."""
    from bertlab.instructor import sandbox

    nb = nbformat.read(klass.autograded(student, name), as_version=4)
    assert not _flags(nb), f"{student} is written past the scan"
    exercise = submissions.layout(_solution(name, klass.course_dir), name).exercises[-1]
    cell = next(c for c in nb.cells if _grade_id(c) == exercise)
    tests = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert all(c.execution_count is not None for c in tests), "every test cell still ran"
    errors = [(o.get("ename"), o.get("evalue")) for o in cell.outputs if o.get("output_type") == "error"]
    if student == "hostile-network":
        if sandbox.cuts_network(sandbox.Sandbox()):
            assert klass.accomplice_calls == 0, "a submission reached the accomplice on 127.0.0.1"
            assert any("ConnectionRefusedError" in e for t in tests for e in _errors(t)), "the tests' calls fail"
        else:
            assert klass.accomplice_calls > 0
    elif student == "hostile-processes":
        if sandbox.processes_bounded():
            assert any("Resource temporarily unavailable" in (v or "") for _, v in errors), errors
    elif sandbox.mechanism() != "none":
        want = {"hostile-memory": ("MemoryError", ""), "hostile-disk": ("OSError", "File too large")}[student]
        assert any(want[0] in (n or "") and want[1] in (v or "") for n, v in errors), f"{student}: {errors}"
