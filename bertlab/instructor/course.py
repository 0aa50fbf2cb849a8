"""Course tooling: release the student notebooks and run the course end to end.

``python -m bertlab.instructor.course release`` regenerates notebooks/ from solutions/ with
``nbgrader generate_assignment`` (outputs cleared, solutions stubbed).
``python -m bertlab.instructor.course run [solutions|notebooks|PATH ...]`` executes notebooks
top to bottom in fresh kernels and prints the wall time of each (the learner's wait), then the
ten slowest cells of the course (where that time goes).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # bertlab/instructor/course.py -> the course folder
ASSIGNMENT = re.compile(r"^\d\d-[a-z0-9-]+$")


def assignments(root: Path = ROOT) -> list[str]:
    """Names of the course's assignments (``NN-name`` folders in solutions/), in order."""
    src = Path(root) / "solutions"
    if not src.is_dir():
        raise FileNotFoundError(f"root must hold a solutions/ folder; {src} does not exist")
    return sorted(p.name for p in src.iterdir() if p.is_dir() and ASSIGNMENT.match(p.name))


def notebook_paths(folder: str, root: Path = ROOT) -> list[Path]:
    """``folder/NN-name/NN-name.ipynb`` for every assignment, e.g. folder='solutions'."""
    return [Path(root) / folder / a / f"{a}.ipynb" for a in assignments(root)]


def release(root: Path = ROOT, release_dir: Path | None = None, names: list[str] | None = None) -> list[Path]:
    """Generate the student version of every assignment (or of ``names``) with nbgrader.

    Writes into ``root/notebooks`` unless ``release_dir`` is given (used by the drift
    test to regenerate into a temporary folder). No gradebook is touched (--no-db).
    """
    root = Path(root).resolve()
    out = Path(release_dir).resolve() if release_dir else root / "notebooks"
    known = assignments(root)
    unknown = sorted(set(names or []) - set(known))
    if unknown:
        raise ValueError(f"names: no such assignment {unknown}; the course has {known}")
    written = []
    for name in names or known:
        cmd = [
            sys.executable, "-m", "nbgrader", "generate_assignment", name,
            "--force", "--no-db", "--log-level=WARN",
            f"--CourseDirectory.root={root}",
            f"--CourseDirectory.release_directory={out}",
        ]
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nbgrader generate_assignment {name} failed:\n{proc.stdout}\n{proc.stderr}")
        written.append(out / name / f"{name}.ipynb")
    return written


def load_config(root: Path = ROOT):
    """The course's nbgrader configuration (nbgrader_config.py) as a traitlets Config."""
    from traitlets.config.loader import PyFileConfigLoader

    return PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()


def validate(path: Path, invert: bool = False, root: Path = ROOT) -> dict:
    """Run nbgrader's validator on one notebook with the course's configuration.

    Returns nbgrader's result dict: empty when the notebook validates; otherwise
    'failed' (tests that fail), 'passed' (with ``invert``: tests that pass on a stub),
    'changed' or 'type_changed' (read-only cells that were edited).
    ``nbgrader validate`` on the command line exits 0 even when validation fails, which is
    why the tests call this instead.
    """
    from nbgrader.validator import Validator

    validator = Validator(config=load_config(root), invert=invert)
    return validator.validate(str(Path(path).resolve()))


@dataclass
class CellTime:
    index: int  # position in the notebook, markdown cells counted
    cell_id: str
    seconds: float
    first_line: str  # of the cell's source


def cell_seconds(nb) -> list[CellTime]:
    """How long each executed code cell of ``nb`` ran, from the timestamps nbclient records in
    ``metadata.execution`` (iopub.execute_input to shell.execute_reply)."""
    def when(stamp: str) -> datetime:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))  # Python 3.10 rejects "Z"

    out = []
    for i, cell in enumerate(nb.cells):
        t = cell.get("metadata", {}).get("execution", {})
        if cell.cell_type == "code" and "iopub.execute_input" in t and "shell.execute_reply" in t:
            seconds = (when(t["shell.execute_reply"]) - when(t["iopub.execute_input"])).total_seconds()
            lines = cell.source.strip().splitlines()
            out.append(CellTime(i, cell.get("id", ""), seconds, lines[0] if lines else ""))
    return out


@dataclass
class RunResult:
    notebook: str
    seconds: float
    ok: bool
    error: str = ""
    cells: list[CellTime] = field(default_factory=list)  # the code cells that ran


