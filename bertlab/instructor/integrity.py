"""Grading you can trust against a learner who tries to cheat the autograder.

nbgrader runs a learner's cells and the tests in one kernel, so a learner's cell can change
what the tests see: replace the course's assertion helpers, install an IPython input
transformer that rewrites the test cells, patch builtins, return an object that compares equal
to anything, read the answer key from the grader's disk, write next to the gradebook.
:class:`GuardedExecute` is the course's execute step of ``nbgrader autograde``
(``Autograde.autograde_preprocessors`` in nbgrader_config.py). Around nbgrader's own Execute it

1. **scans** the learner's cells (every code cell but the graded test cells, which nbgrader
   restores from the gradebook) for tampering patterns (:func:`scan`); a finding zeroes every
   graded test cell after the cell it is in and is written into that test cell's output (so in
   the grade report and the feedback) and in the grading log;
2. **resets** the kernel state a learner can change before every graded test cell, in a cell of
   its own that is removed again after the run: IPython input and AST transformers and event
   hooks back to what they were at kernel start, ``sys.settrace``/``setprofile`` off, builtins,
   ``sys.path`` and ``sys.meta_path`` restored, ``bertlab.check`` dropped from ``sys.modules``
   so the test imports its assertion helpers afresh from the installed package;
3. **checks** that every graded test cell ran to its end: each ends with a line printing a
   secret drawn for this run; a cell without an error whose output lacks it (its source was
   rewritten or skipped) gets 0 and a note. The line and its output are removed afterwards.

All three run inside or next to the learner's kernel: code that runs in the kernel can in
principle defeat in-kernel checks (e.g. find the secret in a rewritten cell, or undo the reset
from a hook the reset does not know). The scan and the sandbox (:mod:`bertlab.instructor.sandbox`)
work from outside the kernel. docs/instructors.md ("Grading safely") says what each stops.
"""
from __future__ import annotations

import ast
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from nbgrader import utils as nbgrader_utils
from nbgrader.preprocessors import Execute
from traitlets import Bool

#: ename of the error output put first in a zeroed test cell (nbgrader scores it 0).
ENAME = "GradingIntegrityError"
GUARD_TAG = "bertlab-guard"


@dataclass(frozen=True)
class Finding:
    cell: int  # index of the code cell in the notebook
    line: int
    what: str

    def __str__(self) -> str:
        return f"cell {self.cell}, line {self.line}: {self.what}"


#: attribute names whose use in a learner's cell changes how later cells run
HOOK_ATTRS = {
    "input_transformers_post": "installs an IPython input transformer (rewrites later cells)",
    "input_transformers_cleanup": "installs an IPython input transformer (rewrites later cells)",
    "input_transformer_manager": "changes IPython's input transformers (rewrites later cells)",
    "ast_transformers": "installs an IPython AST transformer (rewrites later cells)",
    "events": "registers an IPython event hook (runs around later cells)",
    "register_magic_function": "registers an IPython magic",
    "settrace": "sets a trace function (sys.settrace)",
    "setprofile": "sets a profile function (sys.setprofile)",
    "addaudithook": "adds an audit hook",
    "modules": None,  # only sys.modules: see below
    "run_cell": "runs code through IPython's run_cell",
    "showtraceback": "replaces IPython's traceback display",
    "__torch_function__": "overrides torch functions for its own tensors (can fake comparisons)",
}
#: dunders whose definition lets an object lie in a comparison or a type check
LYING_DUNDERS = {"__eq__", "__ne__", "__bool__", "__torch_function__", "__instancecheck__",
                 "__subclasscheck__", "__array_function__", "__array_ufunc__"}
#: modules a learner's cell has no business importing in this course
SUSPECT_MODULES = {"builtins": "imports builtins (can patch built-in functions)",
                   "ctypes": "imports ctypes (can change any object in memory)",
                   "gc": "imports gc (can reach and change the grader's objects)",
                   "inspect": "imports inspect (can read or change calling frames)",
                   "subprocess": "runs programs (subprocess)",
                   "socket": "uses the network (socket)",
                   "urllib": "uses the network (urllib)",
                   "requests": "uses the network (requests)",
                   "http": "uses the network (http)",
                   "shutil": "copies or removes files (shutil)",
                   "nbformat": "reads notebooks (nbformat)",
                   "nbgrader": "uses nbgrader",
                   "sqlite3": "opens a database (sqlite3)",
                   "sqlalchemy": "opens a database (sqlalchemy)"}
