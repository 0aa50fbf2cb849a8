"""`bertlab serve`, run for real: uvicorn in a subprocess on a free loopback port, a tiny exported model."""
import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bertlab import deploy, monitoring, serve, train
from bertlab.calibration import Calibration, calibration_path

LABELS = ["alpha", "beta", "gamma"]
TEMPERATURE = 0.25
WINDOW = 40  # the drift window, and the size of the reference
ROOT = Path(__file__).resolve().parents[1]
# Reports of another kind: the drift gauge must move when these are served.
OUT_OF_DISTRIBUTION = ["晶圆测试失败 " * (i % 5 + 1) for i in range(WINDOW)]


def reports(n, seed):
    from bertlab.data import generate_reports

    return [r.text for r in generate_reports(n, "A", seed=seed)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny classifier exported as `bertlab export` does, and its calibration beside it."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=64, initializer_range=0.5)  # large weights: answers that vary by report
    path = tmp_path_factory.mktemp("serve") / "tiny.onnx"
    deploy.export_onnx(train.SequenceClassifier(BertModel(cfg), len(LABELS)).eval(), path,
                       metadata=deploy.model_metadata(LABELS, 24))
    hot = Calibration(temperature=TEMPERATURE)
    predictor = deploy.onnx_predictor(path, threads=1, to_probabilities=hot.probabilities)
    reference = [max(p.probabilities.values()) for p in predictor.predict(reports(WINDOW, seed=1))]
    Calibration(temperature=TEMPERATURE, threshold=float(np.median(reference)), reference=reference).save(
        calibration_path(path))
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port, method, path, body=None, headers=None, chunked=False):
    """(status, headers, JSON or text) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        if isinstance(body, (dict, list)):
            body, headers = json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
        try:
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (413) and closed before reading the whole body; its answer is there to read
        r = conn.getresponse()
        data = r.read().decode()
        is_json = r.getheader("content-type", "").startswith("application/json")
        return r.status, dict(r.getheaders()), json.loads(data) if is_json else data
    finally:
        conn.close()


class Server:
    """`bertlab serve` in a subprocess; waits for /ready; always stopped by the fixture that starts it."""

    def __init__(self, model, *flags):
        self.port = free_port()
        cmd = [sys.executable, "-m", "bertlab.cli", "serve", "--model", str(model), "--port", str(self.port),
               "--threads", "1", *flags]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"bertlab serve exited: {self.proc.communicate()[1].decode()[-3000:]}"
            try:
                if call(self.port, "GET", "/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail("bertlab serve was not ready after 240 s")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def metrics(self):
        status, _, text = call(self.port, "GET", "/metrics")
        assert status == 200
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out


@pytest.fixture(scope="module")
def server(model):
    srv = Server(model, "--batch-window-ms", "20", "--max-batch", "64", "--max-texts", "48", "--max-body-bytes", "20000",
                 "--drift-window", str(WINDOW), "--drift-alpha", "0.01")
    yield srv
    srv.stop()


def predict(server, body):
    status, _, answer = call(server.port, "POST", "/predict", body)
    assert status == 200, answer
    return answer


def test_health_ready_and_metrics(server, model):
    assert call(server.port, "GET", "/health")[::2] == (200, {"status": "alive"})
    status, _, ready = call(server.port, "GET", "/ready")
    assert status == 200 and ready["status"] == "ready"
    assert ready["calibration"] == str(calibration_path(model)), "the calibration beside the model is found"
    assert ready["temperature"] == TEMPERATURE and ready["max_length"] == 24 and ready["batching"] is True
    assert ready["model_version"] == serve.model_version(model, Calibration.load(calibration_path(model)))
    status, headers, _ = call(server.port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=")
    m = server.metrics()
    assert m["bertlab_ready"] == 1 and m[f'bertlab_model_info{{version="{ready["model_version"]}"}}'] == 1
    assert m['bertlab_http_requests_total{path="/health",status="200"}'] >= 1


def test_predict_answers_each_report_in_order_with_the_calibrated_probability(server, model):
    from bertlab import pretrained

    texts = ["leakage at wafer sort", "latch-up in burn-in", "open via on die 7"] + reports(3, seed=2) + ["wafer " * 40]
    answer = predict(server, {"texts": texts})
    preds = answer["predictions"]
    assert answer["model_version"] == serve.model_version(model, Calibration.load(calibration_path(model)))
    assert len(preds) == len(texts) and all(set(p) == {"failure_type", "probability", "automated", "truncated", "tokens"}
                                            for p in preds)
    tokenizer = pretrained.load_tokenizer()
    lengths = [len(x) for x in tokenizer(texts)["input_ids"]]
    assert [p["tokens"] for p in preds] == lengths
    assert [p["truncated"] for p in preds] == [n > 24 for n in lengths] and preds[0]["truncated"] is False
    assert preds[-1]["truncated"] is True
    ids = tokenizer(texts, truncation=True, max_length=24)["input_ids"]
    logits = deploy.batch_logits(deploy.OrtRunner(deploy.ort_session(model, threads=1)), ids)
    want = Calibration(temperature=TEMPERATURE).probabilities(logits)
    assert np.allclose([p["probability"] for p in preds], want.max(-1), atol=1e-5), "T is applied as Calibration says"
    assert not np.allclose(want.max(-1), Calibration().probabilities(logits).max(-1), atol=1e-3), "T matters here"
    assert [p["failure_type"] for p in preds] == [LABELS[i] for i in want.argmax(-1)]
    one = predict(server, {"text": texts[0]})["predictions"]
    assert len(one) == 1 and one[0] == preds[0]


def test_reports_below_the_threshold_are_abstained(server, model):
    threshold = Calibration.load(calibration_path(model)).threshold
    before = server.metrics()["bertlab_abstentions_total"]
    preds = predict(server, {"texts": reports(30, seed=3)})["predictions"]
    automated = [p["automated"] for p in preds]
    assert automated == [p["probability"] >= threshold for p in preds]
    assert any(automated) and not all(automated), "a threshold at the reference's median splits the reports"
    assert server.metrics()["bertlab_abstentions_total"] - before == automated.count(False)


BAD = [  # (what, body, headers, status, words in the message)
    ("empty text", {"text": ""}, None, 422, "empty"),
    ("whitespace text", {"text": " \n\t "}, None, 422, "empty"),
    ("non-string text", {"text": 42}, None, 422, "must be a string"),
    ("non-string in texts", {"texts": ["ok", None]}, None, 422, "texts[1] must be a string"),
    ("texts not a list", {"texts": "one report"}, None, 422, "list of strings"),
    ("empty texts", {"texts": []}, None, 422, "at least one"),
    ("over the list limit", {"texts": ["a report"] * 49}, None, 422, "at most 48"),
    ("unknown field", {"text": "a report", "priority": 1}, None, 422, "unknown field"),
    ("both fields", {"text": "a", "texts": ["b"]}, None, 422, "exactly one"),
    ("neither field", {}, None, 422, "exactly one"),
    ("not an object", ["a report"], None, 422, "JSON object"),
    ("invalid JSON", b'{"text": "unterminated', {"Content-Type": "application/json"}, 400, "not valid JSON"),
    ("not UTF-8", b'{"text": "\xff\xfe"}', {"Content-Type": "application/json"}, 400, "UTF-8"),
    ("nested too deep", b"[" * 9000 + b"]" * 9000, {"Content-Type": "application/json"}, 400, "nested too deeply"),
    ("wrong content type", b'{"text": "a report"}', {"Content-Type": "text/plain"}, 415, "application/json"),
    ("no content type", b'{"text": "a report"}', {}, 415, "application/json"),
    ("body over the limit", {"text": "x" * 20_001}, None, 413, "at most 20000 bytes"),
]


@pytest.mark.parametrize("what,body,headers,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_4xx_that_says_what_to_fix_and_the_service_goes_on(server, what, body, headers, status, words):
    got, _, answer = call(server.port, "POST", "/predict", body, headers)
    assert (got, words in answer["detail"]) == (status, True), answer
    assert predict(server, {"text": "leakage at wafer sort"})["predictions"], "a good request right after succeeds"


def test_a_chunked_body_over_the_limit_is_refused_while_reading(server):
    chunks = (b'{"text": "' if i == 0 else b"x" * 1000 for i in range(30))
    got, _, answer = call(server.port, "POST", "/predict", chunks, {"Content-Type": "application/json"}, chunked=True)
    assert got == 413 and "over 20000 bytes" in answer["detail"]
    assert call(server.port, "GET", "/predict")[0] == 405 and call(server.port, "GET", "/nowhere")[0] == 404
    m = server.metrics()
    assert m['bertlab_http_requests_total{path="/predict",status="413"}'] >= 1
    assert m['bertlab_http_requests_total{path="other",status="404"}'] >= 1


def test_requests_arriving_together_are_batched(server):
    texts = reports(16, seed=4)
    before = server.metrics()
    start = threading.Barrier(len(texts))
    results = [None] * len(texts)

    def one(i):
        start.wait()
        results[i] = predict(server, {"text": texts[i]})["predictions"][0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    after = server.metrics()
    assert all(results), "every concurrent request was answered"
    reports_run = after["bertlab_batch_size_sum"] - before["bertlab_batch_size_sum"]
    calls = after["bertlab_batch_size_count"] - before["bertlab_batch_size_count"]
    assert reports_run == len(texts) and calls < len(texts), f"{len(texts)} requests ran in {calls:g} model calls"
    assert after['bertlab_batch_size_bucket{le="1.0"}'] - before['bertlab_batch_size_bucket{le="1.0"}'] < calls


def test_the_drift_gauge_moves_on_out_of_distribution_reports(server):
    predict(server, {"texts": reports(WINDOW, seed=1)})  # the reference's own reports fill the window
    m = server.metrics()
    assert m["bertlab_drift_window_reports"] == WINDOW
    assert m["bertlab_drift_ks_statistic"] < 0.1 and m["bertlab_drift_alarm"] == 0
    predict(server, {"texts": OUT_OF_DISTRIBUTION})
    m = server.metrics()
    assert m["bertlab_drift_ks_statistic"] > 0.5 and m["bertlab_drift_p_value"] < 0.01 and m["bertlab_drift_alarm"] == 1


# ---------------------------------------------------------------- the worker and the app, in this process


def run_worker(model, batching, groups):
    """Queue ``groups`` of reports before the worker takes any; returns the model calls' sizes and the answers."""
    config = serve.ServeConfig(model=model, calibration=calibration_path(model), batching=batching,
                               batch_window_ms=200, threads=1)
    cal, _ = config.load_calibration()
    metrics = monitoring.Metrics([], 10, 0.01)
    worker = serve.ModelWorker(config, cal, metrics)

    async def go():
        futures = [worker.submit(g) for g in groups]  # all queued before the worker starts
        worker.start()
        return await asyncio.gather(*futures)

    answers = asyncio.run(go())
    worker.stop()
    return metrics.batch.collect()[0].samples, answers


