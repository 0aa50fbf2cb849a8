"""The course on a lent GPU, in one command: each notebook top to bottom, its cell timings and its checks.

    .venv/bin/python benchmarks/gpu_course.py [NOTEBOOK ...] [--out .gpu-course] [--timeout 900]

Runs each solution notebook (default: all of them, in order) as a learner would, in a fresh
kernel from its own folder (``bertlab.instructor.course.run_notebook``, nbclient), and prints
per notebook: its wall time, its five slowest cells, and every "What you should see" check
it printed (``as expected: ...``) or failed. Executed copies and ``gpu_course.json`` go to
``--out``. The device is whatever ``bertlab.env.get_device()`` picks (set BERTLAB_DEVICE to
force one); run it from an empty ``BERTLAB_CACHE`` to time a first run. The last line printed
is JSON. Exits 1 when a notebook failed. docs/scaling-out.md, "Running the whole course".
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bertlab import env  # noqa: E402
from bertlab.instructor import course  # noqa: E402

CHECK_PREFIXES = ("as expected:", "not what this notebook expects", "grading mode, reduced run")


def printed_checks(nb) -> list[str]:
    """The lines the notebook's checks printed (bertlab.check.expect), and a failed check's message, in order."""
    lines = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text = {"stream": out.get("text", ""), "error": out.get("evalue", "")}.get(out.get("output_type"), "")
            lines += [line.strip() for line in text.splitlines() if line.strip().startswith(CHECK_PREFIXES)]
    return lines


def device_info() -> dict:
    import torch

    device = env.get_device()
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv=None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebook paths (default: every solution notebook)")
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu-course", help="executed copies and gpu_course.json")
    parser.add_argument("--timeout", type=int, default=900, help="per-cell timeout in seconds (default 900)")
    opts = parser.parse_args(argv)
    paths = opts.notebooks or course.notebook_paths("solutions")
    info = device_info()
    print(" ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    rows = []
    for path in paths:
        saved = opts.out / path.parent.name / path.name
        result = course.run_notebook(path, timeout=opts.timeout, save_to=saved)
        checks = printed_checks(nbformat.read(saved, as_version=4))
        slowest = sorted(result.cells, key=lambda c: c.seconds, reverse=True)[:5]
        print(f"\n{result.notebook}: {result.seconds:.1f} s, {'ok' if result.ok else 'FAILED: ' + result.error[:200]}",
              flush=True)
        for c in slowest:
            print(f"  cell {c.index:>3} {c.seconds:7.1f} s  {c.first_line[:70]}")
        for line in checks:
            print(f"  {line}")
        rows.append({"notebook": result.notebook, "seconds": round(result.seconds, 1), "ok": result.ok,
                     "error": result.error, "checks": checks,
                     "cells": [{"index": c.index, "seconds": round(c.seconds, 2), "first_line": c.first_line}
                               for c in result.cells]})
    summary = {**info, "notebooks": len(rows), "failed": [r["notebook"] for r in rows if not r["ok"]],
               "total_seconds": round(sum(r["seconds"] for r in rows), 1)}
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "gpu_course.json").write_text(json.dumps({"summary": summary, "notebooks": rows}, indent=1))
    print(json.dumps(summary), flush=True)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
