"""Each submission's kernel in a sandbox: bubblewrap (Debian's ``bubblewrap``) plus ``prlimit``.

:class:`SandboxedKernelManager` starts the grading kernel as

    bwrap --unshare-net --unshare-pid --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp
          [hide the grader's files] --bind SOCKET_FOLDER SOCKET_FOLDER
          --bind SUBMISSION_FOLDER SUBMISSION_FOLDER --chdir SUBMISSION_FOLDER
          -- prlimit --as=... --nproc=... --fsize=... --nofile=... -- python -m ipykernel_launcher ...

so the learner's code sees the whole file system read-only, cannot see the course's solutions/,
gradebook, submitted/, autograded/ (other learners), feedback/ and exchange (empty folders, or
an unreadable file, stand in), nor the grader's home folder (its keys, and the connection files
of the grader's other kernels; the kernel gets its own connection file only), can write only
in its own autograded folder and a private /tmp, and runs under limits on memory (address space),
processes, file size and open files. It has **no network**: a network namespace of its own
(``--unshare-net``: only a loopback of its own, nothing to connect to), which works because the
kernel talks to nbgrader over Unix sockets (jupyter_client's ``ipc`` transport) in a folder of
its own that the sandbox binds, not over TCP. Every process it starts lives in a PID namespace
of its own (``--unshare-pid``) and dies with the kernel.

Where bubblewrap cannot create a network namespace (:func:`network`), the kernel talks TCP on
the host's loopback and keeps the network, and the grading log says so (``network NOT cut``).

Processes: ``--nproc`` does not bind root (the kernel exempts a real uid 0 from RLIMIT_NPROC, in
a user namespace too), so where cgroup v1's pids hierarchy is writable (:func:`pids_cgroup`) each
kernel gets a pids cgroup of its own with ``pids.max`` = the process limit (threads count too).

**Not covered**: CPU time (the cell timeout of nbgrader stops a stuck cell); the process count
of a root grader without a writable pids cgroup (the log says so); the total disk a submission
fills with many files, each under ``--fsize``.

:func:`facts` probes the machine once (bubblewrap, its network namespace, prlimit, a pids cgroup,
root); every decision is computed from those facts: :func:`mechanism` (``bwrap``, else ``prlimit``:
limits only, no file isolation, else ``none``), :func:`cuts_network`, :func:`processes_bounded`
and the log line :func:`describe`, on every submission (``Sandbox:`` lines; never silent). Where
bubblewrap is unavailable, grading refuses to start (:func:`refusal`) unless the instructor allows
it (``--allow-unsandboxed``, ``c.Sandbox.allow_unsandboxed``).
"""
from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jupyter_client import AsyncKernelManager
from traitlets import Bool, Dict, Integer, List, Unicode, default
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
    processes = Integer(512, help="Process limit (prlimit --nproc, which does not bind root; and pids.max "
                        "of the kernel's pids cgroup where one can be made, threads included).").tag(config=True)
    file_bytes = Integer(2 * GiB, help="Largest file the kernel may write (prlimit --fsize).").tag(config=True)
    open_files = Integer(1024, help="Open files (prlimit --nofile).").tag(config=True)
    hide = List(Unicode(), help="More paths to hide from the kernel (besides the course's solutions, "
                "gradebook, submitted, autograded, feedback and exchange).").tag(config=True)
    cut_network = Bool(True, help="Give the kernel no network (a network namespace of its own; it talks "
                       "to nbgrader over Unix sockets). Needs bubblewrap.").tag(config=True)
    allow_unsandboxed = Bool(False, help="Grade even where the file-system sandbox (bubblewrap) is unavailable; the "
                             "class report and the feedback index then say so in their first line. Without it, "
                             "grading refuses to start there.").tag(config=True)
    assignment_limits = Dict(help="Limits of one assignment's kernels, by assignment name, e.g. "
                             "{'00-welcome': {'memory_bytes': 4 * GiB, 'file_bytes': 64 * 1024**2}}: any of "
                             "memory_bytes, processes, file_bytes, open_files; the others as above.").tag(config=True)

    @default("allow_unsandboxed")
    def _allow_from_env(self):  # how `grading autograde --allow-unsandboxed` reaches nbgrader's processes
        return os.environ.get(ALLOW_ENV, "") not in ("", "0")

    def limits(self, assignment: str | None = None) -> dict[str, int]:
        """The limits of a kernel grading ``assignment`` (with its entry of assignment_limits)."""
        out = {k: getattr(self, k) for k in LIMITS}
        extra = self.assignment_limits.get(assignment, {}) if assignment else {}
        unknown = sorted(set(extra) - set(LIMITS))
        if unknown:
            raise ValueError(f"c.Sandbox.assignment_limits[{assignment!r}]: unknown {unknown}; known: {list(LIMITS)}")
        return {**out, **{k: int(v) for k, v in extra.items()}}