def _count(samples):
    return next(s.value for s in samples if s.name.endswith("_count"))


def test_the_worker_batches_what_is_queued_and_not_when_told(model):
    groups = [["leakage at sort"], ["latch-up in burn-in", "open via"], ["gate oxide short"]]
    batched, answers = run_worker(model, True, groups)
    single, answers_single = run_worker(model, False, groups)
    assert _count(batched) == 1 and _count(single) == len(groups)
    assert [len(a) for a in answers] == [1, 2, 1] and answers == answers_single, "each request gets its own reports back"


def test_ready_is_503_until_the_model_is_loaded(model):
    from fastapi.routing import APIRoute

    app = serve.create_app(serve.ServeConfig(model=model, threads=1))
    ready = next(r.endpoint for r in app.routes if isinstance(r, APIRoute) and r.path == "/ready")
    before = asyncio.run(ready())
    assert before.status_code == 503 and b"loading" in before.body
    worker = app.state.worker
    worker.start()
    assert worker.ready.wait(120)
    assert asyncio.run(ready())["status"] == "ready"
    worker.stop()


def test_config_rejects_bad_settings_by_name(model):
    for name, value in (("max_batch", 0), ("batch_window_ms", -1), ("drift_alpha", 1.5), ("max_texts", 2.5)):
        with pytest.raises(ValueError, match=name):
            serve.ServeConfig(model=model, **{name: value})


