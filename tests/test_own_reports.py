"""`bertlab train` on your own reports: the checks on the file, the split, the model in Hugging Face's formats."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bertlab import cli, own_model, own_reports
from bertlab.data import make_splits

SCRIPT = Path(sys.executable).parent / "bertlab"


def write_csv(path, rows, columns=("text", "failure_type")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def fab_d_rows():
    return [(r.text, r.failure_type) for r in make_splits("D", n_train=300, n_val=0, n_test=0).train]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fab_d_rows):
    """A model trained for a few steps on 300 fab-D reports, saved as `bertlab train` saves it."""
    d = tmp_path_factory.mktemp("own")
    reports = own_reports.read_reports(write_csv(d / "reports.csv", fab_d_rows), "text", "failure_type")
    summary, model, tokenizer, test = own_model.train_own_model(reports, progress=False, epochs=1, max_steps=4)
    out = own_model.save_own_model(d / "mine", summary, model, tokenizer, test)
    texts = [reports.texts[i] for i in own_reports.split_reports(reports).test[:12]]
    return {"out": out, "summary": summary, "model": model, "tokenizer": tokenizer, "texts": texts, "reports": reports}


# ---------------------------------------------------------------- the trained folder


@pytest.mark.slow  # trains for a few steps: about 30 s of CPU, minutes of wall time on a busy machine
def test_the_folder_holds_a_hugging_face_model_and_a_card(trained, fab_d_rows):
    out, s = trained["out"], trained["summary"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "confusion_matrix.png",
                 "training_summary.json"):
        assert (out / name).is_file(), f"{name} missing from {sorted(p.name for p in out.iterdir())}"
    config = json.loads((out / "config.json").read_text())
    names = s["label_names"]
    assert names == sorted({y for _, y in fab_d_rows})
    assert config["id2label"] == {str(i): n for i, n in enumerate(names)} and len(names) == 8
    assert config["label2id"] == {n: i for i, n in enumerate(names)}
    d = s["data"]
    assert d["rows"] == 300 and d["train"] + d["validation"] + d["test"] == d["used"] == 300
    assert d["test"] == 60 and d["validation"] == 30
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-classification")
    for figure in (f"{s['test']['macro_f1']:.3f}", f"{s['baseline']['macro_f1']:.3f}",
                   f"{s['difference']['interval'][0]:+.3f}", f"{s['difference']['interval'][1]:+.3f}"):
        assert figure in card
    for name in names:
        assert f"| {name} | {d['classes'][name]} |" in card
    lo, hi = s["difference"]["interval"]
    assert lo <= s["difference"]["macro_f1"] <= hi
    assert s["difference"]["macro_f1"] == pytest.approx(s["test"]["macro_f1"] - s["baseline"]["macro_f1"])


@pytest.mark.slow
def test_transformers_loads_it_with_the_same_logits(trained):
    from transformers import AutoModelForSequenceClassification

    loaded = AutoModelForSequenceClassification.from_pretrained(trained["out"]).eval()
    batch = trained["tokenizer"](trained["texts"], padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        ours = trained["model"].eval()(**batch).logits
        theirs = loaded(**batch).logits
    assert torch.allclose(ours, theirs, atol=1e-5), float((ours - theirs).abs().max())


@pytest.mark.slow
def test_pipeline_equals_bertlab_predict(trained, tmp_path):
    """transformers.pipeline on the folder and `bertlab export --from` + `bertlab predict` give the same answers."""
    from transformers import pipeline

    from bertlab import deploy

    out, texts = trained["out"], trained["texts"]
    code = cli.main(["export", "--from", str(out), "--fp32"])
    assert code == 0 and (out / "model.onnx").is_file()
    assert json.loads(deploy.read_metadata(out / "model.onnx")["label_names"]) == trained["summary"]["label_names"]
    reports = tmp_path / "reports.txt"
    reports.write_text("\n".join(texts) + "\n", encoding="utf-8")
    code = cli.main(["predict", str(reports), "--model", str(out), "--output", str(tmp_path / "p.jsonl")])
    assert code == 0
    ours = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    clf = pipeline("text-classification", model=str(out), device=-1)
    theirs = clf(texts, truncation=True, top_k=None)
    assert len(ours) == len(theirs) == len(texts)
    for o, t in zip(ours, theirs):
        best = max(t, key=lambda x: x["score"])
        assert o["failure_type"] == best["label"]
        for x in t:
            assert o["probabilities"][x["label"]] == pytest.approx(x["score"], abs=1e-4)


# ---------------------------------------------------------------- bad files: a clear message, nothing written


def run_train(tmp_path, name, content, capsys, *extra):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out"
    code = cli.main(["train", str(path), "--text-column", "text", "--label-column", "failure_type", "--out", str(out),
                     "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [name], "something was written"
    assert "nothing was written" in err
    return err


def csv_text(rows, header="text,failure_type"):
    return header + "\n" + "".join(f"{t},{y}\n" for t, y in rows)


def many(n=12, classes=("a", "b")):
    return [(f"report {i} about {c} {' '.join(['word'] * (i % 5))}", c) for c in classes for i in range(n)]


def test_missing_column_names_the_columns_there(tmp_path, capsys):
    err = run_train(tmp_path, "r.csv", csv_text(many(), header="report,failure_type"), capsys)
    assert "r.csv: no column 'text' (--text-column); the columns are: 'report', 'failure_type'" in err


def test_empty_texts_name_the_rows(tmp_path, capsys):
    rows = many()
    rows[2], rows[4] = ("", "a"), ("   ", "a")
    err = run_train(tmp_path, "r.csv", csv_text(rows), capsys)
    assert "column 'text' is empty in 2 of 24 rows (rows 3, 5)" in err


def test_one_class(tmp_path, capsys):
    err = run_train(tmp_path, "r.csv", csv_text(many(classes=("a",))), capsys)
    assert "column 'failure_type' has one class only ('a' in all 12 labelled rows)" in err


def test_a_rare_class_names_it_and_the_flag(tmp_path, capsys):
    rows = many() + [("odd report one", "rare"), ("odd report two", "rare")]
    err = run_train(tmp_path, "r.csv", csv_text(rows), capsys)
    assert "1 class(es) with fewer than 10 reports: 'rare' (2: rows 25, 26)" in err and "--min-per-class" in err
    err = run_train(tmp_path, "r.csv", csv_text(many(n=5)), capsys, "--min-per-class", "6")
    assert "fewer than 6 reports" in err


def test_bytes_that_are_not_utf8_name_the_line(tmp_path, capsys):
    data = csv_text(many()).encode().split(b"\n")
    data[3] = b"caf\xe9 report,a"
    err = run_train(tmp_path, "r.csv", b"\n".join(data), capsys)
    assert "r.csv line 4: byte 0xe9 at byte 4 of the line is not UTF-8" in err


def test_a_mostly_empty_label_column(tmp_path, capsys):
    rows = [(t, y if i % 3 == 0 else "") for i, (t, y) in enumerate(many())]
    err = run_train(tmp_path, "r.csv", csv_text(rows), capsys)
    assert "column 'failure_type' is empty in 16 of 24 rows" in err and "--label-column" in err


@pytest.mark.parametrize("content,says", [("", "the file is empty"), ("text,failure_type\n", "no rows")])
def test_an_empty_file(tmp_path, capsys, content, says):
    assert says in run_train(tmp_path, "r.csv", content, capsys)


@pytest.mark.parametrize("name,content,says", [("r.jsonl", "\n", "one JSON object per line"),
                                               ("r.jsonl", '{"text": "a"}\n{"text": ', "cannot be read as JSON lines"),
                                               ("r.txt", "x\n", "unknown file type .txt")])
def test_an_empty_jsonl_file_a_broken_one_and_an_unknown_type(tmp_path, capsys, name, content, says):
    assert says in run_train(tmp_path, name, content, capsys)


def test_an_existing_output_folder_is_not_touched(tmp_path, capsys):
    path = write_csv(tmp_path / "r.csv", many())
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = cli.main(["train", str(path), "--text-column", "text", "--label-column", "failure_type", "--out", str(out)])
    assert code == 2 and "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_the_console_script_reports_bad_input_with_exit_2(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(csv_text(many(classes=("a",))))
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "bertlab.cli"]
    proc = subprocess.run(cmd + ["train", str(path), "--text-column", "text", "--label-column", "failure_type",
                                 "--out", str(tmp_path / "m")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "one class only" in proc.stderr and not (tmp_path / "m").exists()


# ---------------------------------------------------------------- reading and splitting


def test_jsonl_and_a_few_unlabelled_rows(tmp_path):
    rows = many()
    lines = [json.dumps({"text": t, "failure_type": y if i else None, "id": i}) for i, (t, y) in enumerate(rows)]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n")
    reports = own_reports.read_reports(path, "text", "failure_type")
    assert len(reports.texts) == 23 and reports.dropped == {"no label": 1} and reports.rows[0] == 2
    assert reports.classes == ["a", "b"]


def test_numeric_labels_stay_as_written(tmp_path):
    path = write_csv(tmp_path / "r.csv", [(t, "1" if y == "a" else "02") for t, y in many()])
    assert own_reports.read_reports(path, "text", "failure_type").classes == ["02", "1"]


def test_near_duplicates_are_dropped_before_a_stratified_split(tmp_path, fab_d_rows):
    rows = fab_d_rows + [(t.upper().replace("0", "7"), y) for t, y in fab_d_rows[:40]]  # 40 near-copies
    reports = own_reports.read_reports(write_csv(tmp_path / "r.csv", rows), "text", "failure_type")
    split = own_reports.split_reports(reports, seed=1)
    assert split.near_duplicates == 40
    parts = [split.train, split.validation, split.test]
    assert sum(map(len, parts)) == 300 and not set(split.train) & set(split.test) and max(split.test) < 300
    from bertlab.data import near_duplicate_key

    keys = [{near_duplicate_key(reports.texts[i]) for i in p} for p in parts]
    assert not keys[0] & keys[2] and not keys[0] & keys[1] and not keys[1] & keys[2]
    for part in parts:  # each class keeps its share (stratified) within one report
        share = {c: sum(reports.labels[i] == c for i in part) / len(part) for c in reports.classes}
        total = {c: reports.labels[:300].count(c) / 300 for c in reports.classes}
        assert all(abs(share[c] - total[c]) <= 1.5 / len(part) for c in reports.classes)
    assert own_reports.split_reports(reports, seed=1) == split
    assert own_reports.split_reports(reports, seed=2).test != split.test


def test_macro_f1_equals_scikit_learns():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    for n, k in ((50, 3), (200, 8), (7, 5)):
        y, p = rng.integers(0, k, n), rng.integers(0, k + 1, n)  # p may hold a class y lacks, and miss one
        assert own_model.macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
    assert own_model.macro_f1([0, 1, 1], [0, 1, 1]) == 1.0


def test_bootstrap_difference_brackets_the_observed_difference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    a = np.where(rng.random(200) < 0.9, y, (y + 1) % 3)  # about 90% right
    b = np.where(rng.random(200) < 0.6, y, (y + 1) % 3)  # about 60% right
    d, lo, hi = own_model.bootstrap_difference(own_model.macro_f1, y, a, b, n_boot=300)
    assert 0.15 < lo < d < hi < 0.45
    assert own_model.bootstrap_difference(own_model.macro_f1, y, a, a, n_boot=50) == (0.0, 0.0, 0.0)


def test_predict_and_export_on_a_folder_that_is_not_ready(tmp_path, capsys):
    reports = tmp_path / "r.txt"
    reports.write_text("a report\n")
    assert cli.main(["predict", str(reports), "--model", str(tmp_path)]) == 2
    assert f"export it with 'bertlab export --from {tmp_path}'" in capsys.readouterr().err
    assert cli.main(["export", "--from", str(tmp_path)]) == 2
    assert "has no config.json: give a folder written by 'bertlab train'" in capsys.readouterr().err
