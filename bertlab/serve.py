"""``bertlab serve``: the exported model behind an HTTP service (notebook 13).

    bertlab serve [--model PATH] [--port 8000] [--calibration PATH] [--batch-window-ms 5] [--max-batch 32]

Endpoints:

- ``POST /predict`` with ``{"text": "..."}`` or ``{"texts": ["...", ...]}`` (JSON): one answer per
  report, in order: ``failure_type``, its calibrated ``probability``, ``automated`` (the probability
  reaches the calibration's threshold; false: the service abstains and an engineer reads it),
  ``truncated`` (longer than the model's window: only its start was read) and ``tokens``; beside them
  the ``model_version`` (a hash of the model file and its calibration).
- ``GET /health``: 200 while the process serves HTTP. ``GET /ready``: 200 once the model is loaded and
  warmed up, 503 before (and when it failed to load, with the reason).
- ``GET /metrics``: Prometheus text: requests by path and status, latency, reports per model call,
  abstentions, truncations, and drift: the two-sample Kolmogorov-Smirnov statistic between the
  calibration's ``reference`` and the last ``drift_window`` served top probabilities, its p-value, and
  ``bertlab_drift_alarm`` = 1 when the p-value is under ``drift_alpha``.

Micro-batching: one worker thread owns the ONNX Runtime session (through
:class:`bertlab.deploy.Predictor`, the one tokenize/pad/softmax path). It takes the first waiting
request, then whatever arrives within ``batch_window_ms`` (up to ``max_batch`` reports), and runs them
as one batch; the event loop only parses and answers. ``batching=False`` runs one request at a time.

Bad input gets a 4xx and a JSON ``{"detail": "..."}`` saying what to fix; the service keeps serving.
"""

import asyncio
import hashlib
import json
import logging
import queue
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from bertlab import args
from bertlab.calibration import Calibration, calibration_path
from bertlab.monitoring import Metrics

log = logging.getLogger("bertlab.serve")

PATHS = ("/predict", "/health", "/ready", "/metrics")
#: Reports the worker runs once before it says it is ready (ONNX Runtime allocates on its first calls).
WARM_UP = ("wafer 12 failed leakage at sort", "latch-up during burn-in on lot 7 " * 40)


