"""Load test of ``bertlab serve`` with a real load generator (locust, headless) on loopback.

    .venv/bin/python benchmarks/serve.py [--model PATH | --stand-in] [--users 1,8,32,64] [--seconds 15]
                                         [--modes batching,no-batching] [--plot serve.png]

For each mode (micro-batching on, and one request at a time) the service is started as a user
starts it (``bertlab serve``, its own process, ``--cache-size 0`` so that every request runs the
model), then for each number of concurrent users locust runs for ``--seconds`` in its own process:
each user sends one test report of fab A (``{"text": ...}``, a different one each time) and sends the
next as soon as the answer arrives (a closed loop, ``--wait-ms`` between requests). Latency is
measured by locust per request (send to last byte); throughput is the answered requests per second
of the run; an error is any request that failed or did not answer 200. On a shared machine the
latencies measure the machine's load too; the server's CPU time per request ("cpu ms", /proc) does
much less, and 1000 / cpu ms is the requests/s one idle core would serve.

The model: ``--model`` (default: the course's served model, ``bertlab export``). ``--stand-in``
builds a model of the served model's shape instead (2 of the checkpoint's 6 layers, a random 8-way
head, ONNX Runtime INT8, max_length 128) in seconds: its latency is the served model's, its answers
are not; use it when the course's model is not built.

Prints the table, then one JSON line: every point, the machine's load average before and after, and
whether a point meets the target (p99 <= 50 ms at >= 100 requests/s with no error, on 2 cores).
``--plot PATH`` writes p50 and p99 latency against throughput (PNG).
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET = {"p99_ms": 50.0, "rps": 100.0}

LOCUSTFILE = '''
import json, os, time
from locust import FastHttpUser, constant, events, task

TEXTS = json.load(open(os.environ["SERVE_BENCH_TEXTS"]))
WAIT = float(os.environ.get("SERVE_BENCH_WAIT", "0"))
RECORDS = []  # (end time, latency ms, ok)


@events.request.add_listener
def _record(response_time, exception, response, **kw):
    ok = exception is None and response is not None and response.status_code == 200
    RECORDS.append((time.time(), float(response_time), ok))


@events.quitting.add_listener
def _save(environment, **kw):
    json.dump(RECORDS, open(os.environ["SERVE_BENCH_OUT"], "w"))


class Client(FastHttpUser):
    wait_time = constant(WAIT)

    def on_start(self):
        self.i = hash(self) % len(TEXTS)

    @task
    def predict(self):
        self.i = (self.i + 1) % len(TEXTS)
        self.client.post("/predict", json={"text": TEXTS[self.i]})
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, extra: list[str], timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """``bertlab serve`` in its own process; returns it and its URL once /ready answers 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "bertlab.cli", "serve", "--model", str(model), "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bertlab serve exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"bertlab serve was not ready after {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def batch_totals(url: str) -> np.ndarray:
    """(reports, model calls) so far, from the service's /metrics."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("bertlab_batch_size_"))
    return np.array([float(values["bertlab_batch_size_sum"]), float(values["bertlab_batch_size_count"])])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def run_point(url: str, users: int, seconds: float, texts_file: Path, wait_ms: float, folder: Path, pid: int) -> dict:
    """One locust run; latency percentiles (ms), requests/s, error rate, and the server's CPU time per request."""
    out = folder / f"records-{users}.json"
    env = {**os.environ, "SERVE_BENCH_TEXTS": str(texts_file), "SERVE_BENCH_OUT": str(out),
           "SERVE_BENCH_WAIT": str(wait_ms / 1000)}
    cmd = [sys.executable, "-m", "locust", "-f", str(folder / "locustfile.py"), "--headless", "--users", str(users),
           "--spawn-rate", str(users), "--run-time", f"{seconds:g}s", "--host", url, "--only-summary",
           "--loglevel", "ERROR", "--stop-timeout", "10", "--exit-code-on-error", "0"]
    before, cpu_before = batch_totals(url), cpu_seconds(pid)
    subprocess.run(cmd, env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 120)
    records = json.loads(out.read_text()) if out.is_file() else []
    if not records:
        raise RuntimeError(f"locust recorded no request at {users} users")
    ends = np.array([r[0] for r in records])
    lat = np.array([r[1] for r in records])
    ok = np.array([r[2] for r in records])
    span = ends.max() - (ends.min() - lat[ends.argmin()] / 1000)  # from the first request's start to the last answer
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    reports, calls = batch_totals(url) - before  # reports per model call during this run
    cpu = cpu_seconds(pid) - cpu_before
    return {"users": users, "requests": int(len(records)), "p50_ms": float(p50), "p95_ms": float(p95),
            "p99_ms": float(p99), "rps": float(ok.sum() / span), "error_rate": float(1 - ok.mean()),
            "mean_batch": float(reports / calls) if calls else float("nan"), "server_cpu_ms": 1000 * cpu / len(records)}


def stand_in_model(path: Path) -> Path:
    """A model of the served model's shape (2 of the checkpoint's layers, 8 types, INT8): its speed, not its answers."""
    import torch

    from bertlab import deploy, distill, pretrained, train
    from bertlab.data import FAILURE_TYPES

    torch.manual_seed(0)
    teacher = train.SequenceClassifier(pretrained.load_encoder(), len(FAILURE_TYPES)).eval()
    student = distill.student_from_teacher(teacher, [0, 3])
    with tempfile.TemporaryDirectory() as d:
        fp32 = deploy.export_onnx(student, Path(d) / "fp32.onnx",
                                  metadata=deploy.model_metadata(list(FAILURE_TYPES), 128))
        return deploy.quantize_onnx(fp32, path)


def load_reports(n: int = 1000) -> list[str]:
    from bertlab.data import make_splits

    return [r.text for r in make_splits("A").test][:n]


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for mode, marker in (("batching", "o"), ("no-batching", "s")):
        rows = [p for p in points if p["mode"] == mode]
        if not rows:
            continue
        for key, style in (("p50_ms", "--"), ("p99_ms", "-")):
            line, = ax.plot([p["rps"] for p in rows], [p[key] for p in rows], style, marker=marker,
                            label=f"{mode}, {key[:3]}")
            if key == "p99_ms":
                for p in rows:
                    ax.annotate(f"{p['users']}u", (p["rps"], p[key]), textcoords="offset points", xytext=(4, 4),
                                fontsize=8, color=line.get_color())
    ax.axhline(TARGET["p99_ms"], color="grey", lw=0.8)
    ax.axvline(TARGET["rps"], color="grey", lw=0.8)
    ax.set(xlabel="answered requests / s", ylabel="latency (ms)", yscale="log",
           title="bertlab serve on loopback (target: p99 <= 50 ms at >= 100 req/s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="ONNX model (default: the course's served model)")
    parser.add_argument("--stand-in", action="store_true", help="build and serve a model of the served model's shape")
    parser.add_argument("--users", default="1,8,32,64", help="concurrent users, comma-separated (default 1,8,32,64)")
    parser.add_argument("--seconds", type=float, default=15.0, help="locust run time per point (default 15)")
    parser.add_argument("--modes", default="batching,no-batching", help="batching, no-batching or both (default)")
    parser.add_argument("--wait-ms", type=float, default=0.0, help="each user's pause between requests (default 0)")
    parser.add_argument("--serve-args", default="", help="more flags for bertlab serve, e.g. '--batch-window-ms 2'")
    parser.add_argument("--plot", type=Path, default=None, help="write latency against throughput here (PNG)")
    ns = parser.parse_args(argv)
    users = [int(u) for u in ns.users.split(",")]
    modes = ns.modes.split(",")
    if not users or min(users) < 1 or not set(modes) <= {"batching", "no-batching"} or ns.seconds <= 0:
        parser.error("--users must be positive ints, --modes batching and/or no-batching, --seconds > 0")
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as d:
        folder = Path(d)
        if ns.stand_in:
            model = stand_in_model(folder / "stand-in.onnx")
        else:
            from bertlab.cli import default_model_path

            model = ns.model or default_model_path()
            if not model.is_file():
                parser.error(f"no model at {model}: build it with 'bertlab export', pass --model, or use --stand-in")
        texts_file = folder / "texts.json"
        texts_file.write_text(json.dumps(load_reports()))
        (folder / "locustfile.py").write_text(LOCUSTFILE)
        load_before = os.getloadavg()
        points = []
        for mode in modes:
            extra = ["--cache-size", "0", *ns.serve_args.split()] + (["--no-batching"] if mode == "no-batching" else [])
            proc, url = start_server(model, extra)
            try:
                for u in users:
                    points.append({"mode": mode, **run_point(url, u, ns.seconds, texts_file, ns.wait_ms, folder, proc.pid)})
                    p = points[-1]
                    print(f"  {mode:<12} {u:>3} users: p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms, "
                          f"{p['rps']:.0f} req/s", file=sys.stderr, flush=True)
            finally:
                stop_server(proc)
        load_after = os.getloadavg()
    print(f"{'mode':<12} {'users':>5} {'requests':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'req/s':>7} "
          f"{'errors':>7} {'batch':>6} {'cpu ms':>6}")
    for p in points:
        print(f"{p['mode']:<12} {p['users']:>5} {p['requests']:>8} {p['p50_ms']:>7.1f} {p['p95_ms']:>7.1f} "
              f"{p['p99_ms']:>7.1f} {p['rps']:>7.1f} {p['error_rate']:>7.2%} {p['mean_batch']:>6.1f} "
              f"{p['server_cpu_ms']:>6.2f}")
    meets = [p for p in points if p["p99_ms"] <= TARGET["p99_ms"] and p["rps"] >= TARGET["rps"] and p["error_rate"] == 0]
    print(f"target (p99 <= {TARGET['p99_ms']:g} ms at >= {TARGET['rps']:g} req/s, no errors): "
          + (", ".join(f"met by {p['mode']} at {p['users']} users" for p in meets) or "not met"))
    if ns.plot:
        plot(points, ns.plot)
        print(f"plot: {ns.plot}")
    print(json.dumps({"model": "stand-in" if ns.stand_in else str(model), "seconds": ns.seconds, "wait_ms": ns.wait_ms,
                      "cpus": os.cpu_count(), "load_before": load_before, "load_after": load_after, "points": points,
                      "target": TARGET, "target_met": bool(meets)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
