"""Helpers shared by the PyTorch stages of ``graphs/multisc-torch.toml``.

``caption.py`` (LLaVA), ``correct.py`` (BART) and ``reconstruct.py`` (Stable Diffusion 1.5 +
IP-Adapter) import this module by name: the worker puts a script's folder on ``sys.path``.
The heavy packages are imported in each stage's ``setup``, so a missing one is reported there
with the command that installs it.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

SETUP_HINT = "run scripts/setup-torch and point the stage's `python` at .venv-torch/bin/python"


def need(module: str):
    """Imports ``module``; a missing one raises ImportError naming the fix."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"the PyTorch stages need `{module}` ({e}); {SETUP_HINT}") from e


def quiet_progress() -> None:
    """No download or weight-loading progress bars: the worker's stderr lands in the engine's log."""
    for name in ("transformers", "diffusers"):
        try:
            importlib.import_module(f"{name}.utils.logging").disable_progress_bar()
        except ImportError:
            pass


def device_and_dtype(args: dict[str, Any]):
    """``args.device`` (``"auto"``: ``cuda`` when available, else ``cpu``) and ``args.dtype``
    (``"auto"``: float16 on a GPU, float32 on the CPU; or ``"float32"``, ``"float16"``,
    ``"bfloat16"``). ``args.threads``, when given, caps torch's CPU threads in this worker (by
    default torch takes every core, and several workers on a small machine then contend)."""
    torch = need("torch")
    quiet_progress()
    if args.get("threads") is not None:
        torch.set_num_threads(max(1, int(args["threads"])))
    device = str(args.get("device", "auto"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    name = str(args.get("dtype", "auto"))
    if name == "auto":
        name = "float32" if device == "cpu" else "float16"
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"args.dtype = {name!r} is not a torch dtype; use float32, float16 or bfloat16")
    return device, dtype


def on_white(arr: np.ndarray) -> np.ndarray:
    """An RGB copy of a uint8 image: gray is repeated, RGBA is flattened on white (as
    ``actors/src/reconstruct.rs`` makes the image prompt)."""
    a = np.asarray(arr)
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    if a.shape[2] == 3:
        return a.copy()
    alpha = a[:, :, 3:4].astype(np.uint16)
    mixed = (a[:, :, :3].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
    return mixed.astype(np.uint8)


def to_pil(arr: np.ndarray):
    """A PIL RGB image of a uint8 array (copied: input arrays are views of shared memory)."""
    image = need("PIL.Image")
    return image.fromarray(on_white(arr), "RGB")


def frame_seed(seed: int, frame) -> int:
    """A noise seed from ``args.seed``, the frame's stream and sequence number, and its part:
    the same frame gets the same noise whichever replica draws it."""
    stream = int(frame.id.split(":", 1)[0]) if ":" in frame.id and frame.id.split(":", 1)[0].isdigit() else 0
    value = (seed * 0x9E3779B1 + frame.seq * 0x85EBCA77 + frame.part[0] * 0xC2B2AE3D + (stream << 40))
    return value % (2**63)