SUSPECT_CALLS = {"exec": "runs code from a string (exec)", "eval": "runs code from a string (eval)",
                 "compile": "compiles code from a string", "__import__": "imports through __import__",
                 "setattr": "sets an attribute by name (setattr)", "globals": "changes globals()",
                 "breakpoint": "starts a debugger"}
#: functions of these modules that change files, the working folder or run programs
SUSPECT_MODULE_CALLS = {"os": {"chdir", "system", "popen", "remove", "unlink", "rename", "replace", "rmdir",
                               "removedirs", "symlink", "link", "chmod", "chown", "truncate", "execv", "execl",
                               "fork", "spawnl", "kill", "putenv", "open", "write"},
                        "sys": {"settrace", "setprofile", "addaudithook", "setrecursionlimit"}}
#: Path methods that write
WRITE_METHODS = {"write_text": "writes a file", "write_bytes": "writes a file", "symlink_to": "makes a link",
                 "hardlink_to": "makes a link", "unlink": "removes a file", "rmdir": "removes a folder",
                 "touch": "creates a file", "chmod": "changes file permissions"}
#: text in a string constant that points at the grader's files
SUSPECT_TEXT = re.compile(r"gradebook|solutions?[/\\]|autograded|submitted[/\\]|nbgrader_config|\.\.[/\\]|"
                          r"\.ipynb|^/(?!dev/null)\w")


def _modules(tree: ast.AST) -> dict[str, str]:
    """Names bound to modules by import statements: {alias: module}."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:  # `from bertlab import check as c`: c may be a module
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _write_mode(call: ast.Call) -> bool:
    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and bool(set(mode.value) & set("wax+"))


def scan_source(source: str) -> list[tuple[int, str]]:
    """Tampering patterns in one cell's source: [(line, what)]. A cell that does not parse is
    scanned as text (IPython magics and shell escapes, ``%``/``!``, are also reported)."""
    found: list[tuple[int, str]] = []
    lines = source.split("\n")
    for i, line in enumerate(lines, 1):
        if re.match(r"\s*(%|!)", line):
            found.append((i, "runs an IPython magic or a shell command"))
    clean = "\n".join("" if re.match(r"\s*(%|!)", line) else line for line in lines)
    try:
        tree = ast.parse(clean)
    except SyntaxError:
        for i, line in enumerate(lines, 1):
            for name, what in HOOK_ATTRS.items():
                if what and re.search(rf"\b{re.escape(name)}\b", line):
                    found.append((i, what))
        return found
    mods = _modules(tree)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for n in names:
                top = n.split(".")[0]
                if top in SUSPECT_MODULES:
                    found.append((line, SUSPECT_MODULES[top]))
        elif isinstance(node, ast.Attribute):
            if node.attr == "modules" and isinstance(node.value, ast.Name) and mods.get(node.value.id) == "sys":
                found.append((line, "uses sys.modules (can replace a module the tests import)"))
            elif HOOK_ATTRS.get(node.attr):
                found.append((line, HOOK_ATTRS[node.attr]))
        elif isinstance(node, ast.Name) and node.id == "__builtins__":
            found.append((line, "uses __builtins__ (can patch built-in functions)"))
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in SUSPECT_CALLS:
                found.append((line, SUSPECT_CALLS[f.id]))
            elif isinstance(f, ast.Attribute):
                base = mods.get(f.value.id, "") if isinstance(f.value, ast.Name) else ""
                if f.attr in SUSPECT_MODULE_CALLS.get(base, ()):
                    found.append((line, f"calls {base}.{f.attr}"))
                elif f.attr in WRITE_METHODS and not base:
                    found.append((line, WRITE_METHODS[f.attr]))
            if (isinstance(f, ast.Name) and f.id == "open" or isinstance(f, ast.Attribute) and f.attr == "open") \
                    and _write_mode(node):
                found.append((line, "opens a file for writing"))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in LYING_DUNDERS:
            found.append((line, f"defines {node.name} (an object that can compare equal to anything)"))
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in mods:
                    found.append((line, f"replaces {mods[t.value.id]}.{t.attr} (a module's attribute)"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SUSPECT_TEXT.search(node.value):
            found.append((line, f"names a path outside the submission ({node.value[:60]!r})"))
    return sorted(set(found))


def learner_cells(nb, instructor_sources=frozenset()) -> list[int]:
    """Indices of the code cells a learner wrote or changed: all but the graded test cells
    (nbgrader restores those from the gradebook before they run), the course's guard cells and
    cells whose source is, unchanged, a code cell of the instructor's notebook."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and not nbgrader_utils.is_grade(c)
            and GUARD_TAG not in c.metadata.get("tags", []) and c.source.strip() not in instructor_sources]


