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
3. **guards** the kernel from its first cell, before any learner code (:func:`_kernel_guard`, an
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

import ast
import inspect
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from nbgrader import utils as nbgrader_utils
from nbgrader.preprocessors import Execute
from traitlets import Bool, Dict

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


# --------------------------------------------------------------------------- the guard in the kernel
# The first cell of every graded run installs it (``GUARD``), before any learner code. Its state
# (the kernel's originals, the expected code of each test cell, the key of its proofs) lives in
# the closure of an audit hook (PEP 578): no name or module attribute refers to it, an audit hook
# cannot be removed, and the hook refuses what would reach it (gc's object walks, ctypes' memory
# reads, sys._current_frames). Its names resolve in a copy of builtins taken then, and it calls no
# code a learner can rebind. What it does, on the audit events of the kernel:
#
# - "exec" of a reset cell (``__bertlab_guard__ = "...reset K"``, before test cell K): restores
#   builtins, sys.path/meta_path/modules, IPython's transformers and event hooks, and every attribute
#   of the protected modules (the bertlab modules the notebook imports, bertlab.check, numpy,
#   numpy.testing, torch, torch.testing, torch.nn.functional) and of their classes and torch.Tensor;
# - "exec" of each statement of test cell K: it must be, in order, the code IPython compiled from
#   the cell at kernel start (so nothing rewrote the cell, by any means), called from IPython's own
#   run_code; the protected attributes are restored before each statement after the first;
# - the package's copies of this notebook's answers (functions of bertlab named like a function
#   the solution cells define) get a first line whose ``__code__`` access reaches the hook, which
#   refuses the call when the learner's code (a frame of a learner's cell, before any frame of the
#   package) called it, in this thread or the main one;
# - each event is a line in the proof file, chained with a keyed hash (the key came from a file
#   the grader wrote and the guard removed): the grader checks, outside the kernel, that each test
#   cell without an error ran whole and unchanged, and reads what was restored.
def _kernel_guard(path):  # noqa: C901 (one closure: its state stays out of the learner's reach)
    """Read the grader's key file (and remove it), capture the kernel's state, arm the audit hook."""
    import ast
    import builtins
    import hashlib
    import importlib
    import inspect
    import json
    import os
    import sys
    import textwrap
    import threading
    import types

    from ipykernel.compiler import get_file_name
    from IPython.core.interactiveshell import InteractiveShell

    with open(path) as f:
        spec = json.load(f)
    os.remove(path)
    key = bytes.fromhex(spec["key"])
    out = os.open(spec["proof"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    ip = get_ipython()  # noqa: F821 (the kernel's)
    for name in spec["modules"]:  # what the tests compare against, imported before any learner code
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 (not importable here: nothing to protect)
            pass
    protected = {n: mod for n, mod in list(sys.modules.items()) if mod is not None and (
        n in spec["modules"] or n == "bertlab" or n.startswith("bertlab.") and not n.startswith("bertlab.instructor"))}
    modules = [(n, vars(mod), dict(vars(mod))) for n, mod in protected.items()]
    classes = [(f"{n}.{k}", v, dict(vars(v))) for n, mod in protected.items() if n.startswith("bertlab")
               for k, v in list(vars(mod).items()) if isinstance(v, type) and v.__module__ == n]
    if "torch" in sys.modules:
        classes.append(("torch.Tensor", sys.modules["torch"].Tensor, dict(vars(sys.modules["torch"].Tensor))))
    bdict = vars(builtins)
    bsnap = dict(bdict)
    tm = ip.input_transformer_manager
    lists = [(tm.cleanup_transforms, list(tm.cleanup_transforms)), (tm.line_transforms, list(tm.line_transforms)),
             (tm.token_transformers, list(tm.token_transformers)),
             (ip.input_transformers_post, list(ip.input_transformers_post)), (ip.ast_transformers, list(ip.ast_transformers)),
             (sys.path, list(sys.path)), (sys.meta_path, list(sys.meta_path)), (sys.path_hooks, list(sys.path_hooks))]
    lists += [(v, list(v)) for v in ip.events.callbacks.values()]
    smods, msnap, importer_cache = sys.modules, dict(sys.modules), sys.path_importer_cache

    # what each guard and test cell must run: compiled now, as IPython will compile the cell
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if ip.autoawait else 0
    expected = {}
    for k, kind, source in spec["cells"]:
        fname = get_file_name(source)
        tree = ip.compile.ast_parse(ip.transform_cell(source), filename=fname)
        codes, stores = [], []
        for node in tree.body:
            with ip.compile.extra_flags(flags):
                codes.append(ip.compile(ast.Module([node], []), fname, "exec"))
            stores.append(frozenset(
                [n.id for n in ast.walk(node) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)]
                + [(a.asname or a.name).split(".")[0] for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))
                   for a in n.names]
                + [n.name for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]))
        names = set()
        todo = list(codes)
        while todo:
            c = todo.pop()
            names.update(c.co_names)
            todo += [x for x in c.co_consts if isinstance(x, types.CodeType)]
        expected[fname] = (k, kind, codes, stores, frozenset(names))
    learner_files = frozenset(get_file_name(s) for s in spec["learner"])

    # the package's copies of this notebook's answers: a first line that calls the hook, which
    # refuses the call when it comes from the learner's code
    triggers, guarded = {}, set()
    package_dir = os.path.dirname(sys.modules["bertlab"].__file__) + os.sep if "bertlab" in sys.modules else "\0"
    for n, mod in protected.items():
        for name in spec["answers"] if n.startswith("bertlab") else ():
            fn = vars(mod).get(name)
            if not isinstance(fn, types.FunctionType) or id(fn.__code__) in guarded or fn.__code__.co_freevars:
                continue
            try:
                lines, first = inspect.getsourcelines(fn)
            except (OSError, TypeError):
                continue
            tree = ast.parse(textwrap.dedent("".join(lines)))
            ast.increment_lineno(tree, first - 1)
            node = tree.body[0]
            node.decorator_list = []
            body = node.body
            doc = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0].value, "value", None), str)
            at = 1 if doc and len(body) > 1 else 0
            probe = ast.parse("(lambda: None).__code__").body[0]
            for sub in ast.walk(probe):
                if "lineno" in sub._attributes:
                    sub.lineno = sub.end_lineno = body[at].lineno
                    sub.col_offset = sub.end_col_offset = 0
            body.insert(at, probe)
            code = compile(ast.Module([node], []), fn.__code__.co_filename, "exec", dont_inherit=True)
            new = next(c for c in code.co_consts if isinstance(c, types.CodeType) and c.co_name == fn.__name__)
            lam = next(c for c in new.co_consts if isinstance(c, types.CodeType) and c.co_name == "<lambda>")
            fn.__code__ = new
            triggers[id(lam)] = f"{fn.__module__}.{fn.__qualname__}"
            guarded.update((id(new), id(lam)))

    answer_names = frozenset(n.rsplit(".", 1)[-1] for n in triggers.values())
    user_ns = ip.user_ns
    cell_dir = os.path.dirname(get_file_name("")) + os.sep
    base = spec.get("cache_base")
    base = os.path.realpath(base) + os.sep if base else None
    getcwd, fspath = os.getcwd, os.fspath
    state = {"k": None, "pos": 0, "fname": None, "notes": [], "seq": 0, "mac": b"", "seen": {}}
    busy = set()
    run_code = InteractiveShell.run_code.__code__
    getframe, current_frames, get_ident = sys._getframe, sys._current_frames, threading.get_ident
    main = threading.main_thread().ident
    sha256, write = hashlib.sha256, os.write
    FunctionType, CodeType = types.FunctionType, types.CodeType
    MISSING = object()
    #: audit events that write files, and how many of their first arguments are paths
    WRITES = {"open": 1, "os.rename": 2, "os.replace": 2, "os.remove": 1, "os.rmdir": 1, "os.truncate": 1,
              "os.link": 2, "os.symlink": 2, "os.chmod": 1, "os.chown": 1, "os.utime": 1, "os.mkdir": 1,
              "shutil.copyfile": 2, "shutil.move": 2, "shutil.rmtree": 1}
    KERNEL_SET = ("input", "_", "__", "___")  # builtins ipykernel and IPython set at each execution
    REFUSED = {"gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.settrace", "sys.setprofile",
               "ctypes.string_at", "ctypes.wstring_at", "ctypes.cdata", "ctypes.cdata/buffer", "ctypes.addressof",
               "sys._current_frames"}

    def proof(k, status, notes=()):
        body = f"{state['seq']} {k} {status} {'|'.join(notes) or '-'}".replace("\n", " ")
        mac = sha256(key + state["mac"] + body.encode()).hexdigest()
        state["seq"], state["mac"] = state["seq"] + 1, mac.encode()
        write(out, f"{body} {mac}\n".encode())

    def restore():
        """What a learner's code can rebind, back to what it was at kernel start; the names restored."""
        changed = []
        for name, d, snap in modules:
            for k, v in snap.items():
                if d.get(k, MISSING) is not v:
                    d[k] = v
                    changed.append(f"{name}.{k}")
        for name, cls, snap in classes:
            live = vars(cls)
            for k, v in snap.items():
                if k not in ("__dict__", "__weakref__") and live.get(k, MISSING) is not v:
                    type.__setattr__(cls, k, v)
                    changed.append(f"{name}.{k}")
        for k in [k for k in bdict if k not in bsnap and k not in KERNEL_SET]:
            del bdict[k]
        for k, v in bsnap.items():
            if k not in KERNEL_SET and bdict.get(k, MISSING) is not v:
                bdict[k] = v
                changed.append(f"builtins.{k}")
        for live, snap in lists:
            if len(live) != len(snap) or any(a is not b for a, b in zip(live, snap)):
                live[:] = snap
                if "an IPython or import hook" not in changed:
                    changed.append("an IPython or import hook")
        for k, v in msnap.items():
            if smods.get(k, MISSING) is not v:
                smods[k] = v
                changed.append(f"sys.modules[{k}]")
        importer_cache.clear()
        return changed

    def same(a, b):
        """Code objects alike (their __future__ flags aside: a learner's cell may set some)."""
        if a.co_code != b.co_code or a.co_names != b.co_names or a.co_varnames != b.co_varnames \
                or len(a.co_consts) != len(b.co_consts):
            return False
        for x, y in zip(a.co_consts, b.co_consts):
            if type(x) is not type(y):
                return False
            if type(x) is CodeType:
                if not same(x, y):
                    return False
            elif not (x is y or x == y):
                return False
        return True

    def learner_call():
        """Whether the package function that called the hook was called by the learner's code."""
        frames = [getframe(3)]  # the hook, its helper, the package function, then its caller
        if get_ident() != main:
            frames.append(current_frames().get(main))
        for f in frames:
            while f is not None:
                fname = f.f_code.co_filename
                if fname in learner_files:
                    return True
                if fname.startswith(package_dir):
                    return False
                f = f.f_back
        return False

    def in_base(path):
        """Whether ``path`` (str, bytes or path-like; relative to the working folder) is in the course's cache."""
        try:
            path = fspath(path)
        except TypeError:
            return False
        if type(path) is bytes:
            path = path.decode(errors="replace")
        if type(path) is not str:
            return False
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        parts = []
        for part in path.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        path = "/" + "/".join(parts) + "/"
        return path.startswith(base)

    def bound_elsewhere(fname):
        """The exercises with a package copy that this test cell uses, bound to something that is not a
        function of a notebook cell (the package's copy itself, a partial of it...)."""
        bad = []
        for n in expected[fname][4] & answer_names:
            obj = user_ns.get(n, MISSING)
            if obj is MISSING:
                continue
            if type(obj) is not FunctionType or not obj.__code__.co_filename.startswith(cell_dir) \
                    or id(obj.__code__) in guarded:
                bad.append(n)
        return bad

    def on_exec(code):
        fname = getattr(code, "co_filename", None)
        if fname not in expected:
            return
        k, kind, codes, stores, used = expected[fname]
        caller = getframe(2)  # the hook, on_exec, then IPython's run_code
        ok = caller is not None and caller.f_code is run_code
        if kind == "reset":
            if ok and same(code, codes[0]):
                proof(k, "reset", restore())
                state["k"], state["fname"] = k, None
            return
        if state["fname"] != fname:
            state["fname"], state["pos"], state["k"], state["notes"] = fname, 0, k, []
        pos = state["pos"]
        if pos > len(codes):  # already found changed
            return
        if not ok or pos == len(codes) or not same(code, codes[pos]):
            proof(k, "bad", ["its code was changed before it ran"])
            state["pos"] = len(codes) + 1
            return
        if pos == 0:
            bad = bound_elsewhere(fname)
            if bad:
                proof(k, "bad", [f"{', '.join(bad)}: not a function of a notebook cell (the package's copy?)"])
        else:
            changed = restore()
            seen = state["seen"]  # the test's own names, changed by what its last statement called
            for n in used:
                if n in seen and user_ns.get(n, MISSING) is not seen[n] and n not in stores[pos - 1]:
                    if seen[n] is MISSING:
                        user_ns.pop(n, None)
                    else:
                        user_ns[n] = seen[n]
                    changed.append(n)
            if changed:
                state["notes"].append("restored while it ran: " + ",".join(changed[:8]))
        state["seen"] = {n: user_ns.get(n, MISSING) for n in used}
        state["pos"] = pos + 1
        if pos + 1 == len(codes):
            proof(k, "ok", state["notes"])

    def hook(event, args):
        me = get_ident()  # the hook's own events (and none of another thread's) are skipped
        if me in busy:
            return
        busy.add(me)
        try:
            if event == "exec":
                on_exec(args[0])
            elif event == "object.__getattr__":
                if args[1] == "__code__" and type(args[0]) is FunctionType:
                    name = triggers.get(id(args[0].__code__))
                    if name is not None and learner_call():
                        proof(state["k"], "bad", [f"its answer calls {name}, the package's copy of the exercise"])
                        raise RuntimeError(f"{name} is the bertlab package's copy of a graded exercise: while grading, "
                                           "your code cannot call it; write the exercise yourself")
            elif event in REFUSED:
                raise RuntimeError(f"{event} is not allowed while grading")
            elif base is not None and event in WRITES and (
                    event != "open" or len(args) > 1 and args[1] is not None and type(args[1]) is str
                    and any(c in args[1] for c in "wax+") or len(args) > 2 and type(args[2]) is int and args[2] & 0o3
                    ) and any(in_base(a) for a in args[:WRITES[event]]):
                raise PermissionError(f"the course's model cache is read-only while grading ({event})")
            elif event == "code.__new__" and len(args) > 1 and type(args[1]) is str and (
                    args[1].startswith(cell_dir) or args[1].startswith(package_dir)):
                raise RuntimeError("making code that claims to come from a notebook cell or the package is not "
                                   "allowed while grading")
            elif event == "function.__new__" and id(args[0]) in guarded:
                raise RuntimeError("copying a guarded function is not allowed while grading")
            elif event == "object.__setattr__" and len(args) > 2 and args[1] == "__code__" and (
                    id(args[2]) in guarded or type(args[0]) is FunctionType and id(args[0].__code__) in guarded):
                raise RuntimeError("changing a guarded function's __code__ is not allowed while grading")
        finally:
            busy.discard(me)

    proof("-", "start")
    sys.addaudithook(hook)


