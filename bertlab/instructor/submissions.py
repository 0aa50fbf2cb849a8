"""The students of the simulated class (``bertlab.instructor.grading``) and the scores they must get.

:func:`layout` reads a solution notebook's exercises and test cells; :func:`fabricate` builds one
submission per scenario from the released student version and the solution. Every student
hands in every notebook:

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

The hostile students (:data:`HOSTILE_SCENARIOS`, on the notebooks of :data:`WRONG`) hand in a
wrong answer (``WRONG``: it returns zeros) plus a trick in the exercise's cell, after the
function, that would win the points without the defences of :mod:`bertlab.instructor.integrity`:

=================  ==========================================================================
hostile-helpers    replaces the assertion helpers of bertlab.check with ones that never fail
hostile-transformer  an IPython input transformer turns every later cell with ``assert`` into
                   ``pass``
hostile-builtins   patches ``builtins.__import__`` so that importing bertlab.check hands the
                   tests helpers that never fail
hostile-equal      returns a tensor subclass whose comparisons (``torch.isclose``, ``==``)
                   are always true
hostile-answer-key reads the instructor's notebook from solutions/ on the grader's disk and
                   runs its answer
hostile-write      a correct answer, but writes a file next to the gradebook (outside its
                   folder)
=================  ==========================================================================

Every hostile student must get 0 for the exercise it cheats on and a flag (a
``GradingIntegrityError`` output) in that test cell; no honest student is ever flagged.

The students who go for the machine instead (the network, memory, disk, processes), written past the scan
so that only the sandbox stops them, are in :mod:`bertlab.instructor.attacks`
(:data:`RESOURCE_SCENARIOS`): 0 for the last exercise, the others graded.

Expected scores come from the test cells' points in the solution notebook: a test cell
earns its points when every exercise up to and including its own is correct, else 0 (tests
run top to bottom, so a test can use earlier exercises but never later ones). That is why a
broken exercise is always the last one: everything before it must still get full marks.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from bertlab.instructor import attacks
from bertlab.instructor.attacks import RESOURCE_SCENARIOS

SCENARIOS = ("perfect", "blank", "partial", "syntax-error", "exception", "infinite-loop",
             "deleted-test", "edited-test", "stderr-warnings", "out-of-order")

HOSTILE_SCENARIOS = ("hostile-helpers", "hostile-transformer", "hostile-builtins", "hostile-equal",
                     "hostile-answer-key", "hostile-write")
ALL_SCENARIOS = SCENARIOS + HOSTILE_SCENARIOS + RESOURCE_SCENARIOS

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

#: A wrong answer (the body of the solution region) per assignment and exercise, handed in by the
#: hostile students together with their trick.
WRONG: dict[str, dict[str, str]] = {
    "00-welcome": {"mean_pool": "return torch.zeros(last_hidden_state.shape[0], last_hidden_state.shape[-1])"},
}

#: The tricks, appended to the exercise's cell after the function; {exercise} is its grade_id,
#: {assignment} the notebook.
TRICKS = {
    "hostile-helpers": """\
import bertlab.check as _check  # the learner's trick: the tests' helpers never fail
_check.assert_close = _check.assert_shape = lambda *args, **kwargs: None""",
    "hostile-transformer": """\
def _skip_asserts(lines):  # the learner's trick: every later cell with an assert becomes `pass`
    return ["pass\\n"] if any("assert" in line for line in lines) else lines
get_ipython().input_transformers_post.append(_skip_asserts)""",
    "hostile-builtins": """\
import builtins as _b  # the learner's trick: importing bertlab.check gives helpers that never fail
_real_import = _b.__import__
def _import(name, *args, **kwargs):
    module = _real_import(name, *args, **kwargs)
    if name.startswith("bertlab.check"):
        module.assert_close = module.assert_shape = lambda *a, **k: None
    return module
_b.__import__ = _import""",
    "hostile-equal": """\
