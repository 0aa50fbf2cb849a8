"""Mutation testing of the graded tests: do they fail on the mistakes learners make?

``python -m bertlab.instructor.mutation [NOTEBOOK ...] [--timeout S] [--json FILE]`` grades the
suite in ``bertlab/instructor/mutants/`` (default: every notebook). Per notebook it starts one
Jupyter kernel with ``NBGRADER_EXECUTION=autograde`` (grading mode, as ``nbgrader autograde``
sets it, so training cells shrink), in a temporary copy of the notebook's folder, and runs the
solution notebook's cells once, top to bottom, down to its last graded test cell (later cells
cannot change what a test sees). Then, for each exercise and each of its variants:

1. execute the variant's source (it redefines the exercise, as the learner's cell would);
2. re-run the exercise's graded test cells (visible and hidden: the solution notebook's test cell
   source, which is what nbgrader puts back before grading) and score each as nbgrader does
   (``nbgrader.utils.determine_grade`` after the course's ``IgnorePattern``: an error, or stderr
   that is not a warning, costs the cell its points);
3. re-execute the original solution cell, restoring the exercise.

An exercise's mutants run first, its alternatives last: the test cells' variables that later cells
may read then come from a run that passed. (Should the last alternative fail, the test cells run
once more on the solution, which must pass.) Each execution has a timeout (interrupted, then scored
as a failure; a variant cell that raises or times out is a broken variant).

A mutant is *caught* when at least one of its exercise's test cells loses points; an alternative
*passes* when none does. A notebook is clean when every mutant is caught, every alternative
passes, the solution passes its tests and every exercise has at least ``MIN_MUTANTS`` mutants
and ``MIN_ALTERNATIVES`` alternatives. ``benchmarks/mutation.py`` grades the same variants with
the full ``nbgrader autograde`` path and checks that it gives the same verdicts.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bertlab.instructor import course, mutants
from bertlab.instructor.submissions import fill, layout

#: Every exercise needs at least this many mutants and alternatives (tests/test_mutation.py).
MIN_MUTANTS, MIN_ALTERNATIVES = 4, 1

#: Seconds one cell may run ($BERTLAB_MUTATION_TIMEOUT). Test cells take seconds; a variant that
#: loops for ever costs this much per cell that calls it.
TIMEOUT = int(os.environ.get("BERTLAB_MUTATION_TIMEOUT", "120"))


# --------------------------------------------------------------------------- the suite
@dataclass
class Variant:
    assignment: str
    exercise: str  # grade_id of the solution cell
    name: str
    source: str  # the full source of the learner's cell
    correct: bool  # an alternative correct solution (must pass) rather than a mutant (must be caught)

    @property
    def kind(self) -> str:
        return "alternative" if self.correct else "mutant"


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def solution_cells(nb) -> dict[str, object]:
    """grade_id -> code solution cell."""
    return {_meta(c)["grade_id"]: c for c in nb.cells if _meta(c).get("solution") and c.cell_type == "code"}


def suite(assignment: str, solution_nb) -> tuple[list[Variant], list[str]]:
    """The variants of an assignment and the problems of its suite (too few variants, an unknown
    exercise, an edit that does not apply, a variant identical to the solution)."""
    lay = layout(solution_nb, assignment)
    sol = solution_cells(solution_nb)
    module = mutants.load(assignment)
    problems: list[str] = []
    if module is None:
        return [], [f"{assignment}: no mutant file bertlab/instructor/mutants/{mutants.module_name(assignment)}.py"]
    out: list[Variant] = []
    tables = {False: getattr(module, "MUTANTS", {}), True: getattr(module, "ALTERNATIVES", {})}
    for correct, table in tables.items():
        unknown = sorted(set(table) - set(lay.exercises))
        if unknown:
            problems.append(f"{assignment}: {'ALTERNATIVES' if correct else 'MUTANTS'} name unknown exercises "
                            f"{unknown}; the notebook's are {lay.exercises}")
    for ex in lay.exercises:
        learner = fill(sol[ex].source)
        for correct, table in tables.items():
            kind = "alternative" if correct else "mutant"
            entries = table.get(ex, {})
            need = MIN_ALTERNATIVES if correct else MIN_MUTANTS
            if len(entries) < need:
                problems.append(f"{assignment}/{ex}: {len(entries)} {kind}(s), at least {need} needed")
            for name, src in entries.items():
                try:
                    source = src.apply(learner) if isinstance(src, mutants.Edit) else src
                except ValueError as err:
                    problems.append(f"{assignment}/{ex} {kind} {name!r}: {err}")
                    continue
                if not isinstance(source, str) or not source.strip():
                    problems.append(f"{assignment}/{ex} {kind} {name!r}: empty source")
                    continue
                if _normal(source) == _normal(learner):
                    problems.append(f"{assignment}/{ex} {kind} {name!r}: the same code as the solution")
                    continue
                out.append(Variant(assignment, ex, name, source, correct))
    return out, problems


def _normal(source: str) -> str:
    return "\n".join(line.split("#")[0].rstrip() for line in source.strip().splitlines() if line.strip())


# --------------------------------------------------------------------------- running
@dataclass
class Outcome:
    exercise: str
    name: str
    kind: str  # mutant | alternative
    failed: dict[str, str]  # test cell grade_id -> the first line of its error (or stderr)
    error: str = ""  # the variant cell itself raised or timed out
    seconds: float = 0.0

    @property
    def caught(self) -> bool:
        return bool(self.failed)

    @property
    def ok(self) -> bool:
        if self.error:
            return False
        return self.caught if self.kind == "mutant" else not self.caught


@dataclass
class NotebookResult:
    assignment: str
    outcomes: list[Outcome] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # suite or solution problems
    exercises: list[str] = field(default_factory=list)
    seconds: float = 0.0
    setup_seconds: float = 0.0  # the kernel start and the first run of the notebook

    def of(self, exercise: str, kind: str | None = None) -> list[Outcome]:
        return [o for o in self.outcomes if o.exercise == exercise and (kind is None or o.kind == kind)]

    @property
    def mutants(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == "mutant"]

    @property
    def caught(self) -> int:
        return sum(o.ok for o in self.mutants)

    def failures(self) -> list[str]:
        """Everything that makes the notebook's suite fail, one line each."""
        out = list(self.problems)
        for o in self.outcomes:
            if o.error:
                out.append(f"{self.assignment}/{o.exercise} {o.kind} {o.name!r}: its cell failed to run: {o.error}")
            elif o.kind == "mutant" and not o.caught:
                out.append(f"{self.assignment}/{o.exercise} mutant {o.name!r}: MISSED (every test cell passed)")
            elif o.kind == "alternative" and o.caught:
                out.append(f"{self.assignment}/{o.exercise} alternative {o.name!r}: a correct solution lost points in "
                           + "; ".join(f"{k}: {v}" for k, v in o.failed.items()))
        return out


