"""The notebooks: generated from solutions/, graded as intended, and runnable top to bottom."""
import json
import os

import nbformat
import pytest

from bertlab.instructor import course, grading

SOLUTIONS = course.notebook_paths("solutions")
RELEASED = course.notebook_paths("notebooks")
IDS = [p.parent.name for p in SOLUTIONS]
# tests/test_grading.py autogrades a perfect and a blank student of every notebook in the simulated
# class: full marks on the solution and zero on the student version, per test cell, with the hidden
# tests. That is what validate and validate --invert check, so they run here only for notebooks
# left out of the class ($BERTLAB_CLASS), and skip (saying why) for the others.
IN_CLASS = set(grading.class_names() or IDS)


def _unless_in_class(paths):
    reason = "checked by the simulated class's perfect and blank students (tests/test_grading.py)"
    return [pytest.param(p, marks=pytest.mark.skip(reason=reason)) if p.parent.name in IN_CLASS else p for p in paths]


def _normalised(path):
    """The parts of a notebook that matter: cell types, sources and nbgrader metadata."""
    nb = nbformat.read(path, as_version=4)
    return [
        {"type": c.cell_type, "source": c.source, "nbgrader": c.metadata.get("nbgrader", {}),
         "outputs": c.get("outputs", [])}
        for c in nb.cells
    ]


def test_there_are_notebooks():
    assert "00-welcome" in IDS


def test_student_notebooks_are_what_nbgrader_generates(tmp_path):
    released = sorted(p.name for p in (course.ROOT / "notebooks").iterdir() if p.is_dir())
    assert released == IDS, f"notebooks/ and solutions/ hold different assignments: {released} vs {IDS}"
    for fresh in course.release(release_dir=tmp_path):
        committed = course.ROOT / "notebooks" / fresh.parent.name / fresh.name
        assert committed.is_file(), f"{committed} is missing: run 'make release'"
        a, b = _normalised(committed), _normalised(fresh)
        assert len(a) == len(b), f"{committed.name}: {len(a)} cells, nbgrader generates {len(b)}: run 'make release'"
        for i, (x, y) in enumerate(zip(a, b)):
            assert x == y, f"{committed.name} cell {i} differs from what nbgrader generates: run 'make release'"


@pytest.mark.parametrize("path", SOLUTIONS + RELEASED, ids=[f"solutions/{i}" for i in IDS] + [f"notebooks/{i}" for i in IDS])
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_each_exercise_has_visible_and_hidden_tests(path):
    nb = nbformat.read(path, as_version=4)
    graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    solutions = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    assert graded and solutions, f"{path.name} has no graded exercise"
    for c in graded:
        gid = c.metadata["nbgrader"]["grade_id"]
        assert c.metadata["nbgrader"].get("locked"), f"{gid}: test cells must be read-only"
        visible = c.source.split("### BEGIN HIDDEN TESTS")[0]
        assert "assert" in visible, f"{gid}: no visible assertion"
    assert any("### BEGIN HIDDEN TESTS" in c.source for c in graded), f"{path.name}: no hidden tests"


@pytest.mark.slow
@pytest.mark.parametrize("path", _unless_in_class(SOLUTIONS), ids=IDS)
def test_solution_validates(path):
    result = course.validate(path)
    assert result == {}, f"nbgrader validate fails on the solution {path.name}: {json.dumps(result, indent=1)[:3000]}"


@pytest.mark.slow
@pytest.mark.parametrize("path", _unless_in_class(RELEASED), ids=IDS)
def test_every_graded_test_fails_on_the_student_version(path):
    result = course.validate(path, invert=True)
    passed = [r["source"].splitlines()[0] for r in result.get("passed", [])]
    assert "changed" not in result and "type_changed" not in result, result
    assert not passed, f"{path.name}: these graded tests pass on the unsolved stub: {passed}"


@pytest.mark.slow
@pytest.mark.full
def test_every_solution_runs_top_to_bottom(tmp_path, capsys):
    """What a learner runs: each notebook in full (NBGRADER_EXECUTION unset), in a fresh kernel,
    its "What you should see" checks raising outside their ranges. Only with --full."""
    assert "NBGRADER_EXECUTION" not in os.environ
    with capsys.disabled():  # the table of wall times is the course's own benchmark: show it
        print()
        results = course.run_course(SOLUTIONS, out_dir=tmp_path)
    failed = {r.notebook: r.error for r in results if not r.ok}
    assert not failed, f"notebooks failed: {failed}"


def test_cell_timings_show_where_the_time_goes(tmp_path, capsys):
    """run_course times every code cell (nbclient's timestamps) and ranks the slowest."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_markdown_cell("A pause:"),
        nbformat.v4.new_code_cell("import time\ntime.sleep(0.3)"),
        nbformat.v4.new_code_cell("y = x + 1"),
    ])
    path = tmp_path / "nap" / "nap.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    [result] = course.run_course([path], out_dir=tmp_path / "out")
    assert result.ok, result.error
    assert [c.index for c in result.cells] == [0, 2, 3], "one timing per code cell, indexed among all cells"
    notebook, slowest = course.slowest_cells([result])[0]
    assert (notebook, slowest.index, slowest.first_line) == ("nap.ipynb", 2, "import time")
    assert 0.3 <= slowest.seconds < 1.5, f"time.sleep(0.3) measured {slowest.seconds:.3f} s"
    printed = capsys.readouterr().out.split("the ten slowest cells of the course")[1].splitlines()
    assert "import time" in printed[2], printed
    rows = (tmp_path / "out" / "cell_timings.csv").read_text().splitlines()
    assert rows[0] == "notebook,cell,cell_id,seconds,first_line" and len(rows) == 4, rows
