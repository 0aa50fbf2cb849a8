"""benchmarks/gpu_course.py, the one command for a lent GPU, run on the CPU with notebook 00."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_course_runs_a_notebook_and_prints_its_checks(tmp_path):
    notebook = ROOT / "solutions" / "00-welcome" / "00-welcome.ipynb"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_course.py"), str(notebook),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["notebooks"] == 1 and summary["failed"] == [] and summary["device"] == "cpu"
    report = json.loads((tmp_path / "gpu_course.json").read_text())["notebooks"][0]
    assert report["checks"] and all(line.startswith("as expected:") for line in report["checks"])
    assert report["cells"] and all(c["seconds"] >= 0 for c in report["cells"])
    assert "00-welcome.ipynb: " in proc.stdout and report["checks"][0] in proc.stdout
    assert (tmp_path / "00-welcome" / "00-welcome.ipynb").exists()
