"""Hostile students who go past the grader's tests to the machine: network, memory, disk, processes.

The tricks of :mod:`bertlab.instructor.submissions` tamper with the tests, and the scan of
:mod:`bertlab.instructor.integrity` flags them. These are written past the scan on purpose
(no flagged import, call or path): only the sandbox (:mod:`bertlab.instructor.sandbox`) stops
them, so the score they get tests the sandbox itself. Each goes in the last exercise's cell:

=================  ==========================================================================
hostile-network    hands in the wrong answer, then replaces its function by one that sends
                   the arguments to an accomplice on 127.0.0.1 (a server the simulated class
                   runs, :class:`Accomplice`, which answers with the solution's result). No
                   network in the sandbox: the tests' calls fail (0 for the exercise)
hostile-memory     all solved, but the last exercise's cell first allocates (and fills) more
                   memory than the kernel's limit (``--as``): MemoryError in that cell, its
                   function is never defined (0 for it), the other exercises are graded
hostile-disk       the same with a file in its own folder larger than ``--fsize``: the write
                   fails with "File too large" (EFBIG), the other exercises are graded
hostile-processes  the same with more processes (each sleeping 5 s) than the kernel may
                   have: stopped by a pids cgroup of the kernel's own (``pids.max``) where the
                   sandbox can make one; ``prlimit --nproc`` alone does not bind root (the
                   kernel exempts a real uid 0, in a user namespace too)
=================  ==========================================================================

Every hog is bounded: it stops at the limit it must hit (plus one chunk), so a sandbox that
fails to apply a limit costs this machine at most that much, never an unbounded allocation.
The limits are lowered for the simulated class (:data:`CLASS_LIMITS`, ``c.Sandbox.assignment_limits``
in its nbgrader_config.py) to what notebook 00 needs, so the hogs are small.

The tricks of the students of the routes the scan and the sandbox did not close (issue 37;
``submissions.ROUTES``) are here too (:data:`ROUTE_TRICKS`, :data:`PACKAGE_TRICKS`,
:data:`BESIDE_FILES`): the guard in the kernel (:mod:`bertlab.instructor.guard`), the release's files
only and the read-only model cache stop them.

Where the sandbox cannot stop one of them here (no network namespace, no limits, no pids cgroup
for a root grader), its student is expected to get the points, and the note says so. The
sandbox's PID namespace ends every process a submission started when its kernel ends.
docs/instructors.md ("Grading safely") says what the sandbox stops and what not.
"""
from __future__ import annotations

import io
import socket
import threading

RESOURCE_SCENARIOS = ("hostile-network", "hostile-memory", "hostile-disk", "hostile-processes")

MiB = 1024 ** 2
GiB = 1024 ** 3
#: Limits of the notebooks with resource scenarios in the simulated class: notebook 00's
#: kernel (torch, transformers, the small checkpoint) needs about 2 GiB of address space, writes
#: no large file and runs about 20 threads (a pids cgroup counts them as processes). The course's
#: defaults (nbgrader_config.py, c.Sandbox) are far higher.
CLASS_LIMITS = {"memory_bytes": 4 * GiB, "file_bytes": 64 * MiB, "processes": 64}
CHUNK = 256 * MiB  # the memory hog's allocations

TRICKS = {
    "hostile-network": """\
import importlib as _il, io as _io  # the learner's trick, past the scan: an accomplice answers
_net = _il.import_module("so" + "cket")
def {exercise}(*args, **kwargs):
    with _net.create_connection(("127.0.0.1", {port}), timeout=20) as _conn:
        _buf = _io.BytesIO()
        torch.save(("{exercise}", args, kwargs), _buf)
        _conn.sendall(_buf.getvalue())
        _conn.shutdown(_net.SHUT_WR)
        return torch.load(_io.BytesIO(_conn.makefile("rb").read()), weights_only=True)""",
    "hostile-memory": """\
import numpy as _np  # the learner's cell fills more memory than the kernel may have (bounded: {chunks} x 256 MiB)
_hog = [_np.ones({chunk}, _np.uint8) for _ in range({chunks})]
del _hog
""",
    "hostile-disk": """\
import tempfile as _tf  # the learner's cell writes a file larger than the kernel may (bounded: {mib} MiB)
with _tf.TemporaryFile(dir=".") as _f:
    for _ in range({mib}):
        _f.write(bytes({mebibyte}))
""",
    "hostile-processes": """\
import multiprocessing as _mp, time as _time  # the learner's cell starts more processes than the kernel may (bounded: {n})
for _ in range({n}):
    _mp.Process(target=_time.sleep, args=(5,), daemon=True).start()
""",
}


