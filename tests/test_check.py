"""The checks the notebooks use: graded tests' assertions and "What you should see" expectations."""
import pytest
import torch

from bertlab import check


def test_assert_close_names_the_first_difference():
    with pytest.raises(AssertionError, match=r"1 of 3 values differ .* index \(1,\): got 2.5, expected 2"):
        check.assert_close(torch.tensor([1.0, 2.5, 3.0]), torch.tensor([1.0, 2.0, 3.0]), "x")
    with pytest.raises(AssertionError, match=r"x should have shape \(2,\), got \(3,\)"):
        check.assert_shape(torch.zeros(3), (2,), "x")


def test_expect_prints_when_it_holds_and_fails_a_full_run_when_not(monkeypatch, capsys):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    assert check.expect_between("test macro-F1", 0.87, 0.84, 0.90)
    assert "as expected: test macro-F1 between 0.840 and 0.900 (measured 0.870)" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=r"not what this notebook expects: test macro-F1 between 0.840 and 0.900 "
                                             r"\(measured 0.830\)"):
        check.expect_between("test macro-F1", 0.83, 0.84, 0.90)
    with pytest.raises(AssertionError, match="BERT beats the BiLSTM"):
        check.expect("BERT beats the BiLSTM at every budget", False, "at 100 labels 0.61 < 0.64")


def test_expect_only_reports_in_grading_mode(monkeypatch, capsys):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert check.expect("a claim", False, "tiny run") is False
    assert "grading mode, reduced run: not checked: a claim (tiny run)" in capsys.readouterr().out


def test_needs_stops_with_one_line_until_the_visible_test_passed():
    def align_labels():
        return 1

    with pytest.raises(check.NotReady, match=r"fix `align_labels` first: its test above fails") as err:
        check.needs(align_labels)
    assert err.value._render_traceback_() == [f"NotReady: {err.value}"]  # one line in Jupyter, no traceback
    check.mark_passed(align_labels)
    check.needs(align_labels)  # passes now

    def align_labels():  # redefined after its test ran: the test must run again
        return 2

    with pytest.raises(check.NotReady):
        check.needs(align_labels)
    with pytest.raises(TypeError, match="learner's functions"):
        check.needs("align_labels")
