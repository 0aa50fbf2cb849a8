"""`make grade NB=...`: a self-study learner grades their own notebook with the hidden tests."""
import pytest

from bertlab.instructor import course, selfgrade

NAME = "00-welcome"


@pytest.mark.slow
def test_self_grading_gives_the_solution_full_marks_and_the_student_version_none(tmp_path, capsys):
    solution = course.ROOT / "solutions" / NAME / f"{NAME}.ipynb"
    points, page = selfgrade.grade(solution, out_dir=tmp_path, log=lambda m: None)
    assert points and all(got == most > 0 for got, most in points.values()), points
    assert page == tmp_path / f"{NAME}.html" and "BEGIN HIDDEN TESTS" not in page.read_text()
    assert selfgrade.main([str(course.ROOT / "notebooks" / NAME / f"{NAME}.ipynb"), "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    total = sum(most for _, most in points.values())
    assert "total" in out and f"0 / {total:g}" in out and "<- see the feedback" in out, out


def test_self_grading_names_a_wrong_notebook(tmp_path):
    with pytest.raises(ValueError, match="NB: expected a notebook file"):
        selfgrade.assignment_of(tmp_path / "none.ipynb")
    stray = tmp_path / "mine.ipynb"
    stray.write_text("{}")
    with pytest.raises(ValueError, match="not one of the course's notebooks"):
        selfgrade.assignment_of(stray)