def _ignore_pattern() -> re.Pattern | None:
    cfg = course.load_config().get("IgnorePattern", {})
    return re.compile(cfg["pattern"]) if cfg.get("enabled") and cfg.get("pattern") else None


def _lost_points(cell, ignore: re.Pattern | None) -> str:
    """'' when nbgrader would give the executed test cell its points, else why not (one line)."""
    from nbgrader.utils import determine_grade

    outputs = [o for o in cell.outputs if not (ignore is not None and o.output_type == "stream"
                                                and o.name == "stderr" and ignore.search(o.text))]
    probe = type(cell)(cell)
    probe.outputs = outputs
    score, max_points = determine_grade(probe)
    if score is not None and score >= max_points:
        return ""
    for o in outputs:
        if o.output_type == "error":
            return f"{o.ename}: {o.evalue}".strip().splitlines()[0][:300] if (o.ename or o.evalue) else "error"
        if o.output_type == "stream" and o.name == "stderr":
            return "stderr: " + (o.text.strip().splitlines() or [""])[-1][:300]
    return f"partial credit {score} of {max_points}"


class _Kernel:
    """One kernel running the notebook's cells through nbclient, as nbgrader's Execute does."""

    def __init__(self, nb, cwd: Path, timeout: int):
        import nbformat
        from nbclient import NotebookClient

        self.nb = nbformat.from_dict(json.loads(json.dumps(nb)))  # the client's own copy; run() swaps cells in
        self.client = NotebookClient(
            self.nb, timeout=timeout, interrupt_on_timeout=True, allow_errors=True, iopub_timeout=60,
            raise_on_iopub_timeout=True, kernel_name=nb.metadata.get("kernelspec", {}).get("name", "python3"),
            resources={"metadata": {"path": str(cwd)}},
            error_on_timeout={"ename": "CellTimeoutError", "evalue": f"no reply from the kernel within {timeout} s",
                              "traceback": []},
        )
        self.cwd = cwd
        self._ctx = None
        self.seconds: dict[int, float] = {}  # cell index -> seconds of its last run

    def __enter__(self):
        env = dict(os.environ, NBGRADER_EXECUTION="autograde")
        self._ctx = self.client.setup_kernel(env=env, cwd=str(self.cwd))
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)

    def run(self, source: str, index: int, like=None):
        """Execute ``source`` as cell ``index`` (metadata of ``like``); return the executed cell."""
        import nbformat

        cell = nbformat.v4.new_code_cell(source)
        if like is not None:
            cell.metadata = json.loads(json.dumps(like.metadata))
        # in the notebook at its index: nbclient finds a cell's outputs there when a display
        # (e.g. a progress bar widget) is updated
        self.nb.cells[index] = cell
        start = time.time()
        self.client.execute_cell(cell, index, store_history=False)
        self.seconds[index] = time.time() - start
        return cell


