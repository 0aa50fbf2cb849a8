"""The guard in a grading kernel (installed by :class:`bertlab.instructor.integrity.GuardedExecute`).

:func:`kernel_guard` runs in the learner's kernel, in its first cell, before any learner code; its
source is sent there as text (:func:`guard_source`). :func:`read_proofs` reads what it wrote, in the
grader's process. docs/instructors.md ("What grading defends against, and how") says what it closes.
"""
from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path


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
def kernel_guard(path):  # noqa: C901 (one closure: its state stays out of the learner's reach)
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
            f"    exec({inspect.getsource(kernel_guard)!r}, ns)\n"
            f"    ns['kernel_guard']({path!r})\n\n\n"
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


def imported_modules(sources) -> list[str]:
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


def defined_functions(sources) -> list[str]:
    """Names of the functions and classes the solution cells define (the exercises' answers)."""
    names = set()
    for src in sources:
        names |= set(re.findall(r"^(?:def|class) (\w+)", src, re.M))
    return sorted(names)