#: Set (to 1) by ``grading autograde --allow-unsandboxed``: the default of ``c.Sandbox.allow_unsandboxed``.
ALLOW_ENV = "BERTLAB_ALLOW_UNSANDBOXED"

#: The limits, as prlimit sets them.
LIMITS = {"memory_bytes": "--as", "processes": "--nproc", "file_bytes": "--fsize", "open_files": "--nofile"}


@dataclass(frozen=True)
class Facts:
    """What this machine allows, probed once (:func:`facts`). Every decision of the sandbox
    (:func:`mechanism`, :func:`network`, :func:`processes_bounded`, :func:`describe`) is computed
    from these, so the log line cannot disagree with what the kernel gets, and a test can pass
    any combination (bubblewrap or not, user namespaces or not, a pids cgroup or not, root or not)."""

    bwrap: str = ""        # "" when bubblewrap runs here, else why not (not found, namespaces refused)
    netns: str = ""        # "" when bubblewrap can also make a network namespace, else why not
    prlimit: bool = True   # util-linux's prlimit is on PATH
    pids_cgroup: str = ""  # "" when a kernel can get a pids cgroup of its own, else why not
    root: bool = False     # the grader runs as uid 0 (RLIMIT_NPROC does not bind it)


BWRAP_MISSING = "bwrap not found (apt-get install bubblewrap)"


@functools.lru_cache(maxsize=None)
def facts() -> Facts:
    """Probe this machine: bubblewrap (plain, then with a network namespace), prlimit, a pids
    cgroup, root. Cached: a grading run asks once."""
    if not shutil.which("bwrap"):
        bwrap, netns = BWRAP_MISSING, "no bubblewrap"
    else:
        base = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        probe = subprocess.run(["bwrap", *base, "--tmpfs", "/tmp", "true"], capture_output=True, text=True)
        # e.g. "No permissions to creating new namespace" where user namespaces are off
        bwrap = "" if probe.returncode == 0 else (probe.stderr.strip() or f"bwrap exited {probe.returncode}")
        netns = "no bubblewrap"
        if not bwrap:
            probe = subprocess.run(["bwrap", "--unshare-net", "--unshare-pid", *base, "true"], capture_output=True, text=True)
            netns = "" if probe.returncode == 0 else f"bwrap --unshare-net failed: {probe.stderr.strip() or probe.returncode}"
    return Facts(bwrap=bwrap, netns=netns, prlimit=bool(shutil.which("prlimit")), pids_cgroup=_probe_pids_cgroup(),
                 root=os.getuid() == 0)


def mechanism(f: Facts | None = None) -> str:
    """``bwrap``, ``prlimit`` or ``none``: the strongest sandbox that works on this machine."""
    f = f or facts()
    return "bwrap" if not f.bwrap else "prlimit" if f.prlimit else "none"


def network(f: Facts | None = None) -> str:
    """Why the kernel keeps the network here ("" when bubblewrap can cut it: ``--unshare-net``)."""
    return (f or facts()).netns


def pids_cgroup(f: Facts | None = None) -> str:
    """Why a kernel cannot get a pids cgroup of its own here ("" when it can)."""
    return (f or facts()).pids_cgroup


