"""The static scan of a learner's cells for tampering patterns (used by :mod:`bertlab.instructor.integrity`)."""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from nbgrader import utils as nbgrader_utils

GUARD_TAG = "bertlab-guard"  # the tag of the cells the grader adds (never the learner's)


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