def run_notebook(assignment: str, root: Path = course.ROOT, timeout: int = TIMEOUT,
                 only: list[str] | None = None, log=None) -> NotebookResult:
    """Grade the suite of one notebook (``only``: these exercises) in one grading-mode kernel."""
    import nbformat

    start = time.time()
    log = log or (lambda msg: None)
    path = Path(root) / "solutions" / assignment / f"{assignment}.ipynb"
    nb = nbformat.read(path, as_version=4)
    lay = layout(nb, assignment)
    variants, problems = suite(assignment, nb)
    result = NotebookResult(assignment, problems=problems, exercises=list(lay.exercises))
    with tempfile.TemporaryDirectory(prefix=f"bertlab-mutation-{assignment}-") as tmp:
        cwd = Path(tmp) / assignment
        shutil.copytree(path.parent, cwd, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "*.ipynb"))
        try:
            _grade_variants(assignment, nb, lay, variants, result, cwd, timeout, only, log, start)
        except Exception as err:  # e.g. the kernel died: a problem of this notebook, not a crash of the run
            result.problems.append(f"{assignment}: the run stopped: {type(err).__name__}: {err}")
    result.seconds = time.time() - start
    return result


def _grade_variants(assignment, nb, lay, variants, result, cwd, timeout, only, log, start) -> None:
    """The kernel's work for :func:`run_notebook`: outcomes and problems go into ``result``."""
    ignore = _ignore_pattern()
    index = {_meta(c).get("grade_id"): i for i, c in enumerate(nb.cells) if _meta(c).get("grade_id")}
    tests_of = {ex: [t.grade_id for t in lay.tests if t.exercise == k] for k, ex in enumerate(lay.exercises)}
    learner = {gid: fill(c.source) for gid, c in solution_cells(nb).items()}
    with _Kernel(nb, cwd, timeout) as kernel:
        # the notebook once, as the perfect learner hands it in, down to its last test cell
        # (the cells after it cannot change what a test sees)
        last = max(index[t.grade_id] for t in lay.tests)
        for i, cell in enumerate(nb.cells[: last + 1]):
            if cell.cell_type != "code":
                continue
            gid = _meta(cell).get("grade_id")
            done = kernel.run(learner.get(gid, cell.source), i, cell)
            if _meta(cell).get("grade") and (why := _lost_points(done, ignore)):
                result.problems.append(f"{assignment}/{gid}: the solution notebook loses points here: {why}")
        result.setup_seconds = time.time() - start
        slow = sorted(kernel.seconds.items(), key=lambda kv: -kv[1])[:3]
        log(f"{assignment}: notebook run in {result.setup_seconds:.1f} s (slowest cells: "
            + ", ".join(f"{i}: {t:.1f} s" for i, t in slow) + ")")

        def tests(ex: str) -> dict[str, str]:
            failed = {}
            for tid in tests_of[ex]:
                why = _lost_points(kernel.run(nb.cells[index[tid]].source, index[tid], nb.cells[index[tid]]), ignore)
                if why:
                    failed[tid] = why
            return failed

        for ex in lay.exercises:
            if only and ex not in only:
                continue
            sol_cell = nb.cells[index[ex]]
            for v in (v for v in variants if v.exercise == ex):
                t0 = time.time()
                ran = kernel.run(v.source, index[ex], sol_cell)
                err = next((o for o in ran.outputs if o.output_type == "error"), None)
                if err is not None:
                    outcome = Outcome(ex, v.name, v.kind, {}, f"{err.ename}: {err.evalue}"[:300])
                else:
                    outcome = Outcome(ex, v.name, v.kind, tests(ex))
                restored = kernel.run(learner[ex], index[ex], sol_cell)
                if any(o.output_type == "error" for o in restored.outputs):
                    result.problems.append(f"{assignment}/{ex}: the solution cell failed to run again after {v.name!r}")
                outcome.seconds = time.time() - t0
                result.outcomes.append(outcome)
                mark = "ok" if outcome.ok else ("MISSED" if v.kind == "mutant" and not outcome.error else "FAILED")
                log(f"  {ex:<18} {v.kind:<11} {mark:<6} {outcome.seconds:5.1f} s  {v.name}"
                    + (f"  [{', '.join(outcome.failed)}]" if outcome.failed else "")
                    + (f"  {outcome.error}" if outcome.error else ""))
            # The state the later cells see: the test cells' variables come from the last run of
            # them. After an alternative that passed (alternatives run last) that state is a correct
            # one; otherwise run the tests once more on the solution (they must pass).
            last_run = result.of(ex)[-1:]
            if not (last_run and last_run[0].kind == "alternative" and last_run[0].ok):
                again = tests(ex)
                if again:
                    result.problems.append(f"{assignment}/{ex}: its tests fail on the solution after the variants: {again}")