def processes_bounded(f: Facts | None = None, settings: Sandbox | None = None) -> bool:
    """Whether a kernel's process count is bounded here: a pids cgroup (any grader), or ``--nproc``
    for a grader that is not root (the kernel exempts root from RLIMIT_NPROC, in a user namespace too)."""
    f, s = f or facts(), settings or Sandbox()
    return s.enabled and (not f.pids_cgroup or (mechanism(f) != "none" and not f.root))


def cuts_network(settings: Sandbox, f: Facts | None = None) -> bool:
    """Whether kernels started with ``settings`` get no network (they then talk over Unix sockets)."""
    f = f or facts()
    return settings.enabled and settings.cut_network and mechanism(f) == "bwrap" and not f.netns


def isolates_files(settings: Sandbox | None = None, f: Facts | None = None) -> bool:
    """Whether a submission is graded with the grader's files hidden and only its folder writable."""
    return (settings or Sandbox()).enabled and mechanism(f or facts()) == "bwrap"


def describe(settings: Sandbox | None = None, f: Facts | None = None) -> str:
    """One line for the grading log: what isolates a submission here (from the same facts as the
    decisions above)."""
    s, f = settings or Sandbox(), f or facts()
    if not s.enabled:
        return "Sandbox: NOT SANDBOXED: c.Sandbox.enabled is False in the course's nbgrader_config.py"
    m = mechanism(f)
    if processes_bounded(f, s):
        procs = "processes: a pids cgroup per kernel" if not f.pids_cgroup else "processes: --nproc"
    else:
        procs = f"process count NOT limited ({'root' if f.root else 'no prlimit'}; {f.pids_cgroup})"
    if m == "bwrap":
        why = "c.Sandbox.cut_network is False" if not s.cut_network else f.netns
        net = ("no network (own network namespace, Unix sockets to the grader)" if not why else
               f"network NOT cut ({why}): a submission can connect out")
        return (f"Sandbox: bubblewrap + prlimit (own folder writable, grader's files hidden, memory/file limits; "
                f"{procs}; {net})")
    if m == "prlimit":
        return (f"Sandbox: NOT SANDBOXED for files: {f.bwrap}; only prlimit limits (memory, file size); {procs}; "
                "network NOT cut")
    return f"Sandbox: NOT SANDBOXED: {f.bwrap}, and no prlimit: submissions run with the grader's rights; {procs}"


def status_line(settings: Sandbox | None = None, f: Facts | None = None) -> str:
    """The first line of a class report and of the feedback index: :func:`describe`, led by
    ``GRADED UNSANDBOXED`` where the grader's files were not hidden from the submissions."""
    line = describe(settings, f)
    return line if isolates_files(settings, f) else f"GRADED UNSANDBOXED (grades may not be trustworthy). {line}"


class SandboxUnavailable(RuntimeError):
    """Grading refused: no file-system sandbox here and the instructor did not allow grading without one."""


def refusal(settings: Sandbox | None = None, f: Facts | None = None) -> str:
    """Why grading must not start here ("" when it may): the file-system sandbox is unavailable and
    neither ``c.Sandbox.allow_unsandboxed`` nor ``c.Sandbox.enabled = False`` says to go on."""
    s, f = settings or Sandbox(), f or facts()
    if not s.enabled or s.allow_unsandboxed or isolates_files(s, f):
        return ""
    return (f"refusing to grade without the file-system sandbox: {f.bwrap}. Install bubblewrap (Debian/Ubuntu: "
            "apt-get install bubblewrap) so that a submission cannot read solutions/ or the gradebook, or grade "
            "anyway with --allow-unsandboxed (c.Sandbox.allow_unsandboxed = True): the class report and the "
            "feedback index then say that grading ran unsandboxed")


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


#: cgroup v1's pids hierarchy: a cgroup of its own per kernel, with pids.max, bounds its processes
#: (and threads) for root too, which prlimit --nproc does not.
PIDS_CGROUP = Path("/sys/fs/cgroup/pids")


