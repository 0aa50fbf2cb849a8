"""What a learner's feedback shows: never the hidden tests.

:class:`HideHiddenTests` is the nbgrader preprocessor (``GenerateFeedback.preprocessors`` in
nbgrader_config.py) that removes the hidden tests and the tracebacks quoting them from the
feedback; :func:`check_feedback` looks for hidden test lines in a course's feedback pages
(``python -m bertlab.instructor.grading check-feedback``).
"""
from __future__ import annotations

import html
import re
from pathlib import Path

from nbgrader import utils as nbgrader_utils
from nbgrader.preprocessors import ClearHiddenTests
from traitlets import List, Unicode

from bertlab.instructor.submissions import BEGIN_HIDDEN, END_HIDDEN


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
