"""Mutants of 09-deployment (see bertlab/instructor/mutants/__init__.py)."""
from bertlab.instructor.mutants import edit

EXPORT_HEAD = """def export_classifier(model, path):
    '''Export model(input_ids, attention_mask) -> logits to ONNX at path, batch and sequence axes dynamic.'''
"""
QUANTIZE = """

def quantize_int8(src, dst):
    '''ONNX Runtime's dynamic INT8 quantization of the ONNX file src, written to dst.'''
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst
"""
AXES = 'axes = {0: "batch", 1: "sequence"}'
INPUTS = '(ids, mask), str(path), input_names=["input_ids", "attention_mask"]'
QUANT_CALL = "quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)"

LAT_HEAD = """def latency_ms(predict, inputs, warmup=10, clock=time.perf_counter):
    '''p50, p95 and mean latency (ms) of predict(x) over inputs, after `warmup` untimed calls.'''
"""
WARMUP = """    for i in range(warmup):
        predict(inputs[i % len(inputs)])
"""
TIMED = """        start = clock()
        predict(x)
        times.append((clock() - start) * 1000)"""
RESULT = """    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95)),
            "mean": float(np.mean(times)), "n": len(times)}"""

MUTANTS = {
    "export_classifier": {
        # no dynamic axes: the file runs only at the traced (2, 16)
        "no dynamic axes": edit((AXES, "axes = {}")),
        # the batch dynamic, the report length fixed at the traced 16
        "sequence axis fixed": edit((AXES, 'axes = {0: "batch"}')),
        # the attention mask left out: padding attends like a token
        "no attention mask input": edit((INPUTS, '(ids,), str(path), input_names=["input_ids"]'),
                                        ('"attention_mask": axes,', "")),
        # the input names in the wrong order
        "input names swapped": edit((INPUTS, '(ids, mask), str(path), input_names=["attention_mask", "input_ids"]')),
        # eval() on the caller's model, not on a copy
        "caller's model switched to eval": edit(("copy.deepcopy(model).cpu().eval()", "model.cpu().eval()")),
        # exported into the working folder, then copied: a file left behind
        "file left in the working folder": edit(("torch.onnx.export(model, (ids, mask), str(path),",
                                                 "torch.onnx.export(model, (ids, mask), 'model.onnx',"),
                                                ("    return path\n", "    shutil.copy('model.onnx', path)\n    return path\n")),
        # not quantized: the fp32 file copied to dst
        "copies instead of quantizing": edit((QUANT_CALL, "shutil.copy(src, dst)")),
        # quantized in place: dst never written
        "quantizes into src": edit((QUANT_CALL, "quantize_dynamic(str(src), str(src), weight_type=QuantType.QInt8)")),
    },
    "latency_ms": {
        # no warm-up calls
        "no warm-up": edit((WARMUP, "")),
        # the warm-up calls timed too
        "warm-up timed": edit((WARMUP, """    times = []
    for i in range(warmup):
        start = clock()
        predict(inputs[i % len(inputs)])
        times.append((clock() - start) * 1000)
"""), ("    times = []\n    for x in inputs:", "    for x in inputs:")),
        # seconds, not milliseconds
        "seconds": edit((TIMED, """        start = clock()
        predict(x)
        times.append(clock() - start)""")),
        # the 95th percentile by index, no interpolation
        "p95 by index": edit(('"p95": float(np.percentile(times, 95))', '"p95": float(sorted(times)[int(0.95 * len(times))])')),
        # time.perf_counter instead of the clock argument
        "ignores clock": edit((TIMED, """        start = time.perf_counter()
        predict(x)
        times.append((time.perf_counter() - start) * 1000)""")),
        # n as a float like the others
        "n as a float": edit(('"n": len(times)}', '"n": float(len(times))}')),
        # warm-up on the first input only
        "warm-up on inputs[0]": edit(("predict(inputs[i % len(inputs)])", "predict(inputs[0])")),
        # no check: np.percentile of nothing raises IndexError
        "no ValueError": edit(('    if not inputs:\n        raise ValueError("inputs is empty")\n', "")),
    },
}

ALTERNATIVES = {
    "export_classifier": {
        # opset 14, the dynamic axes given as lists of indices (ONNX names them), quantized per channel
        "opset 14, axes as index lists, per-channel INT8": EXPORT_HEAD + (
            "    m = copy.deepcopy(model).eval()\n"
            "    example = (torch.ones(1, 8, dtype=torch.long), torch.ones(1, 8, dtype=torch.long))\n"
            "    torch.onnx.export(m, example, path, input_names=['input_ids', 'attention_mask'],\n"
            "                      output_names=['logits'], opset_version=14, dynamo=False,\n"
            "                      dynamic_axes={'input_ids': [0, 1], 'attention_mask': [0, 1], 'logits': [0]})\n"
            "    return path\n"
            "\n\n"
            "def quantize_int8(src, dst):\n"
            "    from onnxruntime import quantization as q\n"
            "    q.quantize_dynamic(model_input=Path(src), model_output=Path(dst), per_channel=True,\n"
            "                       weight_type=q.QuantType.QInt8)\n"
            "    return dst\n"),
        # eval() on the model itself, its mode restored afterwards; a real report as the example
        "eval and restore, keyword arguments": EXPORT_HEAD + (
            "    was_training = model.training\n"
            "    model.eval()\n"
            "    try:\n"
            "        ids = torch.tensor([[101, 1200, 1300, 102]])\n"
            "        torch.onnx.export(model, args=(ids, torch.ones_like(ids)), f=str(path),\n"
            "                          input_names=['input_ids', 'attention_mask'], output_names=['logits'],\n"
            "                          dynamic_axes={'input_ids': {0: 'n', 1: 'len'}, 'attention_mask': {0: 'n', 1: 'len'},\n"
            "                                        'logits': {0: 'n'}}, dynamo=False)\n"
            "    finally:\n"
            "        model.train(was_training)\n"
            "    return path\n") + QUANTIZE.replace("    '''ONNX Runtime's dynamic INT8 quantization of the ONNX file src, written to dst.'''\n", ""),
    },
    "latency_ms": {
        "itertools.cycle for the warm-up, statistics by sorting": LAT_HEAD + (
            "    import itertools\n"
            "    xs = list(inputs)\n"
            "    if len(xs) == 0:\n"
            "        raise ValueError('no inputs')\n"
            "    for x in itertools.islice(itertools.cycle(xs), warmup):\n"
            "        predict(x)\n"
            "    ms = []\n"
            "    for x in xs:\n"
            "        t0 = clock()\n"
            "        predict(x)\n"
            "        t1 = clock()\n"
            "        ms.append(1000.0 * (t1 - t0))\n"
            "    s = np.sort(ms)\n"
            "    def pct(q):\n"
            "        pos = (len(s) - 1) * q / 100\n"
            "        lo = int(np.floor(pos)); hi = min(lo + 1, len(s) - 1)\n"
            "        return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))\n"
            "    return {'p50': pct(50), 'p95': pct(95), 'mean': float(sum(ms) / len(ms)), 'n': len(ms)}\n"),
    },
}
