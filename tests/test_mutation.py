"""The graded tests catch the mistakes learners make: the mutation suite (bertlab/instructor/mutants/).

Fast: every exercise of every notebook has at least four mutants and one alternative correct
solution, and every variant applies to the current solution cell. Slow: each notebook's suite
graded in one grading-mode kernel (``bertlab.instructor.mutation``): every mutant caught by a test
cell of its exercise, every alternative passes them all.
"""
import nbformat
import pytest

from bertlab.instructor import course, mutants, mutation

NAMES = course.assignments()


def _solution(name):
    return nbformat.read(course.ROOT / "solutions" / name / f"{name}.ipynb", as_version=4)


@pytest.mark.parametrize("name", NAMES)
def test_every_exercise_has_mutants_and_an_alternative(name):
    variants, problems = mutation.suite(name, _solution(name))
    assert not problems, "\n".join(problems)
    exercises = mutation.layout(_solution(name), name).exercises
    for ex in exercises:
        ms = [v for v in variants if v.exercise == ex and not v.correct]
        alts = [v for v in variants if v.exercise == ex and v.correct]
        assert len(ms) >= mutation.MIN_MUTANTS and len(alts) >= mutation.MIN_ALTERNATIVES, (ex, len(ms), len(alts))
        for v in ms + alts:
            compile(v.source, f"{name}/{ex}/{v.name}", "exec")  # a variant cell must parse


def test_suite_reports_what_is_missing():
    nb = _solution("00-welcome")
    _, problems = mutation.suite("00-welcome", nb)
    assert problems == []
    # an edit whose text is not in the solution cell fails loudly
    with pytest.raises(ValueError, match="occurs 0 times"):
        mutants.edit(("no such text", "x")).apply("def f():\n    return 1\n")
    with pytest.raises(TypeError):
        mutants.edit("old", "new")
    assert mutants.module_name("07-domain-and-transfer") == "nb07_domain_and_transfer"
    assert mutants.load("99-no-such-notebook") is None


def test_lost_points_follows_nbgrader():
    import re

    cell = nbformat.v4.new_code_cell("x")
    cell.metadata = {"nbgrader": {"grade": True, "grade_id": "t", "points": 2, "solution": False}}
    ignore = re.compile(r"(?i)warn|\d+%\|")
    assert mutation._lost_points(cell, ignore) == ""
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="UserWarning: harmless\n")]
    assert mutation._lost_points(cell, ignore) == ""  # dropped by the course's IgnorePattern
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="something else\n")]
    assert mutation._lost_points(cell, ignore).startswith("stderr")
    cell.outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue="wrong shape", traceback=[])]
    assert mutation._lost_points(cell, ignore) == "AssertionError: wrong shape"


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", NAMES)
def test_every_mutant_is_caught_and_every_alternative_passes(name):
    result = mutation.run_notebook(name)
    print("\n".join(mutation.table([result])))
    print(f"{name}: {result.seconds:.0f} s")
    assert result.mutants, f"{name}: no mutant was graded"
    failures = result.failures()
    assert not failures, "\n".join(failures)