def test_serve_without_a_model_says_how_to_build_it(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bertlab.cli", "serve", "--model", str(tmp_path / "none.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no model file" in proc.stderr


def test_sigterm_answers_the_request_in_flight_then_stops(model, tmp_path):
    other = Calibration(temperature=2.0).save(tmp_path / "other.json")
    srv = Server(model, "--batch-window-ms", "4000", "--calibration", str(other))
    try:
        assert call(srv.port, "GET", "/ready")[2]["temperature"] == 2.0, "--calibration overrides the file beside"
        answer = {}
        t = threading.Thread(target=lambda: answer.update(r=call(srv.port, "POST", "/predict", {"text": "open via"})))
        t.start()
        deadline = time.monotonic() + 30
        while srv.metrics()["bertlab_predict_in_flight"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.metrics()["bertlab_predict_in_flight"] == 1, "the request waits in the 4 s batch window"
        srv.proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert answer["r"][0] == 200 and answer["r"][2]["predictions"][0]["failure_type"] in LABELS
        assert srv.proc.wait(30) in (0, -signal.SIGTERM), "uvicorn ends by re-raising the SIGTERM it handled"
        assert "Traceback" not in srv.proc.stderr.read().decode()
        with pytest.raises(OSError):
            call(srv.port, "GET", "/health")
    finally:
        srv.stop()


@pytest.mark.slow
def test_the_load_test_runs_and_reports(model, tmp_path):
    """benchmarks/serve.py for a few seconds at 2 users, both modes (so that it cannot rot)."""
    plot = tmp_path / "serve.png"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--model", str(model), "--users", "2",
                           "--seconds", "3", "--plot", str(plot)], capture_output=True, text=True, timeout=500, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert [(p["mode"], p["users"]) for p in result["points"]] == [("batching", 2), ("no-batching", 2)]
    for p in result["points"]:
        assert p["requests"] > 0 and p["error_rate"] == 0 and p["rps"] > 0, p
        assert 0 < p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"], p
    assert result["points"][1]["mean_batch"] == 1.0, "--no-batching runs one request at a time"
    assert "p99 ms" in proc.stdout and plot.stat().st_size > 10_000