def instructor_sources(nb) -> frozenset[str]:
    """The code cells of an instructor's (source or release) notebook, as learner_cells compares them."""
    return frozenset(c.source.strip() for c in nb.cells if c.cell_type == "code")


def scan(nb, instructor=frozenset()) -> list[Finding]:
    """Tampering patterns in the learner's cells of a notebook (``instructor``: the sources of the
    instructor's code cells, see :func:`instructor_sources`, which are not the learner's)."""
    return [Finding(i, line, what) for i in learner_cells(nb, instructor)
            for line, what in scan_source(nb.cells[i].source)]


# --------------------------------------------------------------------------- the kernel reset
#: The first cell of every graded run: remembers the kernel's state before any learner code.
SNAPSHOT = """\
def _bertlab_guard_snapshot():
    import builtins, sys
    ip = get_ipython()
    m = ip.input_transformer_manager
    state = dict(builtins=dict(builtins.__dict__), path=list(sys.path), meta_path=list(sys.meta_path),
                 path_hooks=list(sys.path_hooks), cleanup=list(m.cleanup_transforms),
                 line=list(m.line_transforms), token=list(m.token_transformers),
                 post=list(ip.input_transformers_post), ast=list(ip.ast_transformers),
                 events={k: list(v) for k, v in ip.events.callbacks.items()},
                 modules={k: v for k, v in sys.modules.items()})

    def reset():
        sys.settrace(None)
        sys.setprofile(None)
        import threading
        threading.settrace(None)
        threading.setprofile(None)
        for k in [k for k in builtins.__dict__ if k not in state["builtins"]]:
            del builtins.__dict__[k]
        builtins.__dict__.update(state["builtins"])
        sys.path[:] = state["path"]
        sys.meta_path[:] = state["meta_path"]
        sys.path_hooks[:] = state["path_hooks"]
        sys.path_importer_cache.clear()
        m.cleanup_transforms[:] = state["cleanup"]
        m.line_transforms[:] = state["line"]
        m.token_transformers[:] = state["token"]
        ip.input_transformers_post[:] = state["post"]
        ip.ast_transformers[:] = state["ast"]
        for k, v in state["events"].items():
            ip.events.callbacks[k][:] = v
        for k, v in state["modules"].items():  # modules the kernel had before the learner ran
            if sys.modules.get(k) is not v:
                sys.modules[k] = v
        sys.modules.pop("bertlab.check", None)  # the tests import the helpers afresh from the package
        if "bertlab" in sys.modules and "check" in vars(sys.modules["bertlab"]):
            delattr(sys.modules["bertlab"], "check")
    return reset


_bertlab_guard_reset = _bertlab_guard_snapshot()
del _bertlab_guard_snapshot"""

RESET = "_bertlab_guard_reset()"


def _guard_cell(source: str):
    import nbformat

    return nbformat.v4.new_code_cell(source, metadata={"tags": [GUARD_TAG]})


def _zero(cell, message: str) -> None:
    """Put an error first in a test cell's outputs: nbgrader gives the cell 0 points."""
    import nbformat

    cell.outputs.insert(0, nbformat.v4.new_output("error", ename=ENAME, evalue=message,
                                                  traceback=[f"{ENAME}: {message}"]))