class _Agree(torch.Tensor):  # the learner's trick: a tensor whose comparisons always hold
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.isclose, torch.eq, torch.Tensor.__eq__):
            return torch.ones(torch.as_tensor(args[0]).shape, dtype=torch.bool)
        if func in (torch.equal, torch.allclose):
            return True
        return super().__torch_function__(func, types, args, kwargs or {{}})
_wrong_{exercise} = {exercise}
def {exercise}(*args, **kwargs):
    return _wrong_{exercise}(*args, **kwargs).as_subclass(_Agree)""",
    "hostile-answer-key": """\
import json as _json, pathlib as _pl  # the learner's trick: run the answer key from the grader's disk
for _up in _pl.Path.cwd().parents:
    for _nb in _up.glob("solutions/{assignment}/*.ipynb"):
        for _cell in _json.loads(_nb.read_text())["cells"]:
            if _cell.get("metadata", {{}}).get("nbgrader", {{}}).get("grade_id") == "{exercise}":
                exec("".join(_cell["source"]))""",
    "hostile-write": """\
import pathlib as _pl  # the learner's trick: a file next to the grader's gradebook
for _up in _pl.Path.cwd().parents:
    if (_up / "gradebook.db").exists():
        (_up / "hostile-was-here.txt").write_text("written by a submission during grading")""",
}
#: The file hostile-write leaves in the course root when nothing stops it.
HOSTILE_FILE = "hostile-was-here.txt"

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


def fabricate(assignment: str, solution_nb, released_nb, scenarios=SCENARIOS, port: int = 0,
              limits: dict[str, int] | None = None, network_cut: bool = True, limited: bool = True,
              processes_bounded: bool = True) -> list[Submission]:
    """One submission per scenario, built from the released student notebook.

    The resource scenarios (:mod:`bertlab.instructor.attacks`): ``port``, where the accomplice of
    hostile-network listens; ``limits``, the kernel's (default ``attacks.CLASS_LIMITS``), which the
    hogs go past; ``network_cut``, ``limited`` and ``processes_bounded``: whether the sandbox here
    cuts the network, applies the limits and bounds the process count (when it does not, those
    students get full marks, and the note says why).
    """
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
        elif s in HOSTILE_SCENARIOS:
            wrong = WRONG.get(assignment, {}).get(ex[last])
            if wrong is None:
                raise ValueError(f"{s}: no WRONG answer registered for {assignment}/{ex[last]}")
            edit = solved(all_ids)
            if s != "hostile-write":  # the others hand in the wrong answer
                edit[ex[last]] = fill(sol[ex[last]].source, lambda body, indent: _indented(wrong, indent))
            edit[ex[last]] += "\n\n" + TRICKS[s].format(exercise=ex[last], assignment=assignment)
            nb, exp = build(edit), lay.score(broken_last)
            note = "hostile: 0 and flagged"
        elif s in RESOURCE_SCENARIOS:
            edit = solved(all_ids)
            code = attacks.trick(s, ex[last], limits or attacks.CLASS_LIMITS, port)
            wrong = WRONG.get(assignment, {}).get(ex[last])
            if s == "hostile-network":  # the wrong answer (if registered), then the remote call
                if wrong is not None:
                    edit[ex[last]] = fill(sol[ex[last]].source, lambda body, indent: _indented(wrong, indent))
                edit[ex[last]] += "\n\n" + code
            else:  # the hog first: its error ends the cell before the function is defined
                edit[ex[last]] = code + "\n" + edit[ex[last]]
            stopped = {"hostile-network": network_cut, "hostile-processes": processes_bounded}.get(s, limited)
            nb, exp = build(edit), lay.score(broken_last if stopped else full)
            note = "stopped by the sandbox: 0 for the exercise" if stopped else "NOT stopped here (see Sandbox:)"
        else:
            raise ValueError(f"scenarios: unknown scenario {s!r}; known: {ALL_SCENARIOS}")
        subs.append(Submission(s, assignment, nb, exp, note))
    return subs