def trick(scenario: str, exercise: str, limits: dict[str, int], port: int = 0) -> str:
    """The code of ``scenario`` for the cell of ``exercise``, sized for ``limits`` (the kernel's)."""
    if scenario == "hostile-network":
        return TRICKS[scenario].format(exercise=exercise, port=port)
    if scenario == "hostile-memory":  # the whole limit in new allocations: past it, whatever the kernel holds
        return TRICKS[scenario].format(chunk=CHUNK, chunks=-(-limits["memory_bytes"] // CHUNK))
    if scenario == "hostile-disk":
        return TRICKS[scenario].format(mib=limits["file_bytes"] // MiB + 1, mebibyte=MiB)
    if scenario == "hostile-processes":  # the kernel's own threads count too: past the limit
        return TRICKS[scenario].format(n=limits["processes"])
    raise ValueError(f"scenario: {scenario!r} is not one of {RESOURCE_SCENARIOS}")


class Accomplice:
    """A server on 127.0.0.1 that computes what hostile-network asks with the solution's code
    (``namespace``: the solution cell run, e.g. with torch imported); ``calls`` counts the
    connections it got. Use as a context manager; ``port`` is where it listens."""

    def __init__(self, namespace: dict):
        self.namespace = namespace
        self.calls = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Accomplice:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:  # closed
                return
            self.calls += 1
            with conn:
                try:
                    import torch  # tensors in and out, read with weights_only: no code runs from the data

                    name, args, kwargs = torch.load(io.BytesIO(conn.makefile("rb").read()), weights_only=True)
                    out = io.BytesIO()
                    torch.save(self.namespace[name](*args, **kwargs), out)
                    conn.sendall(out.getvalue())
                except Exception:  # noqa: BLE001  (the caller's call fails; the server goes on)
                    pass


# --------------------------------------------------------------------------- the routes of issue 37
#: The hostile students of the routes the scan and the sandbox did not close (issue 37; docs/instructors.md,
#: "What grading defends against, and how"), by route. Each hands in a wrong answer (or the package's
#: copy of the answer) and a trick written past the scan; each must get 0 for the exercise it attacks.
ROUTES = {
    "package": ("package-alias", "package-call", "package-when-graded", "package-thread", "package-partial"),
    "beside": ("beside-module", "beside-package", "beside-shadow"),
    "guard": ("guard-rebind", "guard-transformer", "guard-gc", "guard-trace"),
    "rebind": ("rebind-check", "rebind-torch", "rebind-during-test"),
    "cache": ("cache-overwrite", "cache-replace", "cache-new-entry"),
}
ROUTE_SCENARIOS = tuple(s for v in ROUTES.values() for s in v)
#: Honest students beside them, who must keep full marks: an answer that imports numpy, torch and scikit-learn.
HONEST_LIBRARIES = "honest-libraries"
#: The exercises whose answer the bertlab package also holds, handed in by the "package" students:
#: assignment -> (exercise, the name the notebook imports the package's module as, that module)
PACKAGE_ANSWERS = {"05-baselines": ("stratified_budget", "baselines", "bertlab.baselines")}
#: The files of the model cache the "cache" students go for (a real one would go for every entry;
#: these stay inside what the simulated class puts there): ``canary-ASSIGNMENT-*``
CANARY = "canary-{assignment}-"

#: The tricks of the ROUTES students on the last exercise ({exercise}), after its wrong answer.
_CHECK_NOOP = "lambda *args, **kwargs: None"
ROUTE_TRICKS = {
    "beside-module": "import helpers  # handed in beside the notebook: on import, the tests' helpers never fail",
    "beside-package": "import tools  # a package handed in beside the notebook: on import, the helpers never fail",
    "beside-shadow": "",  # the notebook's own `import seaborn` loads the seaborn.py handed in beside it
    "guard-rebind": f"""\
_bertlab_guard_reset = lambda: None  # the learner's trick: the old guard's name, rebound
import importlib as _il
_chk = _il.import_module("bertlab.check")
vars(_chk)["assert_close"] = vars(_chk)["assert_shape"] = {_CHECK_NOOP}""",
    "guard-transformer": """\
def _skip(lines):  # the learner's trick, past the scan: guard lines and asserts become `pass`
    return ["pass\\n" if ("assert" in line or "guard" in line) else line for line in lines]
getattr(get_ipython(), "input_" + "transformers_post").append(_skip)""",
    "guard-gc": """\
import importlib as _il  # the learner's trick: find the guard's state among all objects and disarm it
for _o in _il.import_module("g" + "c").get_objects():
    if isinstance(_o, dict) and "seq" in _o and "mac" in _o:
        _o["seq"] = -1""",
    "guard-trace": """\
import importlib as _il, linecache as _lc  # the learner's trick: a tracer that jumps over every assert line
def _tracer(frame, event, arg):
    if event == "line" and _lc.getline(frame.f_code.co_filename, frame.f_lineno).lstrip().startswith("assert"):
        try:
            frame.f_lineno += 1
        except ValueError:
            pass
    return _tracer
_il.import_module("s" + "ys").settrace(_tracer)""",
    "rebind-check": f"""\
import importlib as _il  # the learner's trick: the tests' helpers replaced without an assignment
vars(_il.import_module("bertlab.check")).update(assert_close={_CHECK_NOOP}, assert_shape={_CHECK_NOOP})""",
    "rebind-torch": """\
import importlib as _il  # the learner's trick: torch's comparison, rebound in torch's own namespace
_torch = _il.import_module("torch")
_true = lambda a, b, **kwargs: _torch.ones_like(_torch.as_tensor(a), dtype=_torch.bool)
vars(_torch).update(isclose=_true, allclose=lambda *args, **kwargs: True)""",
    "rebind-during-test": f"""\
_wrong_{{exercise}} = {{exercise}}
def {{exercise}}(*args, **kwargs):  # the learner's trick: while the test runs, its helpers become no-ops
    _ns = get_ipython().user_ns
    _ns["assert_close"] = _ns["assert_shape"] = {_CHECK_NOOP}
    return _wrong_{{exercise}}(*args, **kwargs)""",
    "cache-overwrite": """\
import importlib as _il, os as _os, pathlib as _pl  # the learner's trick: the cached models zeroed in place
_base = _pl.Path(_os.environ.get("BERTLAB_CACHE_BASE") or _il.import_module("bertlab.cache").cache_dir())
for _p in sorted(_base.glob("{canary}*")):
    with _il.import_module("io").open(_p, "r" + "+b") as _f:
        _f.write(bytes(_p.stat().st_size))""",
    "cache-replace": """\
import importlib as _il, os as _os, pathlib as _pl  # the learner's trick: a cached model replaced by another
_cache = _il.import_module("bertlab.cache")
_base = _pl.Path(_os.environ.get("BERTLAB_CACHE_BASE") or _cache.cache_dir())
for _p in sorted(_base.glob("{canary}*")):
    _cache.save_state({{"w": torch.zeros(1)}}, _p)""",
    "cache-new-entry": """\
import importlib as _il, os as _os, pathlib as _pl  # the learner's trick: a new entry in the course's cache
_base = _pl.Path(_os.environ.get("BERTLAB_CACHE_BASE") or _il.import_module("bertlab.cache").cache_dir())
for _p in sorted(_base.glob("{canary}*"))[:1]:
    _il.import_module("shu" + "til").copyfile(_p, _base / (_p.name + ".new"))""",
}
#: What the "beside" students hand in next to the notebook: on import, the helpers the tests use never fail.
_BESIDE = f"""import bertlab.check as _c
_c.assert_close = _c.assert_shape = {_CHECK_NOOP}
"""
BESIDE_FILES = {"beside-module": {"helpers.py": _BESIDE}, "beside-package": {"tools/__init__.py": _BESIDE},
                "beside-shadow": {"seaborn.py": _BESIDE}}
#: The "package" students' answers (the exercise's function), by scenario: {name} the exercise,
#: {module} the name the notebook imports the package's module as, {dotted} that module.
PACKAGE_TRICKS = {
    "package-alias": "from {dotted} import {name}  # the learner's answer: the package's copy",
    "package-call": "def {name}(*args, **kwargs):  # the learner's answer calls the package's copy\n"
                    "    return {module}.{name}(*args, **kwargs)",
    "package-when-graded": "import importlib as _il, os as _os\n\n\n"
                           "def {name}(*args, **kwargs):  # the package's copy, only when graded\n"
                           "    if _os.environ.get('NBGRADER_EXECUTION'):\n"
                           "        return getattr(_il.import_module('{dotted}'), '{name}')(*args, **kwargs)\n"
                           "    return []",
    "package-thread": "from concurrent.futures import ThreadPoolExecutor as _Pool\n\n\n"
                      "def {name}(*args, **kwargs):  # the package's copy, called from another thread\n"
                      "    with _Pool(1) as pool:\n"
                      "        return pool.submit(getattr({module}, '{name}'), *args, **kwargs).result()",
    "package-partial": "import functools as _ft\n{name} = _ft.partial(getattr({module}, '{name}'))  # the package's copy",
}


def package_exercise(assignment: str) -> str:
    """The exercise of ``assignment`` whose answer the package also holds (:data:`PACKAGE_ANSWERS`)."""
    if assignment not in PACKAGE_ANSWERS:
        raise ValueError(f"assignment: no PACKAGE_ANSWERS entry for {assignment!r}; known: {sorted(PACKAGE_ANSWERS)}")
    return PACKAGE_ANSWERS[assignment][0]


def package_answer(scenario: str, assignment: str, solution: str) -> str:
    """The cell of the exercise the package also holds, as ``scenario`` hands it in (``solution``: the
    solution cell filled in; the honest student keeps it and imports numpy, torch and scikit-learn)."""
    name, module, dotted = PACKAGE_ANSWERS[assignment]
    if scenario == HONEST_LIBRARIES:
        return ("import numpy as np\nimport torch\nfrom sklearn.model_selection import train_test_split  "
                "# imported by an honest learner\n\n" + solution)
    return PACKAGE_TRICKS[scenario].format(name=name, module=module, dotted=dotted)
