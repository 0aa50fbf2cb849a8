"""fit and evaluation under ``accelerate launch`` with two processes on the CPU (gloo), against one process.

tests/multiprocess_fit.py fine-tunes a tiny BERT (dropout off) with a global batch of 8 and
evaluates it on 7 reports in batches of 4. Two processes each compute half of every batch;
DDP averages their gradients, which for equal halves is the gradient of the whole batch, so
the two runs take the same steps. What may differ is the order of float additions (the
all-reduce sums two half-batch means): 1e-5 on the losses, measured at 2.4e-7 at most.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("multiprocess_fit.py")
ROOT = SCRIPT.parent.parent
TOLERANCE = 1e-5


def _launch(out: Path, processes: int) -> subprocess.Popen:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if processes == 1:
        cmd = [sys.executable, str(SCRIPT), str(out)]
    else:  # --multi_gpu launches torch.distributed.run; ACCELERATE_USE_CPU makes it a gloo group of CPU processes
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT), str(out)]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multiprocess")
    procs = {n: _launch(folder / f"{n}.json", n) for n in (1, 2)}
    for n, proc in procs.items():
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{n} process(es) failed:\n{output[-3000:]}"
    return {n: json.loads((folder / f"{n}.json").read_text()) for n in procs}


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one(runs):
    one, two = runs[1], runs[2]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert len(one["steps"]) == len(two["steps"]) == 16  # 64 reports, batches of 8, 2 epochs: the batch is global
    assert max(abs(a - b) for a, b in zip(one["steps"], two["steps"])) < TOLERANCE
    assert one["history"][-1]["train_loss"] < one["history"][0]["train_loss"]  # the weights moved: a curve to compare
    for a, b in zip(one["history"], two["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1"):
            assert abs(a[key] - b[key]) < TOLERANCE, (key, a[key], b[key])


@pytest.mark.slow
def test_evaluation_over_an_uneven_split_counts_each_report_once(runs):
    for n, run in runs.items():
        ev = run["evaluation"]
        assert ev["reports"] == 7 and ev["index"] == list(range(7)), f"{n} process(es): {ev}"
        # each process's own evaluation over all 7 reports, on the same weights
        assert abs(ev["loss"] - run["one_process_evaluation"]["loss"]) < 1e-6, f"{n} process(es): {ev}"
