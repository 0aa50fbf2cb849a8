"""The `bertlab predict` console script, run for real (subprocess) on a tiny exported model."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertlab import deploy, train

LABELS = ["alpha", "beta", "gamma"]
SCRIPT = Path(sys.executable).parent / "bertlab"


def command():
    """The installed console script (what a user runs); the module if it is not installed."""
    return [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "bertlab.cli"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    model = train.SequenceClassifier(BertModel(cfg), len(LABELS)).eval()
    path = tmp_path_factory.mktemp("cli") / "tiny.onnx"
    return deploy.export_onnx(model, path, metadata=deploy.model_metadata(LABELS, 24))


def run(args, stdin=b"", env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.run(command() + args, input=stdin, capture_output=True, env=env, timeout=120)
    out = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    return proc.returncode, out, proc.stderr.decode()


def test_console_script_is_installed():
    assert SCRIPT.exists(), f"{SCRIPT} is missing: reinstall the package (pip install -e .) to get the bertlab command"


def test_help_explains_the_formats_and_exit_codes():
    proc = subprocess.run(command() + ["predict", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for word in ("--model", "--format", "jsonl", "empty report", "UTF-8", "truncated", "Exit status"):
        assert word in proc.stdout, f"predict --help does not mention {word!r}"


def test_lines_from_a_file(model_path, tmp_path):
    reports = tmp_path / "reports.txt"
    reports.write_text("leakage current high at wafer sort\nlatch-up at burn-in, device destroyed\n", encoding="utf-8")
    code, out, err = run(["predict", str(reports), "--model", str(model_path), "--threads", "1"])
    assert code == 0, err
    assert [r["line"] for r in out] == [1, 2]
    assert out[0]["text"] == "leakage current high at wafer sort"
    for r in out:
        assert set(r["probabilities"]) == set(LABELS) and abs(sum(r["probabilities"].values()) - 1) < 1e-4
        assert r["failure_type"] == max(r["probabilities"], key=r["probabilities"].get)
    # The same numbers as the Python predictor.
    pred = deploy.onnx_predictor(model_path, threads=1).predict(["leakage current high at wafer sort"])[0]
    assert out[0]["probabilities"] == pytest.approx(pred.probabilities, abs=1e-5)


def test_jsonl_from_stdin_keeps_ids(model_path):
    stdin = b'{"id": "r-1", "text": "open contact on die 4"}\n{"id": 7, "text": "gate oxide breakdown"}\n'
    code, out, err = run(["predict", "-", "--model", str(model_path)], stdin)
    assert code == 0, err
    assert [r["id"] for r in out] == ["r-1", 7] and all("text" not in r for r in out)


def test_empty_lines_get_error_records_and_keep_alignment(model_path):
    code, out, err = run(["predict", "--model", str(model_path)], b"first report\n\n   \nlast report\n")
    assert code == 1
    assert [r["line"] for r in out] == [1, 2, 3, 4]
    assert out[1] == {"line": 2, "error": "empty report"} and out[2]["error"] == "empty report"
    assert "failure_type" in out[0] and "failure_type" in out[3]
    assert "line 2: empty report" in err and "2 of 4 lines" in err


def test_non_utf8_bytes_name_the_line(model_path):
    code, out, err = run(["predict", "--model", str(model_path)], b"fine report\nbad \xff\xfe bytes\n")
    assert code == 1
    assert "failure_type" in out[0]
    assert out[1]["line"] == 2 and "UTF-8" in out[1]["error"]
    assert "line 2" in err and "UTF-8" in err


def test_bad_jsonl_records(model_path):
    stdin = b'{"text": "ok report"}\n{"txt": "no text field"}\nnot json at all\n'
    code, out, err = run(["predict", "--model", str(model_path), "--format", "jsonl"], stdin)
    assert code == 1
    assert "failure_type" in out[0]
    assert '"text"' in out[1]["error"] and "JSON" in out[2]["error"]


def test_long_reports_are_truncated_with_a_warning(model_path):
    long = ("die " * 100).strip().encode()
    code, out, err = run(["predict", "--model", str(model_path)], long + b"\nshort one\n")
    assert code == 0, err
    assert out[0]["truncated"] is True and "truncated" not in out[1]
    assert "line 1" in err and "truncated" in err and "24 tokens" in err


def test_missing_model_is_a_clear_error(tmp_path):
    code, out, err = run(["predict", "--model", str(tmp_path / "nope.onnx")], b"report\n")
    assert code == 2 and out == []
    assert "no model file" in err and "nope.onnx" in err


def test_default_model_missing_says_how_to_build_it(tmp_path):
    code, out, err = run(["predict"], b"report\n", env_extra={"BERTLAB_CACHE": str(tmp_path)})
    assert code == 2 and "bertlab export" in err


def test_corrupt_model_is_a_clear_error(model_path, tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(model_path.read_bytes()[: 5000])
    code, out, err = run(["predict", "--model", str(bad)], b"report\n")
    assert code == 2 and out == []
    assert "cannot load the model" in err and "Traceback" not in err


def test_default_model_from_the_cache(model_path, tmp_path):
    shutil.copy(model_path, tmp_path / "served-model.onnx")
    code, out, err = run(["predict"], b"one report\n", env_extra={"BERTLAB_CACHE": str(tmp_path)})
    assert code == 0, err
    assert out[0]["failure_type"] in LABELS


def test_export_copies_the_course_model_to_the_default_path(model_path, tmp_path, monkeypatch, capsys):
    from bertlab import artifacts, cli

    monkeypatch.setenv("BERTLAB_CACHE", str(tmp_path))
    asked = []
    monkeypatch.setattr(artifacts, "exported_model", lambda int8=True: asked.append(int8) or model_path)
    assert cli.main(["export", "--fp32"]) == 0 and cli.main(["export"]) == 0
    assert asked == [False, True], "--fp32 asks for the fp32 export, the default for INT8"
    target = tmp_path / "served-model.onnx"
    assert capsys.readouterr().out.split() == [str(target)] * 2
    assert target.read_bytes() == model_path.read_bytes() and not list(tmp_path.glob("*.tmp"))