class GuardedExecute(Execute):
    """nbgrader's Execute with the scan, the kernel reset and the end-of-cell markers."""

    scan_enabled = Bool(True, help="Scan the learner's cells and zero the test cells after a finding.").tag(config=True)
    reset_enabled = Bool(True, help="Reset the kernel state a learner can change before each test cell.").tag(config=True)
    marker_enabled = Bool(True, help="Check that each graded test cell ran to its end.").tag(config=True)

    def __init__(self, *args, **kwargs):
        from bertlab.instructor.sandbox import SandboxedKernelManager

        kwargs.setdefault("kernel_manager_class", SandboxedKernelManager)  # c.Sandbox.enabled turns it off
        super().__init__(*args, **kwargs)

    def preprocess(self, nb, resources=None, km=None):
        student = (resources or {}).get("nbgrader", {}).get("student", "?")
        findings = scan(nb, self._instructor(resources)) if self.scan_enabled else []
        from bertlab.instructor import sandbox

        settings = sandbox.Sandbox(config=self.config)
        refused = sandbox.refusal(settings)
        if refused:  # nbgrader records the error for this submission and goes on to the next
            self.log.error("%s: %s", student, refused)
            raise sandbox.SandboxUnavailable(refused)
        line = sandbox.describe(settings)
        (self.log.warning if "NOT" in line else self.log.info)("%s: %s", student, line)
        for f in findings:
            self.log.warning("Integrity: %s: %s", student, f)
        marker = f"bertlab-graded-{secrets.token_hex(12)}"
        original = {}
        cells = []
        if self.reset_enabled:
            cells.append(_guard_cell(SNAPSHOT))
        for cell in nb.cells:
            if nbgrader_utils.is_grade(cell) and cell.cell_type == "code":
                if self.reset_enabled:
                    cells.append(_guard_cell(RESET))
                original[id(cell)] = cell.source
                if self.marker_enabled:
                    cell.source = cell.source + f"\nprint({marker!r})"
            cells.append(cell)
        learner = list(nb.cells)
        nb.cells = cells
        try:
            nb, resources = super().preprocess(nb, resources, km)
        finally:
            nb.cells = [c for c in nb.cells if GUARD_TAG not in c.metadata.get("tags", [])]
            for c in nb.cells:
                if id(c) in original:
                    c.source = original[id(c)]
        self._judge(nb, learner, findings, marker, student)
        return nb, resources

    def _instructor(self, resources) -> frozenset[str]:
        """The code cells of the instructor's notebook (source and release folders of the course)."""
        import nbformat
        from nbgrader.coursedir import CourseDirectory

        info = (resources or {}).get("nbgrader", {})
        if not info.get("assignment") or not info.get("notebook"):
            return frozenset()
        cd = CourseDirectory(config=self.config)
        out: frozenset[str] = frozenset()
        for folder in (cd.source_directory, cd.release_directory):
            path = Path(cd.format_path(folder, ".", info["assignment"])) / f"{info['notebook']}.ipynb"
            if path.is_file():
                out |= instructor_sources(nbformat.read(path, as_version=4))
        if not out:
            self.log.warning("Integrity: no instructor notebook for %s: every code cell is scanned", info)
        return out

    def _judge(self, nb, learner, findings, marker, student):
        first = min((f.cell for f in findings), default=None)
        for k, cell in enumerate(nb.cells):
            if not (nbgrader_utils.is_grade(cell) and cell.cell_type == "code"):
                continue
            seen = False
            for out in cell.outputs:
                if out.get("output_type") == "stream" and marker in out.get("text", ""):
                    seen = True
                    out["text"] = out["text"].replace(marker + "\n", "").replace(marker, "")
            cell.outputs = [o for o in cell.outputs if not (o.get("output_type") == "stream" and not o.get("text"))]
            for out in cell.outputs:  # an error's traceback quotes the lines around it: not the marker line
                if out.get("output_type") == "error":
                    out["traceback"] = [t for t in out.get("traceback", []) if marker not in t]
            errored = any(o.get("output_type") == "error" for o in cell.outputs)
            gid = cell.metadata["nbgrader"].get("grade_id")
            if first is not None and k > first:
                why = "; ".join(str(f) for f in findings if f.cell < k)
                _zero(cell, f"0 points: the submission tampers with grading ({why}); an instructor must review it")
                self.log.warning("Integrity: %s: test cell %s zeroed (tampering found before it)", student, gid)
            elif self.marker_enabled and not seen and not errored:
                _zero(cell, "0 points: this test cell did not run to its end (its code was skipped or "
                            "rewritten while it ran); an instructor must review it")
                self.log.warning("Integrity: %s: test cell %s did not run to its end", student, gid)
