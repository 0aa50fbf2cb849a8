"""The package as a codebase to read: imports run one way, one training loop, no wrappers, lint clean."""
import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bertlab

PACKAGE = Path(bertlab.__file__).parent
ROOT = PACKAGE.parent
# bertlab.data holds tables; bertlab/instructor/mutants holds learners' (wrong) answers as data
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "data" not in p.relative_to(PACKAGE).parts[:1]
                 and "mutants" not in p.relative_to(PACKAGE).parts)
# The library: what a notebook's learner reads. It never reads the fab's data nor builds the course's models.
LIBRARY = ("args", "baselines", "benchmark", "cache", "check", "debugging", "deploy", "distill", "domain", "env",
           "family", "frozen", "model", "multitask", "plots", "pretrain_loop", "pretrained", "pretraining", "regression",
           "tokens", "train", "vocab")


def _name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["bertlab", *parts])


def _imports(path: Path) -> set[str]:
    """Every bertlab module ``path`` imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("bertlab")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bertlab") and node.level == 0:
            known = {_name(p) for p in MODULES} | {"bertlab.data"}
            for a in node.names:  # `from bertlab import train` imports the module bertlab.train
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return {m for m in out if m != "bertlab"}


def _graph() -> dict[str, set[str]]:
    return {_name(p): _imports(p) - {_name(p)} for p in MODULES}


def test_imports_have_no_cycle():
    graph = _graph()
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle (imports inside functions count): " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


# The label tables (task and class names) are the library's vocabulary; reports, corpora and splits
# are the course's data, read by bertlab.artifacts and bertlab.artifacts_pretraining only.
READS_REPORTS = ("generate_reports", "make_splits", "domain_corpus", "generate_report")


def _names_from_data(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bertlab.data"):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "bertlab" and any(a.name == "data" for a in node.names):
            out.add("*")
    return out


@pytest.mark.parametrize("module", LIBRARY)
def test_library_modules_do_not_read_the_course_data(module):
    imports = _imports(PACKAGE / f"{module}.py")
    assert not imports & {"bertlab.artifacts", "bertlab.artifacts_pretraining", "bertlab.cli"}, \
        f"bertlab.{module} imports the course's shared models"
    assert not any(m.startswith("bertlab.instructor") for m in imports), "instructor tools stay out of the library"
    reads = _names_from_data(PACKAGE / f"{module}.py") & {*READS_REPORTS, "*"}
    assert not reads, f"bertlab.{module} reads the fab's reports ({sorted(reads)}): that belongs in bertlab.artifacts"


def test_instructor_tools_are_apart_from_the_library():
    assert not (PACKAGE / "grading.py").exists() and not (PACKAGE / "course.py").exists()
    from bertlab.instructor import course, grading  # noqa: F401  (they import)

    config = (ROOT / "nbgrader_config.py").read_text()
    assert "bertlab.instructor.feedback.HideHiddenTests" in config


def test_one_training_loop():
    """Pre-training, fine-tuning, multi-task and distillation all train through train.fit."""
    from bertlab import distill, multitask, pretrain_loop, regression

    for module in (pretrain_loop, multitask, regression, distill):
        source = Path(module.__file__).read_text()
        assert "train.fit(" in source, f"{module.__name__} does not train through train.fit"
        for own in ("torch.optim.AdamW", "LambdaLR", ".backward("):
            assert own not in source, f"{module.__name__} has its own loop ({own})"


def test_no_wrappers_to_pack_several_outputs():
    from bertlab import distill, multitask

    for module, names in ((multitask, ("PackedLogits", "PackedLoss", "PackedMetrics", "split_logits")),
                          (distill, ("KDLoss",))):
        left = [n for n in names if hasattr(module, n)]
        assert not left, f"{module.__name__} still has {left}"


def test_argument_checks_live_in_one_helper():
    inline = re.compile(r"isinstance\((\w+(?:\.\w+)?), bool\) or not isinstance\(\1, (?:int|\(int, float\))\)")
    copies = {p.name: len(inline.findall(p.read_text())) for p in MODULES if p.name != "args.py"}
    assert not any(copies.values()), f"inline argument checks; use bertlab.args: { {k: v for k, v in copies.items() if v} }"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_read_in_one_sitting(path):
    name, lines = str(path.relative_to(PACKAGE)), len(path.read_text().splitlines())
    assert lines <= 420, f"bertlab/{name} has {lines} lines: split it by idea"


def test_the_package_init_is_a_map_of_the_modules():
    doc = bertlab.__doc__
    top = {_name(p).split(".")[1] for p in MODULES if _name(p) != "bertlab"} | {"data"}
    missing = sorted(m for m in top if f"``{m}``" not in doc)
    assert not missing, f"bertlab/__init__.py does not say what these modules are for: {missing}"


def test_lint_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    assert ruff, "ruff is missing: make setup installs it (constraints.txt pins it)"
    proc = subprocess.run([ruff, "check", "bertlab", "tests", "benchmarks", "nbgrader_config.py"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
