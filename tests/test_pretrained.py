"""The checkpoint lookup, the BERTLAB_MODEL override and the offline errors."""
import os
import subprocess
import sys
import urllib.request

import pytest
import torch

from bertlab import pretrained
from bertlab.pretrained import CheckpointNotFoundError


def test_default_folder_holds_the_checkpoint():
    folder = pretrained.default_model_dir()
    for name in ("config.json", "vocab.txt", "model.safetensors", "tokenizer.json"):
        assert (folder / name).is_file(), f"{name} missing from {folder}"
    assert pretrained.model_name_or_dir() == str(folder)
    assert pretrained.is_default(pretrained.model_name_or_dir())


def test_default_loads_offline_with_the_real_vocabulary():
    tok = pretrained.load_tokenizer()
    assert len(tok) == pretrained.DEFAULT_VOCAB_SIZE
    assert tok.tokenize("Electromigration on VDD_CORE") == ["electro", "##mi", "##gration", "on", "v", "##dd", "_", "core"]
    enc = pretrained.load_encoder()
    assert not enc.training
    cfg = enc.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (6, 384, 12)
    n = sum(p.numel() for p in enc.parameters())
    assert 22_000_000 < n < 23_000_000, n
    with torch.no_grad():
        out = enc(**tok(["VDD droop at 85C"], return_tensors="pt"))
    assert out.last_hidden_state.shape[-1] == 384
    assert torch.isfinite(out.last_hidden_state).all()


def _copy_checkpoint(dst):
    src = pretrained.default_model_dir()
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).symlink_to(f)
    return dst


def test_override_with_a_local_folder(tmp_path, monkeypatch):
    folder = _copy_checkpoint(tmp_path / "my-model")
    monkeypatch.setenv(pretrained.ENV_VAR, str(folder))
    assert pretrained.model_name_or_dir() == str(folder.resolve())
    assert not pretrained.is_default(pretrained.model_name_or_dir())
    assert len(pretrained.load_tokenizer()) == pretrained.DEFAULT_VOCAB_SIZE
    # An explicit argument wins over the environment variable.
    assert pretrained.model_name_or_dir(pretrained.default_model_dir()) == str(pretrained.default_model_dir())


def test_empty_override_means_the_default(monkeypatch):
    monkeypatch.setenv(pretrained.ENV_VAR, "")
    assert pretrained.is_default(pretrained.model_name_or_dir())


@pytest.mark.parametrize("bad, message", [
    ("./no/such/folder", "does not exist"),
    ("/tmp/definitely-not-a-bertlab-model", "does not exist"),
])
def test_override_with_a_missing_folder_names_it(monkeypatch, bad, message):
    monkeypatch.setenv(pretrained.ENV_VAR, bad)
    with pytest.raises(CheckpointNotFoundError, match=message) as err:
        pretrained.model_name_or_dir()
    assert "no/such/folder" in str(err.value) or "definitely-not" in str(err.value)


def test_override_with_a_folder_that_is_not_a_checkpoint(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("hello")
    monkeypatch.setenv(pretrained.ENV_VAR, str(tmp_path))
    with pytest.raises(CheckpointNotFoundError, match="no config.json"):
        pretrained.model_name_or_dir()
    monkeypatch.setenv(pretrained.ENV_VAR, str(tmp_path / "notes.txt"))
    with pytest.raises(CheckpointNotFoundError, match="is a file"):
        pretrained.model_name_or_dir()


def test_wrong_type_is_rejected():
    with pytest.raises(TypeError, match="name must be a str or path"):
        pretrained.model_name_or_dir(42)


def test_hub_id_offline_says_how_to_use_the_shipped_model(monkeypatch):
    monkeypatch.setenv(pretrained.ENV_VAR, "bert-base-uncased")
    assert pretrained.model_name_or_dir() == "bert-base-uncased"
    with pytest.raises(CheckpointNotFoundError) as err:
        pretrained.load_tokenizer()
    msg = str(err.value)
    assert "bert-base-uncased" in msg and "not in the local cache" in msg
    assert "unset BERTLAB_MODEL" in msg and str(pretrained.default_model_dir()) in msg


@pytest.mark.network_attempt
def test_hub_id_without_network_fails_fast_with_a_clear_error(monkeypatch):
    # No HF_HUB_OFFLINE: the loader tries the hub, the blocked network refuses at once.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(pretrained.ENV_VAR, "bert-base-uncased")
    with pytest.raises(CheckpointNotFoundError, match="could not be reached"):
        pretrained.load_encoder()


@pytest.mark.network_attempt
def test_network_is_blocked_here_and_in_subprocesses():
    with pytest.raises(OSError, match="network access is blocked"):
        urllib.request.urlopen("http://93.184.216.34/", timeout=5)
    code = ("import urllib.request\n"
            "try:\n    urllib.request.urlopen('http://example.com/', timeout=5)\n"
            "except OSError as e:\n    print('blocked' if 'blocked' in str(e) else repr(e))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=60)
    assert out.stdout.strip() == "blocked", out.stdout + out.stderr
