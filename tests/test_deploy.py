"""Deployment: quantization, ONNX export and its equality check, sizes, the latency timer, the benchmark, the predictor."""
import json
import os

import numpy as np
import pytest
import torch

from bertlab import artifacts, benchmark, deploy, train, vocab

LABELS = [f"type_{i}" for i in range(4)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(vocab=30522, layers=2, seed=0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    return train.SequenceClassifier(BertModel(cfg), len(LABELS)).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("onnx")
    model = tiny_model()
    path = deploy.export_onnx(model, folder / "m.onnx", metadata=deploy.model_metadata(LABELS, 48))
    return model, path


# ---------------------------------------------------------------- quantization and export


def test_quantize_torch_replaces_linear_layers_and_keeps_the_original():
    model = tiny_model()
    q = deploy.quantize_torch(model)
    kinds = {type(m).__name__ for m in q.modules()}
    assert "Linear" in kinds and any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in q.modules())
    assert all(type(m).__module__.startswith("torch.nn") for m in model.modules() if type(m).__name__ == "Linear")
    ids = torch.randint(1000, 30000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(ids, torch.ones_like(ids)), q(ids, torch.ones_like(ids))
    assert (a - b).abs().max() < 0.05 and not torch.equal(a, b), "INT8 logits should be close to, not equal to, fp32's"


def test_export_has_dynamic_axes_and_matches_torch(exported):
    import onnx

    model, path = exported
    proto = onnx.load(str(path))
    names = [i.name for i in proto.graph.input]
    assert names == ["input_ids", "attention_mask"]
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input]
    assert all(isinstance(d, str) for row in dims for d in row), f"batch and sequence must be symbolic, got {dims}"
    rows = deploy.check_onnx(model, path, shapes=[(1, 5), (3, 17), (6, 48)], threads=1)
    assert [(r["batch"], r["length"]) for r in rows] == [(1, 5), (3, 17), (6, 48)]
    assert max(r["max |ORT - torch|"] for r in rows) <= deploy.ONNX_ATOL
    assert json.loads(deploy.read_metadata(path)["label_names"]) == LABELS


def test_check_onnx_catches_a_different_model(exported):
    _, path = exported
    with pytest.raises(AssertionError, match="differs from PyTorch"):
        deploy.check_onnx(tiny_model(seed=1), path, threads=1)


def test_padding_does_not_change_the_onnx_logits(exported):
    _, path = exported
    session = deploy.ort_session(path, threads=1)
    ids = np.array([[101, 2000, 3000, 4000, 102]], dtype=np.int64)
    alone = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    padded_ids, mask = deploy.pad_batch([ids[0].tolist(), list(range(101, 112))])
    both = session.run(None, {"input_ids": padded_ids, "attention_mask": mask})[0]
    assert np.abs(both[0] - alone[0]).max() < 1e-5


def test_ort_quantization_shrinks_and_keeps_metadata(exported, tmp_path):
    model, path = exported
    q = deploy.quantize_onnx(path, tmp_path / "q.onnx")
    assert benchmark.size_mb(q) < 0.4 * benchmark.size_mb(path), "INT8 weights and embeddings: about 4x smaller"
    assert deploy.read_metadata(q)["label_names"] == deploy.read_metadata(path)["label_names"]
    ids, mask = deploy._example_inputs(2, 20, 30522)
    got = deploy.OrtRunner(deploy.ort_session(q, threads=1))(ids.numpy(), mask.numpy())
    with torch.no_grad():
        ref = model(ids, mask).numpy()
    assert np.abs(got - ref).max() < 0.1


def test_static_ort_quantization_is_calibrated_on_the_given_reports(exported, tmp_path):
    """Static: MatMul weights int8 with activation scales fixed from the calibration reports; embeddings stay fp32."""
    import onnx

    model, path = exported
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randint(1000, 2000, (n,), generator=g).tolist() for n in (5, 17, 33, 48)]
    static = deploy.quantize_onnx(path, tmp_path / "static.onnx", calibration=calibration)
    dynamic = deploy.quantize_onnx(path, tmp_path / "dynamic.onnx")
    graph = onnx.load(str(static)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, f"static quantization puts Q/DQ pairs in the graph; ops {sorted(ops)}"
    types = {i.name: i.data_type for i in graph.initializer}
    assert sum(t == onnx.TensorProto.INT8 for t in types.values()) >= 2 * 6, "every MatMul weight stored in int8"
    assert types["encoder.embeddings.word_embeddings.weight"] == onnx.TensorProto.FLOAT, "the embedding table stays fp32"
    assert benchmark.size_mb(dynamic) < 0.5 * benchmark.size_mb(static), "static keeps the fp32 table that dynamic quantizes"
    assert deploy.read_metadata(static)["label_names"] == json.dumps(LABELS)
    ids, mask = deploy._example_inputs(3, 20, 30522)
    got = deploy.OrtRunner(deploy.ort_session(static, threads=1))(ids.numpy(), mask.numpy())
    with torch.no_grad():
        ref = model(ids, mask).numpy()
    assert got.shape == ref.shape and np.abs(got - ref).max() < 0.2
    with pytest.raises(ValueError, match="calibration is empty"):
        deploy.quantize_onnx(path, tmp_path / "none.onnx", calibration=[[]])
    assert not (tmp_path / "none.onnx").exists() and not list(tmp_path.glob("*.tmp"))


def test_ort_session_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ONNX model"):
        deploy.ort_session(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="not an ONNX model"):
        deploy.ort_session(bad)
    with pytest.raises(ValueError, match="threads"):
        deploy.set_threads(0)


def test_trimmed_vocabulary_keeps_logits_of_kept_tokens_and_maps_others_to_unk(tmp_path):
    model = tiny_model()
    keep = list(range(2000, 2100))
    trimmed = vocab.TrimmedVocabulary(model, keep, unk_id=100, special_ids=[0, 101, 102])
    assert trimmed.model.encoder.embeddings.word_embeddings.num_embeddings == 104
    inside = torch.tensor([[101, 2005, 2050, 102]])
    outside = torch.tensor([[101, 2005, 9999, 102]])
    as_unk = torch.tensor([[101, 2005, 100, 102]])
    with torch.no_grad():
        assert torch.allclose(trimmed(inside, torch.ones_like(inside)), model(inside, torch.ones_like(inside)), atol=1e-6)
        assert torch.allclose(trimmed(outside, torch.ones_like(outside)), model(as_unk, torch.ones_like(as_unk)), atol=1e-6)
    path = deploy.export_onnx(trimmed, tmp_path / "t.onnx")
    deploy.check_onnx(trimmed, path, threads=1)
    assert benchmark.size_mb(path) < 0.2 * benchmark.size_mb(deploy.export_onnx(model, tmp_path / "full.onnx"))
    with pytest.raises(ValueError, match="token ids in 0..30521"):
        vocab.TrimmedVocabulary(model, [5, 30522], unk_id=100)


# ---------------------------------------------------------------- measures


def test_size_mb_of_a_file_and_of_a_model(tmp_path):
    f = tmp_path / "blob"
    f.write_bytes(b"x" * (3 * 2 ** 20 + 2 ** 19))
    assert benchmark.size_mb(f) == 3.5
    model = torch.nn.Linear(512, 256)
    ref = tmp_path / "ref.pt"
    torch.save(model.state_dict(), ref)
    assert benchmark.size_mb(model) == pytest.approx(os.path.getsize(ref) / 2 ** 20, abs=0.01)
    assert benchmark.size_mb(model) == pytest.approx((512 * 256 + 256) * 4 / 2 ** 20, rel=0.02)
    with pytest.raises(FileNotFoundError):
        benchmark.size_mb(tmp_path / "nothing")
    with pytest.raises(TypeError):
        benchmark.size_mb(42)


class FakeClock:
    """Time advances only when the fake model runs: by the duration the test chose for that input."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_latency_ms_percentiles_with_a_fake_clock():
    clock = FakeClock()
    calls = []
    durations_ms = [5.0, 1.0, 3.0, 2.0, 4.0, 100.0, 6.0, 7.0, 8.0, 9.0]

    def predict(x):
        calls.append(x)
        clock.now += durations_ms[x] / 1000 if len(calls) > 3 else 1.0  # the 3 warm-up calls are slow

    out = benchmark.latency_ms(predict, range(10), warmup=3, clock=clock)
    assert calls[:3] == [0, 1, 2] and calls[3:] == list(range(10))
    assert out["n"] == 10
    assert out["p50"] == pytest.approx(np.percentile(durations_ms, 50))
    assert out["p95"] == pytest.approx(np.percentile(durations_ms, 95))
    assert out["mean"] == pytest.approx(np.mean(durations_ms))
    with pytest.raises(ValueError, match="inputs"):
        benchmark.latency_ms(predict, [], clock=clock)
    with pytest.raises(ValueError, match="warmup"):
        benchmark.latency_ms(predict, [0], warmup=-1, clock=clock)


def test_best_variant_needs_accuracy_then_both_ratios():
    import pandas as pd

    table = pd.DataFrame({"size_mb": [90.0, 10.0, 30.0, 5.0], "p50_ms": [10.0, 1.0, 1.5, 4.0], "p95_ms": [12.0, 2.0, 2.0, 5.0],
                          "accuracy": [0.90, 0.85, 0.895, 0.90]}, index=["teacher", "tiny", "mid", "small"])
    best = benchmark.best_variant(table)
    # tiny is too inaccurate; mid: min(6.7, 3.0) = 3.0; small: min(2.5, 18) = 2.5
    assert best["variant"] == "mid"
    assert best["p50_ratio"] == pytest.approx(10 / 1.5) and best["size_ratio"] == pytest.approx(3.0)
    assert best["accuracy_delta_points"] == pytest.approx(-0.5) and best["within_accuracy"]


def test_benchmark_measures_every_variant(exported, tmp_path):
    model, path = exported
    variants = [benchmark.save_torch_variant(model, tmp_path / "m.pt", "torch fp32"), benchmark.onnx_variant(path, "ORT fp32")]
    ids = [[101] + list(range(2000, 2000 + n)) + [102] for n in (3, 8, 20, 5, 13)]
    with torch.no_grad():
        labels = [int(model(torch.tensor([x]), torch.ones(1, len(x), dtype=torch.long)).argmax()) for x in ids]
    labels[0] = (labels[0] + 1) % len(LABELS)  # one wrong label: accuracy 4/5
    bench = benchmark.Benchmark(ids, labels, threads=1, n_latency=5, warmup=2, batch_size=2, isolate=False)
    table = bench.run(variants, progress=False)
    assert list(table.index) == ["torch fp32", "ORT fp32"]
    assert table["accuracy"].tolist() == pytest.approx([0.8, 0.8])
    assert (table["p50_ms"] > 0).all() and (table["p95_ms"] >= table["p50_ms"]).all()
    assert table.loc["torch fp32", "speed-up (p50)"] == 1.0 and table.loc["torch fp32", "smaller"] == 1.0
    assert table.loc["ORT fp32", "size_mb"] == pytest.approx(benchmark.size_mb(path))


@pytest.mark.slow
def test_benchmark_in_its_own_process(exported):
    _, path = exported
    bench = benchmark.Benchmark([[101, 2000, 102]] * 4, [0] * 4, threads=1, n_latency=3, warmup=1, isolate=True)
    row = bench.measure(benchmark.onnx_variant(path, "ORT"))
    assert row["p50_ms"] > 0 and 0 <= row["accuracy"] <= 1


# ---------------------------------------------------------------- the predictor


class CountingRunner:
    def __init__(self, runner):
        self.runner, self.calls, self.rows = runner, 0, 0

    def __call__(self, ids, mask):
        self.calls += 1
        self.rows += len(ids)
        return self.runner(ids, mask)


def test_predictor_batches_caches_and_truncates(exported):
    from bertlab import pretrained

    model, path = exported
    tok = pretrained.load_tokenizer()
    runner = CountingRunner(deploy.OrtRunner(deploy.ort_session(path, threads=1)))
    pred = deploy.Predictor(runner, tok, LABELS, max_length=16, batch_size=2, cache_size=2)
    texts = ["leakage at wafer sort", "latch-up during burn-in", "leakage at wafer sort", "a " * 40 + "end"]
    out = pred.predict(texts)
    assert len(out) == 4 and out[0] is out[2], "a repeated report is computed once"
    assert runner.rows == 3 and runner.calls == 2
    assert [p.truncated for p in out] == [False, False, False, True] and out[3].tokens > 16
    for p in out:
        assert set(p.probabilities) == set(LABELS) and abs(sum(p.probabilities.values()) - 1) < 1e-5
        assert p.label == max(p.probabilities, key=p.probabilities.get)
    enc = tok([texts[1]], truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        ref = model(enc["input_ids"], enc["attention_mask"]).softmax(-1)[0]
    assert np.allclose([out[1].probabilities[n] for n in LABELS], ref.numpy(), atol=1e-5)
    # LRU with room for 2: a, b, a (hit), c (evicts b, the least recently used), a (hit), b (computed again).
    lru = deploy.Predictor(CountingRunner(runner.runner), tok, LABELS, max_length=16, cache_size=2)
    for t in ["a a", "b b", "a a", "c c", "a a", "b b"]:
        lru.predict([t])
    assert (lru.runner.rows, lru.hits, lru.misses) == (4, 2, 4)
    with pytest.raises(TypeError, match="list of strings"):
        pred.predict("one report")


def test_predictor_applies_a_temperature_through_to_probabilities(exported):
    from bertlab import pretrained
    from bertlab.calibration import Calibration

    model, path = exported
    texts = ["leakage at wafer sort", "latch-up during burn-in on lot 7"]
    tok = pretrained.load_tokenizer()
    logits = deploy.batch_logits(deploy.OrtRunner(deploy.ort_session(path, threads=1)), tok(texts)["input_ids"])
    plain = deploy.onnx_predictor(path, threads=1).predict(texts)
    hot = deploy.onnx_predictor(path, threads=1, to_probabilities=Calibration(temperature=3.0).probabilities).predict(texts)
    for i in range(len(texts)):
        want = Calibration(temperature=3.0).probabilities(logits[i])
        assert np.allclose([hot[i].probabilities[n] for n in LABELS], want, atol=1e-6)
        assert hot[i].label == plain[i].label, "a temperature never changes the predicted type"
        assert max(hot[i].probabilities.values()) < max(plain[i].probabilities.values()), "T > 1 flattens"


def test_onnx_predictor_needs_label_names(tmp_path):
    path = deploy.export_onnx(tiny_model(layers=1), tmp_path / "nolabels.onnx")
    with pytest.raises(ValueError, match="label_names"):
        deploy.onnx_predictor(path, threads=1)


@pytest.mark.slow
def test_exported_model_is_built_once_and_served(tmp_path, monkeypatch):
    """The course's served model (quick teacher and student): trimmed, exported, quantized, cached, and it predicts."""
    from bertlab.data import FAILURE_TYPES

    monkeypatch.setenv("BERTLAB_CACHE", str(tmp_path))
    quick = {"teacher_overrides": artifacts.QUICK, "progress": False, **artifacts.DISTILL_QUICK, "transfer": 32}
    path = artifacts.exported_model(**quick)
    assert path.is_file() and path.parent == tmp_path and path.suffix == ".onnx"
    built = path.stat().st_mtime_ns
    assert artifacts.exported_model(**quick) == path and path.stat().st_mtime_ns == built, "the second call reuses the file"
    assert not list(tmp_path.glob("**/*.tmp")), "no temporary file is left behind"
    assert json.loads(deploy.read_metadata(path)["label_names"]) == list(FAILURE_TYPES)
    fp32 = artifacts.exported_model(int8=False, **quick)
    assert fp32 != path and benchmark.size_mb(path) < 0.5 * benchmark.size_mb(fp32), "INT8 is the smaller file"
    full = artifacts.exported_model(trimmed=False, **quick)
    assert full not in (path, fp32) and benchmark.size_mb(path) < 0.5 * benchmark.size_mb(full), \
        "the trimmed vocabulary drops most of the embedding table"
    assert deploy.read_metadata(path)["layers"] == json.dumps(artifacts.SERVED_STUDENT["layers"]), "the served student's layers"
    out = deploy.onnx_predictor(path, threads=1).predict(["VDD_CORE sagged to 0.91V under load"])[0]
    assert out.label in FAILURE_TYPES


def test_length_sorted_batches_cover_every_index_once_shortest_first():
    lengths = [5, 2, 9, 2, 7, 1, 5]
    batches = deploy.length_sorted_batches(lengths, 3)
    assert [len(b) for b in batches] == [3, 3, 1], batches
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths))), "every index exactly once"
    assert [lengths[i] for i in flat] == sorted(lengths), "shortest first"
    assert flat[1:3] == [1, 3] and flat[3:5] == [0, 6], "equal lengths keep their order"
    assert deploy.length_sorted_batches([], 4) == []


def test_cpu_bf16_reports_what_torch_detects(monkeypatch):
    """AMX first, then AVX512-BF16, else none; a torch without the private checks counts as none."""
    from bertlab import env

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert env.cpu_bf16() == "AMX"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert env.cpu_bf16() == "AVX512-BF16"
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert env.cpu_bf16() == "none"


def test_batch_logits_are_the_one_by_one_logits_in_the_callers_order():
    model = tiny_model()
    runner = deploy.TorchRunner(model)
    g = torch.Generator().manual_seed(2)
    ids = [torch.randint(1000, 2000, (n,), generator=g).tolist() for n in (9, 3, 30, 3, 17)]
    got = deploy.batch_logits(runner, ids, batch_size=2)
    alone = np.concatenate([runner(*deploy.pad_batch([x])) for x in ids])
    assert got.shape == (5, len(LABELS)) and np.abs(got - alone).max() < 1e-5, "padding never changes a report's logits"
    with pytest.raises(ValueError, match="batch_size"):
        deploy.batch_logits(runner, ids, batch_size=0)
    with pytest.raises(ValueError, match="ids is empty"):
        deploy.batch_logits(runner, [])
