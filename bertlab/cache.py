"""The model cache: what one notebook trains, later notebooks reuse.

Entries are keyed by their configuration (a JSON-able dict), so a changed
configuration trains a new model instead of reusing a stale one. Files are written
to a temporary name and renamed into place, so notebooks running in parallel or in
any order never read half a file. The folder is ``$BERTLAB_CACHE`` if set, else
``.cache/`` in the course folder (git-ignored).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

ENV_VAR = "BERTLAB_CACHE"


def cache_dir() -> Path:
    """The cache folder (created if missing)."""
    folder = Path(os.environ.get(ENV_VAR) or Path(__file__).resolve().parent.parent / ".cache")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def key(name: str, config: dict) -> str:
    """``name-<hash of config>``: the file stem of a cache entry."""
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"name must be a short identifier like 'mlm-head', got {name!r}")
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict of JSON-able settings, got {type(config).__name__}")
    blob = json.dumps(config, sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def path_for(name: str, config: dict, suffix: str = ".safetensors") -> Path:
    return cache_dir() / (key(name, config) + suffix)


def save_state(state: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> Path:
    """Write a state dict as safetensors, atomically (temp file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, tmp, metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})
        # mkstemp makes the file private (0600); a cache shared on a JupyterHub must stay readable.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A state dict and its metadata from a safetensors file written by :func:`save_state`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        return {k: f.get_tensor(k) for k in f.keys()}, meta


def cached_state(name: str, config: dict, build: Callable[[], tuple[dict, dict]]) -> tuple[dict, dict, bool]:
    """The cached (state dict, metadata) for ``config``, building and saving it if missing.

    ``build()`` returns ``(state_dict, metadata)``; returns ``(state, metadata, hit)``.
    """
    path = path_for(name, config)
    if path.is_file():
        state, meta = load_state(path)
        return state, meta, True
    state, meta = build()
    save_state(state, path, {**meta, "config": config})
    return state, {**meta, "config": config}, False
