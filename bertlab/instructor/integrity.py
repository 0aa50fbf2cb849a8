"""Grading you can trust against a learner who tries to cheat the autograder.

nbgrader runs a learner's cells and the tests in one kernel, so a learner's cell can change
what the tests see: replace the course's assertion helpers, install an IPython input
transformer that rewrites the test cells, patch builtins, return an object that compares equal
to anything, call the package's own copy of the answer, hand in a module beside the notebook,
read the answer key from the grader's disk, write next to the gradebook or into the model cache.
:class:`GuardedExecute` is the course's execute step of ``nbgrader autograde``
(``Autograde.autograde_preprocessors`` in nbgrader_config.py). Around nbgrader's own Execute it

1. **keeps only the release's files** in the submission's folder before the kernel starts (the
   files of the assignment's release folder, the notebook, nbgrader's timestamp.txt and the
   assignment's ``c.GuardedExecute.submission_files``); what it removes is in the grading log;
2. **scans** the learner's cells (every code cell but the graded test cells, which nbgrader
   restores from the gradebook) for tampering patterns (:func:`scan`); a finding zeroes every
   graded test cell after the cell it is in and is written into that test cell's output (so in
   the grade report and the feedback) and in the grading log;
3. **guards** the kernel from its first cell, before any learner code (:func:`bertlab.instructor.guard.kernel_guard`, an
   audit hook whose state no name reaches): before each graded test cell and each of its
   statements, what the learner can rebind (builtins, IPython's transformers and hooks, the
   attributes of the bertlab modules, numpy/torch and their testing helpers) is restored to its
   value at kernel start; each test cell must run, statement by statement, the code IPython
   compiled from it at kernel start; the package's copies of the notebook's answers refuse a
   call from the learner's code;
4. **checks**, outside the kernel, the guard's keyed proof that each graded test cell without an
   error ran whole and unchanged, else gives it 0 and a note;
5. gives the kernel **a private model cache** over the course's one, read-only: ``$BERTLAB_CACHE``
   a folder of its own, ``$BERTLAB_CACHE_BASE`` the course's (:mod:`bertlab.cache`); the sandbox
   binds the course's read-only, the guard refuses writes into it, and a change to its files (size,
   times, inode) during a submission is a warning in the grading log.

The sandbox (:mod:`bertlab.instructor.sandbox`) works from outside the kernel. docs/instructors.md
("What grading defends against, and how") says what each closes and what it does not.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from nbgrader import utils as nbgrader_utils
from nbgrader.preprocessors import Execute
from traitlets import Bool, Dict

from bertlab.instructor.guard import PROTECTED, defined_functions, guard_source, imported_modules, read_proofs
from bertlab.instructor.scan import (  # noqa: F401  (the scan's names, as the tests and tools import them)
    GUARD_TAG,
    HOOK_ATTRS,
    Finding,
    instructor_sources,
    learner_cells,
    scan,
    scan_source,
)

#: ename of the error output put first in a zeroed test cell (nbgrader scores it 0).
ENAME = "GradingIntegrityError"


def _guard_cell(source: str):
    import nbformat

    return nbformat.v4.new_code_cell(source, metadata={"tags": [GUARD_TAG]})


def _zero(cell, message: str) -> None:
    """Put an error first in a test cell's outputs: nbgrader gives the cell 0 points."""
    import nbformat

    cell.outputs.insert(0, nbformat.v4.new_output("error", ename=ENAME, evalue=message,
                                                  traceback=[f"{ENAME}: {message}"]))