def run_notebook(path: Path, timeout: int = 900, save_to: Path | None = None,
                 env: dict[str, str] | None = None) -> RunResult:
    """Execute one notebook top to bottom in a fresh kernel, in its own folder.

    ``timeout`` is per cell (seconds). The executed copy goes to ``save_to`` if given.
    ``env`` adds environment variables for the kernel (e.g. NBGRADER_EXECUTION).
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    # record_timing (nbclient's default, stated because cell_seconds reads it): per-cell timestamps
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    error = ""
    try:
        client.execute()
    except CellExecutionError as err:
        error = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
    except Exception as err:  # timeouts, dead kernels: report, keep going with the others
        error = f"{type(err).__name__}: {err}"
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - start
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, save_to)
    return RunResult(path.name, seconds, not error, error, cell_seconds(nb))


def run_course(paths: list[Path], out_dir: Path = ROOT / ".course", timeout: int = 900) -> list[RunResult]:
    """Run the notebooks one after another and print a table of wall times, then the ten
    slowest cells of the course.

    Executed copies land in ``out_dir`` (git-ignored) so their outputs can be read, with
    timings.json (per notebook) and cell_timings.csv (per code cell). The last line printed
    is a one-line summary.
    """
    results = []
    print(f"{'notebook':<32} {'wall time':>10}  status", flush=True)
    for p in paths:
        r = run_notebook(p, timeout=timeout, save_to=Path(out_dir) / p.parent.name / p.name)
        results.append(r)
        status = "ok" if r.ok else f"FAILED: {r.error[:120]}"
        print(f"{r.notebook:<32} {_fmt(r.seconds):>10}  {status}", flush=True)
    total = sum(r.seconds for r in results)
    slowest = max(results, key=lambda r: r.seconds) if results else None
    print_slowest_cells(results)
    (Path(out_dir)).mkdir(parents=True, exist_ok=True)
    per_notebook = [{k: v for k, v in asdict(r).items() if k != "cells"} for r in results]  # cells: the CSV
    (Path(out_dir) / "timings.json").write_text(json.dumps(per_notebook, indent=1))
    write_cell_timings(results, Path(out_dir) / "cell_timings.csv")
    n_ok = sum(r.ok for r in results)
    print(f"course: {n_ok}/{len(results)} notebooks ran, total {_fmt(total)}"
          + (f", slowest {slowest.notebook} {_fmt(slowest.seconds)}" if slowest else ""), flush=True)
    return results


def slowest_cells(results: list[RunResult], n: int = 10) -> list[tuple[str, CellTime]]:
    """The ``n`` slowest code cells of all the notebooks run, as (notebook, cell), slowest first."""
    cells = [(r.notebook, c) for r in results for c in r.cells]
    return sorted(cells, key=lambda nc: nc[1].seconds, reverse=True)[:n]


def print_slowest_cells(results: list[RunResult]) -> None:
    """Where the course's time goes: its ten slowest cells, with each one's first line."""
    print("\nthe ten slowest cells of the course", flush=True)
    print(f"{'notebook':<32} {'cell':>4} {'seconds':>8}  first line", flush=True)
    for notebook, c in slowest_cells(results):
        line = c.first_line if len(c.first_line) <= 60 else c.first_line[:57] + "..."
        print(f"{notebook:<32} {c.index:>4} {c.seconds:>8.1f}  {line}", flush=True)


def write_cell_timings(results: list[RunResult], path: Path) -> None:
    """Every executed code cell's seconds, one CSV row per cell, in course order."""
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["notebook", "cell", "cell_id", "seconds", "first_line"])
        for r in results:
            for c in r.cells:
                out.writerow([r.notebook, c.index, c.cell_id, f"{c.seconds:.3f}", c.first_line])


def _fmt(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertlab.instructor.course", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rel = sub.add_parser("release", help="regenerate notebooks/ from solutions/ with nbgrader")
    rel.add_argument("names", nargs="*", help="assignments to release (default: all)")
    run = sub.add_parser("run", help="execute notebooks and print their wall times")
    run.add_argument("targets", nargs="*", default=["solutions"],
                     help="'solutions', 'notebooks' or notebook paths (default: solutions)")
    run.add_argument("--timeout", type=int, default=900, help="per-cell timeout in seconds")
    args = parser.parse_args(argv)
    if args.command == "release":
        for p in release(names=args.names or None):
            print(f"released {p.relative_to(ROOT)}")
        return 0
    paths: list[Path] = []
    for t in args.targets:
        paths += notebook_paths(t) if t in ("solutions", "notebooks") else [Path(t)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        parser.error(f"targets: no such notebook: {', '.join(missing)}")
    results = run_course(paths, timeout=args.timeout)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
