"""The model cache: keyed by configuration, written atomically."""
import pytest
import torch

from bertlab import cache


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))


def test_key_depends_on_the_configuration_not_its_order():
    assert cache.key("head", {"lr": 1e-3, "steps": 10}) == cache.key("head", {"steps": 10, "lr": 1e-3})
    assert cache.key("head", {"lr": 1e-3}) != cache.key("head", {"lr": 2e-3})


def test_builds_once_then_reuses(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.arange(6.0).reshape(2, 3)}, {"loss": 0.5}

    s1, m1, hit1 = cache.cached_state("toy", {"a": 1}, build)
    s2, m2, hit2 = cache.cached_state("toy", {"a": 1}, build)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert torch.equal(s1["w"], s2["w"]) and m2 == {"loss": 0.5, "config": {"a": 1}}
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == [], "temporary files left behind"


def test_failed_build_leaves_no_entry(tmp_path):
    def build():
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cache.cached_state("toy", {"a": 2}, build)
    assert not cache.path_for("toy", {"a": 2}).exists()


def test_bad_arguments():
    with pytest.raises(ValueError, match="name must be"):
        cache.key("no spaces please", {})
    with pytest.raises(TypeError, match="config must be a dict"):
        cache.key("head", [1, 2])


def test_entries_are_readable_by_others_as_the_umask_allows(tmp_path):
    import os

    path = cache.save_state({"w": torch.zeros(2)}, tmp_path / "x.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
