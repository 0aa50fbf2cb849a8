"""Each submission's kernel in a sandbox: bubblewrap (Debian's ``bubblewrap``) plus ``prlimit``.

:class:`SandboxedKernelManager` starts the grading kernel as

    bwrap --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp [hide the grader's files]
          --bind SUBMISSION_FOLDER SUBMISSION_FOLDER --chdir SUBMISSION_FOLDER
          -- prlimit --as=... --nproc=... --fsize=... --nofile=... -- python -m ipykernel_launcher ...

so the learner's code sees the whole file system read-only, cannot see the course's solutions/,
gradebook, submitted/, autograded/ (other learners), feedback/ and exchange (empty folders, or
an unreadable file, stand in), nor the grader's home folder (its keys, and the connection files
of the grader's other kernels; the kernel gets its own connection file only), can write only
in its own autograded folder and a private /tmp, and runs under limits on memory (address space),
processes, file size and open files.

**Not covered**: the network (the kernel talks to nbgrader over TCP on loopback, so it keeps
the host's network namespace: grade in ``unshare --net``, docs/instructors.md); CPU time (the
cell timeout of nbgrader stops a stuck cell); ``--nproc`` is not enforced for root (the grader
runs as root in a container: run it as an unprivileged user for that limit).

:func:`mechanism` says what works on this machine: ``bwrap`` (bubblewrap present and able to
create its namespaces), else ``prlimit`` (limits only: no file isolation), else ``none``. The
grading log says which on every submission (``Sandbox:`` lines); it is never silent.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

from jupyter_client import AsyncKernelManager
from traitlets import Bool, Integer, List, Unicode
from traitlets.config import Configurable

from bertlab import cache
from bertlab.instructor import course

GiB = 1024 ** 3


class Sandbox(Configurable):
    """Settings of the grading sandbox (``c.Sandbox.*`` in nbgrader_config.py)."""

    enabled = Bool(True, help="Start each grading kernel in the sandbox.").tag(config=True)
    memory_bytes = Integer(12 * GiB, help="Address-space limit of the kernel (prlimit --as). torch "
                           "reserves several GiB of address space it never uses: keep it well above the "
                           "resident memory a notebook needs.").tag(config=True)
    processes = Integer(512, help="Process limit (prlimit --nproc; not enforced for root).").tag(config=True)
    file_bytes = Integer(2 * GiB, help="Largest file the kernel may write (prlimit --fsize).").tag(config=True)
    open_files = Integer(1024, help="Open files (prlimit --nofile).").tag(config=True)
    hide = List(Unicode(), help="More paths to hide from the kernel (besides the course's solutions, "
                "gradebook, submitted, autograded, feedback and exchange).").tag(config=True)


@functools.lru_cache(maxsize=None)
def mechanism() -> str:
    """``bwrap``, ``prlimit`` or ``none``: the strongest sandbox that works on this machine."""
    if shutil.which("bwrap"):
        probe = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                                "--tmpfs", "/tmp", "true"], capture_output=True, text=True)
        if probe.returncode == 0:
            return "bwrap"
        mechanism.failure = probe.stderr.strip()  # e.g. "No permissions to creating new namespace"
    if shutil.which("prlimit"):
        return "prlimit"
    return "none"


def describe() -> str:
    """One line for the grading log: what isolates a submission here."""
    m = mechanism()
    if m == "bwrap":
        return ("Sandbox: bubblewrap + prlimit (own folder writable, grader's files hidden, memory/file/process "
                "limits; network not isolated)")
    why = getattr(mechanism, "failure", "") or "bwrap not found (apt-get install bubblewrap)"
    if m == "prlimit":
        return f"Sandbox: NOT SANDBOXED for files: {why}; only prlimit limits (memory, file size, processes)"
    return f"Sandbox: NOT SANDBOXED: {why}, and no prlimit: submissions run with the grader's rights"


def _course_paths(config) -> tuple[Path, list[Path]]:
    """The course root and what the kernel must not see."""
    from nbgrader.coursedir import CourseDirectory

    cd = CourseDirectory(config=config)
    root = Path(cd.root).resolve()
    hidden = [root / d for d in (cd.source_directory, cd.submitted_directory, cd.autograded_directory,
                                 cd.feedback_directory)]
    hidden.append(root / "gradebook.db")
    url = getattr(cd, "db_url", "") or ""
    if url.startswith("sqlite:///"):
        hidden.append(Path(url[len("sqlite:///"):]))
    from nbgrader.exchange.default.exchange import Exchange

    hidden.append(Path(Exchange(config=config).root))  # the exchange: everyone's submissions
    return root, hidden


def wrap(cmd: list[str], cwd: str | os.PathLike | None, config=None, settings: Sandbox | None = None) -> list[str]:
    """The kernel command ``cmd`` run in the sandbox, with ``cwd`` (its folder) writable."""
    s = settings or Sandbox(config=config)
    m = mechanism() if s.enabled else "none"
    if m == "none":
        return list(cmd)
    limits = ["prlimit", f"--as={s.memory_bytes}", f"--nproc={s.processes}", f"--fsize={s.file_bytes}",
              f"--nofile={s.open_files}", "--"]
    if m == "prlimit":
        return limits + list(cmd)
    out = ["bwrap", "--die-with-parent", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
           "--tmpfs", "/tmp", "--setenv", "IPYTHONDIR", "/tmp/ipython", "--setenv", "MPLCONFIGDIR", "/tmp/matplotlib"]
    root, hidden = _course_paths(config)
    # what the private /tmp would hide but the kernel needs (a course, a clone of this repository
    # or its venv may live under /tmp, as on a CI machine): seen read-only again; the hidden paths
    # below are laid over it
    needed = {root, course.ROOT, Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent}
    for keep in sorted(p.resolve() for p in needed if p.exists()):
        if Path("/tmp") in keep.parents:
            out += ["--ro-bind", str(keep), str(keep)]
    hidden += [Path(p) for p in s.hide]
    home = Path.home()
    hidden.append(home)  # the grader's keys and tokens, and Jupyter's runtime folder (other kernels' keys)
    for p in hidden:
        if p.is_dir():
            out += ["--tmpfs", str(p)]
        elif p.exists():
            out += ["--ro-bind", "/dev/null", str(p)]
    # the Python that runs the kernel, where it lives under a hidden folder (e.g. a venv in the home)
    for keep in sorted({Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent}):
        if any(keep == h or h in keep.parents for h in hidden) and keep.is_dir():
            out += ["--ro-bind", str(keep), str(keep)]
    for i, arg in enumerate(cmd):  # the kernel's own connection file, and no other kernel's
        path = cmd[i + 1] if arg == "-f" and i + 1 < len(cmd) else arg[3:] if arg.startswith("-f=") else None
        if path and Path(path).is_file():
            out += ["--ro-bind", path, path]
    # the course's model cache stays writable: in grading mode the notebooks build their reduced
    # models there once and every later submission loads them (not covered: a submission can
    # overwrite an entry, which changes later submissions' lesson cells, not their tests' answers)
    model_cache = cache.cache_dir()
    out += ["--bind", str(model_cache), str(model_cache)]
    if cwd:
        out += ["--bind", str(cwd), str(cwd), "--chdir", str(cwd)]
    return out + ["--"] + limits + list(cmd)


class SandboxedKernelManager(AsyncKernelManager):
    """jupyter_client's kernel manager, starting the kernel through :func:`wrap`."""

    async def _async_pre_start_kernel(self, **kw):
        cmd, kw = await super()._async_pre_start_kernel(**kw)
        cmd = wrap(cmd, kw.get("cwd"), self.config)
        if cmd[0] == "bwrap":
            # A SIGINT to the kernel's process group reaches bwrap too, which dies of it (and takes
            # the kernel along): interrupt by message on the control channel instead (ipykernel
            # then sends SIGINT to itself), so the cell timeout interrupts only the cell.
            self.kernel_spec.interrupt_mode = "message"
        return cmd, kw
