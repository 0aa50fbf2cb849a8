"""The ``bertlab`` command: serve the course's exported model from the command line.

    bertlab predict reports.txt                  # one report per line
    cat reports.jsonl | bertlab predict -        # JSON lines with a "text" field (and an optional "id")
    bertlab export                               # build the default model (the benchmark's INT8 ONNX student)
    bertlab serve --port 8000                    # the model over HTTP (bertlab.serve: POST /predict, /ready, /metrics)
    bertlab train reports.csv --text-column text --label-column failure_type --out models/mine
    bertlab export --from models/mine            # then: bertlab predict reports.txt --model models/mine
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_BAD_RECORDS, EXIT_CANNOT_RUN = 0, 1, 2

PREDICT_HELP = """\
Read failure reports and write one JSON line per input line to stdout (or --output):

  {"line": 3, "text": "...", "failure_type": "latch_up", "probabilities": {"latch_up": 0.91, ...}}

with "id" instead of "text" when a JSON-lines record has an "id". Output lines stay aligned
with input lines: nothing is dropped. A line that cannot be predicted gets a record with an
"error" field instead, and a message on stderr naming the line:
  - an empty (or blank) line: {"line": N, "error": "empty report"}
  - bytes that are not UTF-8: {"line": N, "error": "not valid UTF-8 ..."}
  - a JSON-lines record that is not an object with a string "text": {"line": N, "error": ...}
A report longer than the model's max_length tokens is truncated (the model reads only its
start) and predicted, with "truncated": true in its record and a warning on stderr.

Input formats (--format): 'lines' (one report per line), 'jsonl' (one JSON object per line
with a "text" field), 'auto' (default: jsonl when the first non-empty line is a JSON object).

Exit status: 0 every line predicted; 1 some records are errors; 2 nothing could be run
(bad arguments, unreadable input, missing or corrupt model).