# --------------------------------------------------------------------------- reporting
def table(results: list[NotebookResult]) -> list[str]:
    """One line per exercise: mutants caught, by which test cell, alternatives passing."""
    lines = [f"{'notebook':<24} {'exercise':<18} {'caught':>7} {'alternatives':>12}  caught by"]
    for r in results:
        for ex in r.exercises:
            ms, alts = r.of(ex, "mutant"), r.of(ex, "alternative")
            if not ms and not alts:
                continue
            by: dict[str, int] = {}
            for o in ms:
                if o.ok:
                    first = next(iter(o.failed))
                    by[first] = by.get(first, 0) + 1
            lines.append(f"{r.assignment:<24} {ex:<18} {sum(o.ok for o in ms):>3}/{len(ms):<3} "
                         f"{sum(o.ok for o in alts):>6}/{len(alts):<5}  "
                         + ", ".join(f"{k} {n}" for k, n in by.items()))
    return lines


def summary(results: list[NotebookResult]) -> list[str]:
    """One line per notebook: the catch rate."""
    lines = [f"{'notebook':<24} {'mutants':>8} {'caught':>7} {'rate':>6} {'alternatives ok':>16} {'seconds':>8}"]
    for r in results:
        alts = [o for o in r.outcomes if o.kind == "alternative"]
        n = len(r.mutants)
        lines.append(f"{r.assignment:<24} {n:>8} {r.caught:>7} {(100 * r.caught / n if n else 0):>5.0f}% "
                     f"{sum(o.ok for o in alts):>10}/{len(alts):<5} {r.seconds:>8.1f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NOTEBOOK", help="assignments, e.g. 04-finetuning (default: all)")
    parser.add_argument("--exercise", action="append", help="only this exercise (grade_id); repeatable")
    parser.add_argument("--timeout", type=int, default=TIMEOUT, help=f"seconds per cell (default {TIMEOUT})")
    parser.add_argument("--json", type=Path, help="also write the outcomes to this file")
    parser.add_argument("-q", "--quiet", action="store_true", help="no line per variant")
    args = parser.parse_args(argv)
    known = course.assignments()
    names = args.names or known
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"unknown notebooks {unknown}; the course has {known}")
    start = time.time()
    results = []
    for name in names:
        results.append(run_notebook(name, timeout=args.timeout, only=args.exercise,
                                    log=None if args.quiet else (lambda m: print(m, flush=True))))
    total = time.time() - start
    print()
    print("\n".join(table(results)))
    print()
    print("\n".join(summary(results)))
    bad = [f for r in results for f in r.failures()]
    n = sum(len(r.mutants) for r in results)
    caught = sum(r.caught for r in results)
    print(f"\n{caught}/{n} mutants caught; {len(bad)} problem(s); {total:.0f} s in all "
          f"({len(results)} notebook(s), one kernel each)")
    for line in bad:
        print("  " + line)
    if args.json:
        args.json.write_text(json.dumps({"seconds": round(total, 1), "notebooks": [
            {**{k: v for k, v in asdict(r).items() if k != "outcomes"},
             "outcomes": [asdict(o) for o in r.outcomes]} for r in results]}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
