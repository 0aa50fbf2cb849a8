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