def _release_files(folder: Path) -> set[str]:
    """Paths (relative, with /) of the files under ``folder``; empty when it does not exist."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()


def prune_submission(folder: Path, allowed: set[str], patterns=()) -> list[str]:
    """Remove from ``folder`` every file or folder that is not in ``allowed`` (relative paths) and
    matches none of ``patterns`` (globs); links are removed, never followed. Returns what went."""
    import fnmatch
    import shutil

    removed = []

    def keep(rel: str) -> bool:
        return rel in allowed or any(fnmatch.fnmatch(rel, p) for p in patterns)

    for path in sorted(folder.rglob("*"), key=lambda p: -len(p.parts)):  # the deepest first
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink() or path.is_file() and not keep(rel):
            path.unlink()
            removed.append(rel)
        elif path.is_dir() and not any(a.startswith(rel + "/") for a in allowed) and not keep(rel):
            shutil.rmtree(path)
            removed.append(rel + "/")
    return sorted(r for r in removed if not any(r.startswith(o) and o.endswith("/") and o != r for o in removed))


def cache_signature(folder: Path) -> dict[str, tuple]:
    """(size, mtime, ctime, inode) of every file under the model cache: any write changes it (ctime
    cannot be set back by a process), at the cost of a stat per file."""
    out = {}
    for p in Path(folder).rglob("*"):
        try:
            st = p.lstat()
        except OSError:
            continue
        out[p.relative_to(folder).as_posix()] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return out


class GuardedExecute(Execute):
    """nbgrader's Execute with the release's files only, the scan, the guard and its proofs, and a
    private model cache."""

    scan_enabled = Bool(True, help="Scan the learner's cells and zero the test cells after a finding.").tag(config=True)
    reset_enabled = Bool(True, help="Guard the kernel: restore what a learner can rebind before each test cell "
                         "and statement, check each test cell's code, guard the package's copies of the answers."
                         ).tag(config=True)
    marker_enabled = Bool(True, help="Check (the guard's proof) that each graded test cell ran whole and unchanged."
                          ).tag(config=True)
    prune_enabled = Bool(True, help="Remove from the submission's folder what the release does not have.").tag(config=True)
    submission_files = Dict(help="Files a learner hands in besides the notebook, by assignment: globs relative to "
                            "the assignment's folder, e.g. {'14-capstone': ['predictions.csv']}; everything else "
                            "not in the release is removed before grading.").tag(config=True)

    def __init__(self, *args, **kwargs):
        from bertlab.instructor.sandbox import SandboxedKernelManager

        kwargs.setdefault("kernel_manager_class", SandboxedKernelManager)  # c.Sandbox.enabled turns it off
        super().__init__(*args, **kwargs)

    def _get_timeout(self, cell):
        """The guard's first cell imports what the notebook's tests use (torch...): never cut off by a
        short cell timeout (it runs before any learner code)."""
        timeout = super()._get_timeout(cell)
        if cell is not None and GUARD_TAG in cell.metadata.get("tags", []) and timeout is not None:
            return max(timeout, 120)
        return timeout

    async def async_start_new_kernel(self, **kwargs):
        """The kernel's model cache: a private folder over the course's, read-only (bertlab.cache)."""
        from bertlab import cache

        env = dict(kwargs.pop("env", None) or os.environ)
        env[cache.ENV_VAR], env[cache.BASE_ENV_VAR] = self._private_cache, str(cache.cache_dir())
        return await super().async_start_new_kernel(env=env, **kwargs)

    def preprocess(self, nb, resources=None, km=None):
        import shutil
        import tempfile

        from bertlab import cache
        from bertlab.instructor import sandbox

        info = (resources or {}).get("nbgrader", {})
        student = info.get("student", "?")
        folder = Path((resources or {}).get("metadata", {}).get("path") or ".")
        instructor_nb = self._instructor_notebook(resources)
        instructor = instructor_sources(instructor_nb) if instructor_nb is not None else frozenset()
        if not instructor and info.get("assignment"):
            self.log.warning("Integrity: no instructor notebook for %s: every code cell is scanned", info)
        if self.prune_enabled and info.get("assignment"):
            self._prune(folder, info, student)
        findings = scan(nb, instructor) if self.scan_enabled else []
        settings = sandbox.Sandbox(config=self.config)
        refused = sandbox.refusal(settings)
        if refused:  # nbgrader records the error for this submission and goes on to the next
            self.log.error("%s: %s", student, refused)
            raise sandbox.SandboxUnavailable(refused)
        line = sandbox.describe(settings)
        (self.log.warning if "NOT" in line else self.log.info)("%s: %s", student, line)
        for f in findings:
            self.log.warning("Integrity: %s: %s", student, f)
        tag = secrets.token_hex(8)
        key = secrets.token_bytes(32)
        key_file, proof_file = folder / f".bertlab-guard-{tag}.json", folder / f".bertlab-guard-{tag}.log"
        original, cells, guarded = {}, [], []
        learner = [nb.cells[i].source for i in learner_cells(nb, instructor)]
        for cell in nb.cells:
            if nbgrader_utils.is_grade(cell) and cell.cell_type == "code":
                k = len(original)
                if self.reset_enabled:
                    reset = _guard_cell(f"__bertlab_guard__ = 'bertlab-guard-{tag} reset {k}'")
                    cells.append(reset)
                    guarded.append((k, "reset", reset.source))
                original[id(cell)] = cell.source
                if self.reset_enabled:
                    cell.source = cell.source + f"\n__bertlab_guard__ = 'bertlab-guard-{tag} end {k}'"
                    guarded.append((k, "test", cell.source))
            cells.append(cell)
        if self.reset_enabled:
            solutions = [c.source for c in (instructor_nb.cells if instructor_nb is not None else nb.cells)
                         if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")]
            spec = {"key": key.hex(), "proof": str(proof_file.resolve()), "cells": guarded, "learner": learner,
                    "cache_base": str(cache.cache_dir()),
                    "modules": list(PROTECTED) + imported_modules(instructor or [c.source for c in nb.cells]),
                    "answers": defined_functions(solutions)}
            key_file.write_text(json.dumps(spec))
            cells.insert(0, _guard_cell(guard_source(str(key_file.resolve()))))
        self._private_cache = tempfile.mkdtemp(prefix="bertlab-cache-")
        base = cache.cache_dir()
        before = cache_signature(base)
        nb.cells = cells
        try:
            nb, resources = super().preprocess(nb, resources, km)
        finally:
            nb.cells = [c for c in nb.cells if GUARD_TAG not in c.metadata.get("tags", [])]
            for c in nb.cells:
                if id(c) in original:
                    c.source = original[id(c)]
            proofs = read_proofs(proof_file, key) if self.reset_enabled else {}
            for f in (key_file, proof_file):
                f.unlink(missing_ok=True)
            shutil.rmtree(self._private_cache, ignore_errors=True)
        after = cache_signature(base)
        changed = sorted(k for k in before if after.get(k) != before[k])
        if changed:  # the sandbox and the guard keep a kernel from it: another program, or a hole to look at
            self.log.warning("Integrity: the course's model cache changed while %s was graded (by this submission, "
                             "if nothing else writes there): %s", student, ", ".join(changed[:10]))
        self._judge(nb, findings, proofs, student)
        return nb, resources

    def _prune(self, folder: Path, info: dict, student: str) -> None:
        from nbgrader.coursedir import CourseDirectory

        cd = CourseDirectory(config=self.config)
        release = Path(cd.format_path(cd.release_directory, ".", info["assignment"]))
        allowed = _release_files(release) | {f"{info.get('notebook', info['assignment'])}.ipynb", "timestamp.txt"}
        removed = prune_submission(folder, allowed, self.submission_files.get(info["assignment"], ()))
        if removed:
            self.log.warning("Integrity: %s: removed before grading (not in the release of %s, nor in "
                             "c.GuardedExecute.submission_files): %s", student, info["assignment"], ", ".join(removed))

    def _instructor_notebook(self, resources):
        """The instructor's notebook of this submission (the source folder's, else the release's), or None."""
        import nbformat
        from nbgrader.coursedir import CourseDirectory

        info = (resources or {}).get("nbgrader", {})
        if not info.get("assignment") or not info.get("notebook"):
            return None
        cd = CourseDirectory(config=self.config)
        for folder in (cd.source_directory, cd.release_directory):
            path = Path(cd.format_path(folder, ".", info["assignment"])) / f"{info['notebook']}.ipynb"
            if path.is_file():
                nb = nbformat.read(path, as_version=4)
                if folder == cd.source_directory:  # the release's cells too (the stubs a learner may leave)
                    rel = Path(cd.format_path(cd.release_directory, ".", info["assignment"])) / f"{info['notebook']}.ipynb"
                    if rel.is_file():
                        nb.cells = nb.cells + nbformat.read(rel, as_version=4).cells
                return nb
        return None

    def _judge(self, nb, findings, proofs, student):
        first = min((f.cell for f in findings), default=None)
        tests = [(k, cell) for k, cell in enumerate(nb.cells) if nbgrader_utils.is_grade(cell) and cell.cell_type == "code"]
        for _, k in proofs.get("broken", []):
            self.log.warning("Integrity: %s: the guard's proof file was changed (%s)", student, k)
        for j, (k, cell) in enumerate(tests):
            gid = cell.metadata["nbgrader"].get("grade_id")
            for out in cell.outputs:  # an error's traceback quotes the lines around it: not the guard's line
                if out.get("output_type") == "error":
                    out["traceback"] = ["\n".join(t for t in line.split("\n") if "bertlab-guard-" not in t)
                                        for line in out.get("traceback", [])]
            errored = any(o.get("output_type") == "error" for o in cell.outputs)
            lines = proofs.get(str(j), [])
            for status, notes in lines:  # what a learner's code (or a library) changed: restored, not judged
                if status in ("reset", "ok") and notes != "-":
                    self.log.info("Guard: %s: test cell %s: %s %s", student, gid,
                                  "restored before it:" if status == "reset" else "noted:", notes.replace("|", "; "))
            bad = list(dict.fromkeys(notes for status, notes in lines if status == "bad"))
            if first is not None and k > first:
                why = "; ".join(str(f) for f in findings if f.cell < k)
                _zero(cell, f"0 points: the submission tampers with grading ({why}); an instructor must review it")
                self.log.warning("Integrity: %s: test cell %s zeroed (tampering found before it)", student, gid)
            elif bad:
                _zero(cell, f"0 points: the submission tampers with grading (this test cell: {'; '.join(bad)}); "
                            "an instructor must review it")
                self.log.warning("Integrity: %s: test cell %s zeroed (%s)", student, gid, "; ".join(bad))
            elif self.marker_enabled and self.reset_enabled and not errored and not any(s == "ok" for s, _ in lines):
                _zero(cell, "0 points: this test cell did not run to its end (its code was skipped or "
                            "rewritten while it ran); an instructor must review it")
                self.log.warning("Integrity: %s: test cell %s did not run to its end", student, gid)
