"""The environment every notebook runs in: device, seeds, quiet libraries, grading mode.

Each notebook starts with ``device = bertlab.env.setup()``: it picks the GPU when
there is one (never required), seeds every generator, and silences library
warnings that would otherwise land on stderr (nbgrader scores a test cell that
writes to stderr as 0). :func:`make_accelerator` places training on that device,
or on every GPU of ``accelerate launch``.
"""
from __future__ import annotations

import logging
import os
import platform
import random
import warnings
from importlib.metadata import PackageNotFoundError, version

#: Packages whose versions the environment check reports.
PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "scikit-learn",
            "nbgrader", "jupyterlab", "onnxruntime")


def is_grading() -> bool:
    """True while nbgrader validates or autogrades (it sets NBGRADER_EXECUTION).

    Notebooks skip or shrink training and plotting cells then, so a class grades fast.
    """
    return bool(os.environ.get("NBGRADER_EXECUTION"))


def get_device(prefer: str | None = None):
    """``torch.device``: ``prefer`` or $BERTLAB_DEVICE if set, else CUDA, else MPS, else CPU."""
    import torch

    prefer = prefer or os.environ.get("BERTLAB_DEVICE")
    if prefer:
        if not isinstance(prefer, str):
            raise TypeError(f"prefer must be a device string like 'cpu' or 'cuda', got {type(prefer).__name__}")
        dev = torch.device(prefer)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"prefer={prefer!r} but torch sees no CUDA device; use 'cpu' or unset BERTLAB_DEVICE")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and GPU) for reproducible runs."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def quiet() -> None:
    """Silence library warnings and info logs that would reach stderr."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("transformers", "accelerate", "torch", "onnxruntime", "matplotlib"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # transformers is optional for notebook 00's first cells
        pass


def make_accelerator(mixed_precision: str = "auto", device=None):
    """An ``accelerate.Accelerator`` on ``device`` (default: ``bertlab.env.get_device()``).

    ``mixed_precision="auto"``: bf16 (fp16 where bf16 is missing) on a GPU, none on a CPU.
    Under ``accelerate launch`` it runs one process per GPU, and each batch of the loader is
    split among them (``split_batches``): ``TrainConfig.batch_size`` stays the batch of one
    optimizer step, so the steps, the schedule and the results do not depend on how many
    processes share the work (the batch size must then be a multiple of their number, and a loader
    needs a ``batch_size``).
    """
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    device = torch.device(device) if device is not None else get_device()
    if mixed_precision == "auto":
        gpu = device.type == "cuda"
        mixed_precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if gpu else "no"
    # Accelerate keeps one state per process and refuses an Accelerator with another precision (or device) than
    # the first one's; a notebook may train with mixed precision and without (notebook 12 does, on a GPU).
    shared = AcceleratorState._shared_state
    on_cpu = device.type == "cpu"
    if shared and (shared.get("_mixed_precision") != mixed_precision or on_cpu != (shared["device"].type == "cpu")):
        AcceleratorState._reset_state()
    # The [CLS] head leaves the encoder's pooler unused; DDP must be told, or it waits for its gradients.
    loaders = DataLoaderConfiguration()
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=on_cpu, dataloader_config=loaders,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    # Split each batch among the processes; on one there is nothing to split (and accelerate would ask
    # every loader for a batch_size, which a loader of ready-made batches has not).
    loaders.split_batches = accelerator.num_processes > 1
    return accelerator


def setup(seed: int = 0, device: str | None = None):
    """Quiet the libraries, seed everything and return the device to use."""
    quiet()
    seed_everything(seed)
    return get_device(device)


def versions() -> dict[str, str]:
    """Installed version of Python and of each package in :data:`PACKAGES`."""
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def describe_device(dev) -> str:
    """One line: the device and, on a CPU, how many threads torch uses."""
    import torch

    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return f"{dev.type} ({torch.get_num_threads()} threads)"


def cpu_bf16() -> str:
    """The CPU's instructions for bf16 matrix products, as PyTorch detects them: ``"AMX"`` (recent Xeons),
    ``"AVX512-BF16"``, or ``"none"`` (then bf16 products are computed by converting to fp32)."""
    import torch

    cpu = torch.cpu  # the checks are private in torch 2.x; a missing one counts as "not there"
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX"
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512-BF16"
    return "none"
