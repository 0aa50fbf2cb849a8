"""Grade your own notebook as the instructor's autograder would: the hidden tests included.

    make grade NB=notebooks/05-baselines/05-baselines.ipynb
    python -m bertlab.instructor.selfgrade notebooks/05-baselines/05-baselines.ipynb

Builds a private, throwaway nbgrader course for that one assignment (the course's nbgrader_config.py
and its solutions/, as an instructor's course holds them), hands your notebook in as student ``me``,
runs ``nbgrader autograde`` (your notebook top to bottom in grading mode, the hidden tests put back)
and ``generate_feedback``, then prints the points of every graded test and copies the feedback page
(your test cells' results, the hidden tests' source left out) to ``.grades/NN-name.html``. Nothing in
your notebook's folder changes.

On your own machine this grades without the instructor's sandbox (it is your own code): the
feedback says so in its first line where bubblewrap is missing.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bertlab.instructor import course
from bertlab.instructor.autograde import gradebook_scores, nbgrader, write_feedback_index
from bertlab.instructor.grading import make_course
from bertlab.instructor.submissions import layout

STUDENT = "me"


def assignment_of(notebook: Path) -> str:
    """The assignment a notebook belongs to (``NN-name`` from its file name), or a clear error."""
    notebook = Path(notebook)
    if notebook.suffix != ".ipynb" or not notebook.is_file():
        raise ValueError(f"NB: expected a notebook file such as notebooks/00-welcome/00-welcome.ipynb, got {notebook}")
    name = notebook.stem
    known = course.assignments()
    if name not in known:
        raise ValueError(f"NB: {notebook.name} is not one of the course's notebooks ({', '.join(known)})")
    return name


def grade(notebook: Path, out_dir: Path = course.ROOT / ".grades", log=print) -> tuple[dict[str, tuple[float, float]], Path]:
    """Autograde ``notebook`` in a private course; return ``{test cell: (points, max points)}`` and
    the feedback page, written to ``out_dir``/NN-name.html."""
    import nbformat

    from bertlab.instructor import sandbox

    name = assignment_of(notebook)
    lay = layout(nbformat.read(course.ROOT / "solutions" / name / f"{name}.ipynb", as_version=4), name)
    with tempfile.TemporaryDirectory(prefix="bertlab-selfgrade-") as tmp:
        course_dir = Path(tmp)
        make_course(course_dir, [name], timeout=180)  # the real course's cell timeout
        folder = course_dir / "submitted" / STUDENT / name
        folder.mkdir(parents=True)
        shutil.copy(notebook, folder / f"{name}.ipynb")
        log(f"grading {notebook} as the autograder does (every cell in grading mode, hidden tests included)...")
        proc = nbgrader(course_dir, "autograde", name, "--force", check=False)
        if not (course_dir / "autograded" / STUDENT / name / f"{name}.ipynb").is_file():
            raise RuntimeError(f"nbgrader autograde could not grade {notebook}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        nbgrader(course_dir, "generate_feedback", name, "--force")
        status = sandbox.status_line(sandbox.Sandbox(config=course.load_config(course_dir)))
        write_feedback_index(course_dir, status)
        got = gradebook_scores(course_dir).get((STUDENT, name), {})
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        page = out_dir / f"{name}.html"
        shutil.copy(course_dir / "feedback" / STUDENT / name / f"{name}.html", page)
    return {t.grade_id: (float(got.get(t.grade_id) or 0.0), float(t.points)) for t in lay.tests}, page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make grade NB=...", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", type=Path, help="your notebook, e.g. notebooks/05-baselines/05-baselines.ipynb")
    parser.add_argument("--out", type=Path, default=course.ROOT / ".grades", help="where the feedback page goes "
                        "(default: .grades/)")
    args = parser.parse_args(argv)
    try:
        points, page = grade(args.notebook, args.out)
    except ValueError as e:
        parser.error(str(e))
    width = max(len(k) for k in points)
    for gid, (got, most) in points.items():
        print(f"  {gid:<{width}}  {got:g} / {most:g}" + ("" if got == most else "   <- see the feedback"))
    total, most = sum(g for g, _ in points.values()), sum(m for _, m in points.values())
    print(f"  {'total':<{width}}  {total:g} / {most:g}")
    print(f"feedback (what failed and why; hidden tests' source left out): {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
