"""Mutants of 09-deployment (see bertlab/instructor/mutants/__init__.py)."""
from bertlab.instructor.mutants import edit

SIZE_HEAD = """def size_mb(obj):
    '''Size on disk in MB (2**20 bytes) of a file, or of a model's state_dict saved with torch.save.'''
"""
FILE = "return os.path.getsize(obj) / 2**20"

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
    "size_mb": {
        # MB of 10**6 bytes
        "decimal megabytes": edit((FILE, "return os.path.getsize(obj) / 1e6"),
                                  ("return os.path.getsize(path) / 2**20", "return os.path.getsize(path) / 1e6")),
        # whole megabytes
        "integer division": edit((FILE, "return os.path.getsize(obj) // 2**20")),
        # a str path only: a pathlib.Path is taken for a model
        "str paths only": edit(("if isinstance(obj, (str, os.PathLike)):", "if isinstance(obj, str):")),
        # 4 bytes per parameter, not the saved file
        "4 bytes per parameter": SIZE_HEAD + (
            "    if isinstance(obj, (str, os.PathLike)):\n"
            "        return os.path.getsize(obj) / 2**20\n"
            "    return sum(p.numel() for p in obj.parameters()) * 4 / 2**20\n"),
        # rounded for display: 2 decimals
        "rounded to 2 decimals": edit((FILE, "return round(os.path.getsize(obj) / 2**20, 2)"),
                                      ("return os.path.getsize(path) / 2**20", "return round(os.path.getsize(path) / 2**20, 2)")),
        # a file left behind in the working folder
        "file left in the working folder": SIZE_HEAD + (
            "    if isinstance(obj, (str, os.PathLike)):\n"
            "        return os.path.getsize(obj) / 2**20\n"
            "    torch.save(obj.state_dict(), 'model.pt')\n"
            "    return os.path.getsize('model.pt') / 2**20\n"),
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
    "size_mb": {
        "pathlib and an in-memory buffer": SIZE_HEAD + (
            "    import io\n"
            "    if isinstance(obj, (str, Path)):\n"
            "        return Path(obj).stat().st_size / (1024 * 1024)\n"
            "    with tempfile.NamedTemporaryFile(suffix='.pt') as f:\n"
            "        torch.save(obj.state_dict(), f.name)\n"
            "        return float(os.stat(f.name).st_size) / 1024 ** 2\n"),
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