def _probe_pids_cgroup() -> str:
    """Why a kernel cannot get a pids cgroup of its own here ("" when it can)."""
    if not (PIDS_CGROUP / "cgroup.procs").is_file():
        return f"no cgroup v1 pids hierarchy at {PIDS_CGROUP}"
    try:
        os.rmdir(tempfile.mkdtemp(prefix="bertlab-probe-", dir=PIDS_CGROUP))
    except OSError as e:
        return f"cannot make a cgroup in {PIDS_CGROUP}: {e.strerror}"
    return ""


def wrap(cmd: list[str], cwd: str | os.PathLike | None, config=None, settings: Sandbox | None = None,
         sockets: str | os.PathLike | None = None) -> list[str]:
    """The kernel command ``cmd`` run in the sandbox, with ``cwd`` (its folder) writable.
    ``sockets``: the folder of the kernel's Unix sockets; given, the kernel gets no network."""
    s = settings or Sandbox(config=config)
    m = mechanism() if s.enabled else "none"
    if m == "none":
        return list(cmd)
    limits = ["prlimit"] + [f"{flag}={v}" for flag, v in
                            zip(LIMITS.values(), s.limits(Path(cwd).name if cwd else None).values())] + ["--"]
    if m == "prlimit":
        return limits + list(cmd)
    # in its own PID namespace the kernel's parent is pid 1, which ipykernel takes for "the grader
    # has exited" (it polls for that when JPY_PARENT_PID is set): --die-with-parent does that job
    out = ["bwrap", "--die-with-parent", "--unshare-pid", "--unsetenv", "JPY_PARENT_PID"]
    out += ["--unshare-net"] if sockets else []
    out += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
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
    if sockets:  # the kernel's end of its Unix sockets to nbgrader (under the private /tmp)
        out += ["--bind", str(sockets), str(sockets)]
    if cwd:
        out += ["--bind", str(cwd), str(cwd), "--chdir", str(cwd)]
    return out + ["--"] + limits + list(cmd)


class SandboxedKernelManager(AsyncKernelManager):
    """jupyter_client's kernel manager, starting the kernel through :func:`wrap`; where the sandbox
    cuts the network, over Unix sockets in a folder of the kernel's own (``ipc`` transport)."""

    _sockets = None
    _cgroup = None

    async def _async_pre_start_kernel(self, **kw):
        settings = Sandbox(config=self.config)
        if cuts_network(settings) and self._sockets is None:
            # before the connection file is written: it names the sockets. A short path: a Unix
            # socket's path is at most 107 bytes.
            self._sockets = tempfile.mkdtemp(prefix="bertlab-kernel-", dir="/tmp")
            self.transport = "ipc"
            self.ip = os.path.join(self._sockets, "k")
        cmd, kw = await super()._async_pre_start_kernel(**kw)
        cmd = wrap(cmd, kw.get("cwd"), self.config, settings, sockets=self._sockets)
        if cmd[0] == "bwrap":
            # A SIGINT to the kernel's process group reaches bwrap too, which dies of it (and takes
            # the kernel along): interrupt by message on the control channel instead (ipykernel
            # then sends SIGINT to itself), so the cell timeout interrupts only the cell.
            self.kernel_spec.interrupt_mode = "message"
        if settings.enabled and not pids_cgroup():
            if self._cgroup is None:
                self._cgroup = tempfile.mkdtemp(prefix="bertlab-kernel-", dir=PIDS_CGROUP)
                limit = settings.limits(Path(kw["cwd"]).name if kw.get("cwd") else None)["processes"]
                Path(self._cgroup, "pids.max").write_text(str(limit))
            # the shell joins the cgroup, then becomes the sandbox: every process after it is counted
            cmd = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', self._cgroup, *cmd]
        return cmd, kw

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if self._sockets and not restart:
            shutil.rmtree(self._sockets, ignore_errors=True)
            self._sockets = None
        if self._cgroup and not restart:
            for _ in range(50):  # its processes may take a moment to go
                try:
                    os.rmdir(self._cgroup)
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            self._cgroup = None