def guard_source(path: str) -> str:
    """The first cell of a graded run: the guard, defined in a namespace of its own (its names never
    resolve in the learner's), installed with the key file at ``path``, and no name left behind."""
    return ("def _bertlab_guard_install():\n    import builtins\n"
            "    ns = {'__builtins__': dict(vars(builtins)), '__name__': 'bertlab-guard'}\n"
            f"    exec({inspect.getsource(_kernel_guard)!r}, ns)\n"
            f"    ns['_kernel_guard']({path!r})\n\n\n"
            "_bertlab_guard_install()\ndel _bertlab_guard_install")


#: modules whose attributes the guard restores before each test statement (besides the bertlab
#: modules the notebook imports): what the course's tests compare with
PROTECTED = ("bertlab.check", "numpy", "numpy.testing", "torch", "torch.testing", "torch.nn.functional")
PROOF_LINE = re.compile(r"^(\d+) (\S+) (\S+) (.*) ([0-9a-f]{64})$")


def read_proofs(path: Path, key: bytes) -> dict:
    """The guard's proof lines, checked: ``{k: [(status, notes)]}``; the chain ends at the first line
    that is not the next one (a line removed, changed or added by the learner's code)."""
    import hashlib

    out, mac = {}, b""
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    for seq, line in enumerate(lines):
        m = PROOF_LINE.match(line)
        body = line.rsplit(" ", 1)[0]
        if not m or int(m.group(1)) != seq or hashlib.sha256(key + mac + body.encode()).hexdigest() != m.group(5):
            out.setdefault("broken", []).append(("broken", f"line {seq + 1}"))
            break
        mac = m.group(5).encode()
        out.setdefault(m.group(2), []).append((m.group(3), m.group(4)))
    return out


def _imported_modules(sources) -> list[str]:
    """The bertlab modules a notebook's cells import (``from bertlab import a``, ``import bertlab.b``)."""
    found = set()
    for src in sources:
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "bertlab"}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "bertlab":
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}  # maybe modules: tried, else skipped
    return sorted(n for n in found if not n.startswith("bertlab.instructor"))


def _defined_functions(sources) -> list[str]:
    """Names of the functions and classes the solution cells define (the exercises' answers)."""
    names = set()
    for src in sources:
        names |= set(re.findall(r"^(?:def|class) (\w+)", src, re.M))
    return sorted(names)


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
        line = sandbox.describe(settings) if settings.enabled else \
            "Sandbox: NOT SANDBOXED: c.Sandbox.enabled is False in the course's nbgrader_config.py"
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
                    "modules": list(PROTECTED) + _imported_modules(instructor or [c.source for c in nb.cells]),
                    "answers": _defined_functions(solutions)}
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