def _flag(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class ServeConfig:
    """What ``bertlab serve`` serves and how; each field after ``batching`` is a flag (--max-batch ...)."""

    model: Path
    calibration: Path | None = None  # None: calibration_path(model) when it exists, else no calibration
    batching: bool = True  # False: one request at a time
    batch_window_ms: float = _flag(5.0, "after a request arrives, wait this long for more to batch with it (0: only "
                                        "those already queued)")
    max_batch: int = _flag(32, "reports per model call")
    max_texts: int = _flag(64, "reports per request")
    max_body_bytes: int = _flag(1_000_000, "largest request body, in bytes")
    drift_window: int = _flag(200, "served top probabilities compared with the calibration's reference")
    drift_alpha: float = _flag(0.01, "drift_alarm when the KS test's p-value is under this")
    threads: int = _flag(2, "ONNX Runtime intra-op threads")
    cache_size: int = _flag(1024, "repeated reports remembered (0: off, e.g. to load-test the model itself)")

    def __post_init__(self):
        self.model = Path(self.model)
        self.calibration = None if self.calibration is None else Path(self.calibration)
        args.positive_int("threads", self.threads)
        args.number("batch_window_ms", self.batch_window_ms, 0.0, 10_000.0)
        args.positive_int("max_batch", self.max_batch)
        args.positive_int("max_texts", self.max_texts)
        args.integer("max_body_bytes", self.max_body_bytes, low=64)
        args.integer("drift_window", self.drift_window, low=2)
        args.number("drift_alpha", self.drift_alpha, 0.0, 1.0, low_open=True, high_open=True)
        args.integer("cache_size", self.cache_size, low=0)

    def load_calibration(self) -> tuple[Calibration, Path | None]:
        """The calibration to apply and the file it came from (None: the defaults, T=1, threshold 0)."""
        path = self.calibration or calibration_path(self.model)
        if self.calibration is None and not path.is_file():
            return Calibration(), None
        return Calibration.load(path), path


def model_version(model: Path, calibration: Calibration) -> str:
    """12 hex digits of SHA-256 over the model file's bytes and the calibration's settings."""
    h = hashlib.sha256()
    with open(model, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(json.dumps(asdict(calibration), sort_keys=True).encode())
    return h.hexdigest()[:12]


class BadRequest(Exception):
    """A client error: its HTTP status and the message that says what to fix."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def parse_reports(body: bytes, max_texts: int) -> list[str]:
    """The reports of a ``/predict`` body, or :class:`BadRequest` saying what is wrong with it."""
    usage = 'send {"text": "<report>"} or {"texts": ["<report>", ...]}'
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise BadRequest(400, f"the body is not UTF-8 (byte {err.start}); encode the JSON as UTF-8") from None
    except json.JSONDecodeError as err:
        raise BadRequest(400, f"the body is not valid JSON ({err.msg}: line {err.lineno} column {err.colno}); "
                              f"{usage}") from None
    except RecursionError:
        raise BadRequest(400, f"the body is nested too deeply to parse; {usage}") from None
    if not isinstance(data, dict):
        raise BadRequest(422, f"the body must be a JSON object, got {_json_type(data)}; {usage}")
    unknown = sorted(set(data) - {"text", "texts"})
    if unknown:
        raise BadRequest(422, f"unknown field(s) {unknown}; {usage}")
    if ("text" in data) == ("texts" in data):
        raise BadRequest(422, f"give exactly one of \"text\" and \"texts\"; {usage}")
    if "text" in data:
        texts, names = [data["text"]], ["text"]
    else:
        texts = data["texts"]
        if not isinstance(texts, list):
            raise BadRequest(422, f"\"texts\" must be a list of strings, got {_json_type(texts)}")
        if not texts:
            raise BadRequest(422, "\"texts\" is empty: give at least one report")
        if len(texts) > max_texts:
            raise BadRequest(422, f"\"texts\" holds {len(texts)} reports; at most {max_texts} per request: split them "
                                  "into several requests")
        names = [f"texts[{i}]" for i in range(len(texts))]
    for name, t in zip(names, texts):
        if not isinstance(t, str):
            raise BadRequest(422, f"{name} must be a string (the report's text), got {_json_type(t)}")
        if not t.strip():
            raise BadRequest(422, f"{name} is empty or only whitespace: send the report's text")
    return texts


def _json_type(value) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array", dict: "an object"}
    return names.get(type(value), "null")


class ModelWorker:
    """The thread that owns the model: loads and warms it, then runs the queued requests in batches."""

    def __init__(self, config: ServeConfig, calibration: Calibration, metrics: Metrics):
        self.config, self.calibration, self.metrics = config, calibration, metrics
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.ready = threading.Event()
        self.failure: str | None = None
        self.version: str | None = None
        self.max_length: int | None = None
        self._thread = threading.Thread(target=self._run, name="bertlab-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued requests, then end the thread."""
        self.queue.put(None)
        self._thread.join(timeout)

    def submit(self, texts: list[str]) -> asyncio.Future:
        """A future (of the event loop calling this) that resolves to one answer per report."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.queue.put((texts, future, loop))
        return future

    def _load(self):
        from bertlab import deploy, env

        env.quiet()
        predictor = deploy.onnx_predictor(self.config.model, threads=self.config.threads, batch_size=self.config.max_batch,
                                          cache_size=self.config.cache_size,
                                          to_probabilities=self.calibration.probabilities)
        predictor.predict(list(WARM_UP))
        predictor.clear_cache()
        self.metrics.drift()  # imports scipy.stats now, not during the first scrape
        self.version = model_version(self.config.model, self.calibration)
        self.max_length = predictor.max_length
        return predictor

    def _run(self) -> None:
        try:
            predictor = self._load()
        except Exception as err:  # any failure to load: /ready says why, /predict answers 503
            self.failure = f"{type(err).__name__}: {err}"
            log.error("bertlab serve: cannot load the model %s: %s", self.config.model, self.failure)
            return
        self.metrics.info.labels(self.version).set(1)
        self.metrics.ready.set(1)
        self.ready.set()
        window = self.config.batch_window_ms / 1000 if self.config.batching else 0.0
        stopping = False
        while not stopping:
            item = self.queue.get()
            if item is None:
                break
            items, n = [item], len(item[0])
            deadline = time.monotonic() + window
            while self.config.batching and n < self.config.max_batch:
                try:  # whatever is already queued, then what arrives before the deadline
                    nxt = self.queue.get(timeout=max(0.0, deadline - time.monotonic())) if window else self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                items.append(nxt)
                n += len(nxt[0])
            self._answer(predictor, items)

    def _answer(self, predictor, items) -> None:
        texts = [t for item in items for t in item[0]]
        try:
            preds = predictor.predict(texts)
            top = np.array([max(p.probabilities.values()) for p in preds])
            automated = self.calibration.confident(top)
            answers = [{"failure_type": p.label, "probability": float(t), "automated": bool(a), "truncated": p.truncated,
                        "tokens": p.tokens} for p, t, a in zip(preds, top, automated)]
            self.metrics.served(top, automated, sum(p.truncated for p in preds))
        except Exception as err:  # a bug, not the client's input: each waiting request gets a 500, the worker goes on
            log.exception("bertlab serve: the model failed on a batch of %d reports", len(texts))
            for _, future, loop in items:
                loop.call_soon_threadsafe(_settle, future, None, err)
            return
        start = 0
        for batch_texts, future, loop in items:
            loop.call_soon_threadsafe(_settle, future, answers[start:start + len(batch_texts)], None)
            start += len(batch_texts)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # the client went away
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class _Measured:
    """ASGI middleware: counts every HTTP request by path and status and times it (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            path = scope["path"] if scope["path"] in PATHS else "other"
            self.metrics.requests.labels(path, str(status[0])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


def create_app(config: ServeConfig):
    """The FastAPI application serving ``config.model``; the model loads in its worker thread at startup."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    calibration, calibration_file = config.load_calibration()
    metrics = Metrics(calibration.reference, config.drift_window, config.drift_alpha)
    worker = ModelWorker(config, calibration, metrics)

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)  # after uvicorn has answered the in-flight requests

    app = FastAPI(title="bertlab serve", description=__doc__, lifespan=lifespan)
    app.state.worker, app.state.metrics, app.state.calibration = worker, metrics, calibration

    def error(status: int, detail: str, **headers) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        log.exception("bertlab serve: unexpected error on %s", request.url.path)
        return error(500, f"internal error ({type(err).__name__}); the service goes on serving")

    @app.get("/health")
    async def health():
        return {"status": "alive"}

    @app.get("/ready")
    async def ready():
        if worker.ready.is_set():
            return {"status": "ready", "model": str(config.model), "model_version": worker.version,
                    "calibration": str(calibration_file) if calibration_file else None,
                    "temperature": calibration.temperature, "threshold": calibration.threshold,
                    "max_length": worker.max_length, "batching": config.batching}
        if worker.failure:
            return error(503, f"the model failed to load: {worker.failure}")
        return error(503, "the model is loading; retry shortly", **{"Retry-After": "1"})

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict")
    async def predict(request: Request):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return error(415, f"Content-Type must be application/json, got {kind or 'none'!r}; "
                              'send {"text": "<report>"} as JSON')
        limit = config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return error(413, f"the body is {declared} bytes; at most {limit} bytes: send fewer or shorter reports",
                         Connection="close")
        body = bytearray()
        async for chunk in request.stream():  # a chunked body has no length to check up front
            body += chunk
            if len(body) > limit:
                return error(413, f"the body is over {limit} bytes: send fewer or shorter reports", Connection="close")
        try:
            texts = parse_reports(bytes(body), config.max_texts)
        except BadRequest as bad:
            return error(bad.status, bad.detail)
        if not worker.ready.is_set():
            why = f"the model failed to load: {worker.failure}" if worker.failure else "the model is loading; retry shortly"
            return error(503, why, **{"Retry-After": "1"})
        with metrics.in_flight.track_inprogress():
            answers = await worker.submit(texts)
        return {"model_version": worker.version, "predictions": answers}

    app.add_middleware(_Measured, metrics=metrics)
    return app


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning",
          access_log: bool = False) -> None:
    """Run the service under uvicorn until SIGINT/SIGTERM (the requests in flight are answered first)."""
    import uvicorn

    args.integer("port", port, 0, 65535)
    app = create_app(config)
    print(f"bertlab serve: {config.model} on http://{host}:{port} (GET /ready says when the model is loaded)",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log, lifespan="on",
                timeout_graceful_shutdown=30)


def add_arguments(parser) -> None:
    """``bertlab serve``'s flags (the CLI's subparser)."""
    parser.add_argument("--model", type=Path, default=None, help="ONNX model written by bertlab.deploy (default: the "
                        "served model in the cache, see 'bertlab export')")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--calibration", type=Path, default=None, help="calibration JSON (temperature, threshold, drift "
                        "reference; default: <model>.calibration.json beside the model if present, else T=1, threshold 0)")
    parser.add_argument("--no-batching", action="store_true", help="run one request at a time")
    for f in fields(ServeConfig):
        if "help" in f.metadata:
            parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                                help=f"{f.metadata['help']} (default {f.default})")
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                        help="uvicorn's log level (default warning; info logs each request)")


def config_from_args(ns, default_model: Path) -> ServeConfig:
    """The :class:`ServeConfig` of parsed ``bertlab serve`` flags; ValueError or FileNotFoundError saying what to fix."""
    model = ns.model or default_model
    if not Path(model).is_file():
        hint = "build it with 'bertlab export', or pass --model PATH" if ns.model is None else "check --model"
        raise FileNotFoundError(f"no model file at {model}: {hint}")
    args.integer("--port", ns.port, 0, 65535)
    config = ServeConfig(model=model, calibration=ns.calibration, batching=not ns.no_batching,
                         **{f.name: getattr(ns, f.name) for f in fields(ServeConfig) if "help" in f.metadata})
    config.load_calibration()  # a bad calibration file fails here, before the server starts
    return config