The model is an ONNX file written by bertlab.deploy (label names and max_length are stored
in it). Default: the course's served model in the cache; build it with 'bertlab export'.
"""


def default_model_path() -> Path:
    from bertlab import cache

    return cache.cache_dir() / "served-model.onnx"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertlab", description="The bertlab course's command line: serve the "
                                     "failure-report classifier.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{predict,export,serve,train}")
    p = sub.add_parser("predict", help="predict the failure type of reports (JSON lines out)", description=PREDICT_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", default="-", help="file of reports, or '-' for stdin (default)")
    p.add_argument("--model", type=Path, default=None,
                   help="ONNX model written by bertlab.deploy, or a folder written by 'bertlab train' and "
                        "'bertlab export --from' (default: the served model in the cache, see 'bertlab export')")
    p.add_argument("--format", choices=("auto", "lines", "jsonl"), default="auto", help="input format (default auto)")
    p.add_argument("--output", "-o", type=Path, default=None, help="write the JSON lines here instead of stdout")
    p.add_argument("--batch-size", type=int, default=32, help="reports per model call (default 32)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    e = sub.add_parser("export", help="build the default served model: the deployment benchmark's 2-layer student "
                                      "(distils the cached teacher if needed: about 7.5 minutes on 2 cores, once), "
                                      "ONNX Runtime INT8 with a trimmed vocabulary")
    e.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: ONNX Runtime INT8)")
    e.add_argument("--from", dest="source", type=Path, default=None,
                   help="export this folder written by 'bertlab train' to FOLDER/model.onnx instead")
    from bertlab import serve

    serve.add_arguments(sub.add_parser("serve", help="serve the model over HTTP: POST /predict, GET /health, /ready, "
                                       "/metrics (bertlab.serve)", description=serve.__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter))
    t = sub.add_parser("train", help="fine-tune on your own reports (CSV or JSON lines): model, tokenizer and a model "
                                     "card in Hugging Face's formats")
    from bertlab.own_reports import add_train_arguments

    add_train_arguments(t)
    return parser


def _err(msg: str) -> None:
    print(f"bertlab: {msg}", file=sys.stderr, flush=True)


def _split_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":  # the newline that ends the last line is not an empty report
        lines.pop()
    return [x[:-1] if x.endswith(b"\r") else x for x in lines]


def _decode(raw: bytes, n: int) -> tuple[str | None, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as err:
        return None, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at byte offset {err.start}); re-encode the input as UTF-8"


def _looks_like_jsonl(lines: list[str | None]) -> bool:
    first = next((x for x in lines if x is not None and x.strip()), None)
    if first is None or not first.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _records(lines: list[str | None], errors: dict[int, str], fmt: str) -> list[dict]:
    """One dict per input line: {'line', 'text' or 'error', maybe 'id'}."""
    out = []
    for n, line in enumerate(lines, start=1):
        rec: dict = {"line": n}
        if n in errors:
            rec["error"] = errors[n]
        elif fmt == "jsonl":
            if not line.strip():
                rec["error"] = "empty report"
            else:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    obj, rec["error"] = None, f"not valid JSON ({err.msg} at column {err.colno})"
                if obj is not None:
                    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                        rec["error"] = 'a JSON-lines record must be an object with a string "text" field'
                    else:
                        if "id" in obj:
                            rec["id"] = obj["id"]
                        if obj["text"].strip():
                            rec["text"] = obj["text"]
                        else:
                            rec["error"] = "empty report"
        elif not line.strip():
            rec["error"] = "empty report"
        else:
            rec["text"] = line
        out.append(rec)
    return out


def predict(args) -> int:
    from bertlab import deploy, env

    env.quiet()
    model = args.model or default_model_path()
    folder = Path(model) if Path(model).is_dir() else None  # a 'bertlab train' folder: its ONNX file and tokenizer
    model = folder / "model.onnx" if folder else model
    if args.batch_size < 1 or args.threads < 1:
        _err("--batch-size and --threads must be positive integers")
        return EXIT_CANNOT_RUN
    if not Path(model).is_file():
        hint = ("build the course's model with 'bertlab export' (it distils the cached teacher: minutes on a CPU), "
                "or pass --model PATH") if args.model is None else (f"export it with 'bertlab export --from {folder}'"
                                                                   if folder else "check the path given to --model")
        _err(f"no model file at {model}: {hint}")
        return EXIT_CANNOT_RUN
    try:
        tokenizer = None
        if folder:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        predictor = deploy.onnx_predictor(model, threads=args.threads, batch_size=args.batch_size, tokenizer=tokenizer)
    except (ValueError, OSError) as err:
        _err(f"cannot load the model {model}: {err}. Re-export it ('bertlab export') or pass another --model.")
        return EXIT_CANNOT_RUN
    try:
        data = sys.stdin.buffer.read() if args.input == "-" else Path(args.input).read_bytes()
    except OSError as err:
        _err(f"cannot read the input {args.input}: {err.strerror or err}")
        return EXIT_CANNOT_RUN
    source = "stdin" if args.input == "-" else args.input
    lines, errors = [], {}
    for n, raw in enumerate(_split_lines(data), start=1):
        text, problem = _decode(raw, n)
        lines.append(text)
        if problem:
            errors[n] = problem
    fmt = args.format if args.format != "auto" else ("jsonl" if _looks_like_jsonl(lines) else "lines")
    records = _records(lines, errors, fmt)
    todo = [r for r in records if "text" in r]
    preds = predictor.predict([r["text"] for r in todo]) if todo else []
    for rec, pred in zip(todo, preds):
        if "id" in rec:
            del rec["text"]
        rec["failure_type"] = pred.label
        rec["probabilities"] = {k: round(v, 6) for k, v in pred.probabilities.items()}
        if pred.truncated:
            rec["truncated"] = True
            _err(f"warning: {source} line {rec['line']}: the report has {pred.tokens} tokens; it was truncated to the "
                 f"model's max_length of {predictor.max_length} tokens (the rest was not read)")
    n_bad = 0
    for rec in records:
        if "error" in rec:
            n_bad += 1
            _err(f"{source} line {rec['line']}: {rec['error']}")
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for rec in records:
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
        out.flush()
    finally:
        if args.output:
            out.close()
    if n_bad:
        _err(f"{n_bad} of {len(records)} lines could not be predicted (records with an \"error\" field)")
        return EXIT_BAD_RECORDS
    return EXIT_OK


def export(args) -> int:
    import shutil

    from bertlab import artifacts, env

    env.quiet()
    if args.source is not None:
        from bertlab.own_model import export_folder

        try:
            print(export_folder(args.source, int8=not args.fp32))
        except (OSError, ValueError) as err:
            _err(f"cannot export {args.source}: {err}")
            return EXIT_CANNOT_RUN
        return EXIT_OK
    path = artifacts.exported_model(int8=not args.fp32)
    target = default_model_path()
    tmp = target.with_suffix(".onnx.tmp")
    shutil.copyfile(path, tmp)
    tmp.replace(target)
    print(target)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from bertlab import serve

        try:
            config = serve.config_from_args(args, default_model_path())
        except (ValueError, OSError) as err:
            _err(str(err))
            return EXIT_CANNOT_RUN
        serve.serve(config, host=args.host, port=args.port, log_level=args.log_level)
        return EXIT_OK
    try:
        if args.command == "train":
            from bertlab.own_model import train_command

            return train_command(args)
        return predict(args) if args.command == "predict" else export(args)
    except BrokenPipeError:  # e.g. piped into `head`
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
