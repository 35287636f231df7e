"""Helpers shared by the paper-tier export scripts (`fcn.py`, `llava.py`, `bart.py`, `sd_ip_adapter.py`,
`lpips.py`, `clip.py`).

Nothing here downloads anything. The tiny tokenizers of `--tiny-random` are trained
locally on `TINY_CORPUS` with the `tokenizers` library, with the special tokens of the
real checkpoints, so the Rust side reads a `tokenizer.json` of the same kind.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# A protobuf message cannot pass 2 GiB; a graph whose files pass this keeps its weights outside.
EXTERNAL_DATA_LIMIT = 2**31 - 2**24

# Sentences of the kind the captioner and the corrector see; enough for a few hundred BPE merges.
TINY_CORPUS = [
    "Relay a brief, clear account of the picture shown.",
    "A person in a white space suit stands in front of a flag.",
    "A cat with orange fur is lying on a blanket near the window.",
    "A cup of coffee sits on a saucer on a wooden table.",
    "A red motorbike is parked on the street beside a wall.",
    "A rocket stands on the launch pad under a clear blue sky.",
    "The picture shows a green field with trees and a small house.",
    "Two boats float on the calm water of the harbour at sunset.",
    "This part of the image shows the sky; it is bright and blue.",
    "The main object is in the upper left part of the image.",
    "There is a dog running on the grass with a ball in its mouth.",
    "A woman wearing a hat is smiling at the camera.",
    "The background is dark grey and the light comes from the right.",
    "teh cat sat on teh mat and the dgo barked at the postman",
    "speling mistakes are corected by the model before the imgae is rebuilt",
    "Numbers like 1, 2, 3, 10 and 2024 stay as they are.",
]


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (the tiny weights depend only on the seed)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def versions() -> dict:
    """Versions of everything that shaped an export, written next to it."""
    import onnx
    import onnxruntime
    import tokenizers
    import torch
    import transformers

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "tokenizers": tokenizers.__version__,
    }
    try:
        import torchvision

        out["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return out


def command_line() -> str:
    """The command that made an export, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


def write_json(path: Path, value) -> None:
    """Writes JSON with sorted keys and a final newline (stable diffs)."""
    # `default=str`: processor settings may hold enums (e.g. PIL resampling filters).
    path.write_text(json.dumps(value, indent=1, sort_keys=True, default=str) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def train_byte_level_bpe(vocab_size: int, specials: list[str], qwen_style: bool):
    """A small byte-level BPE tokenizer trained on `TINY_CORPUS`.

    `qwen_style`: Qwen2's pre-tokenizer (its split regex, then byte level without a prefix
    space), NFC normaliser, no post-processor. Otherwise BART's: byte level without a prefix
    space and the `<s> … </s>` (RoBERTa) post-processor.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    if qwen_style:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(
                    Regex(
                        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
                    ),
                    behavior="isolated",
                ),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_CORPUS * 4, trainer)
    if not qwen_style:
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), add_prefix_space=False
        )
    return tok


def ort_session(path: Path, threads: int = 1):
    """An onnxruntime CPU session with `threads` intra-op threads and one inter-op thread."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def check_onnx(path: Path) -> None:
    """Runs the ONNX checker (on the path, so weights in `<name>.onnx.data` are found) and prints
    the file's size."""
    import onnx

    onnx.checker.check_model(str(path))
    data = Path(str(path) + ".data")
    extra = f" + {os.path.getsize(data)} bytes in {data.name}" if data.is_file() else ""
    print(f"wrote {path} ({os.path.getsize(path)} bytes{extra})")


def add_external_data_flag(parser) -> None:
    """`--external-data`: every graph keeps its weights in `<name>.onnx.data` (forced; graphs past
    2 GiB always do)."""
    parser.add_argument(
        "--external-data", action="store_true",
        help="write each graph's weights to <name>.onnx.data next to it (automatic past 2 GiB)",
    )


@contextmanager
def onnx_target(path: Path, external: bool = False):
    """Where to point `torch.onnx.export` for the graph `path`: a path in a private temporary
    folder next to it. On exit the graph is moved to `path`; when it passes 2 GiB (torch then
    writes one loose file per tensor, named like `onnx__MatMul_123`, beside the graph) or
    `external` is set, its weights go to one file `<name>.onnx.data` next to `path`, which ONNX
    Runtime finds relative to the graph. Two graphs of one export therefore never share or
    overwrite a weight file, and stale files of an earlier export are removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.stem}-", dir=path.parent))
    try:
        yield tmp / path.name
        finish_onnx(tmp / path.name, path, external)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def finish_onnx(src: Path, dst: Path, external: bool) -> None:
    """Moves the exported graph `src` (and any loose tensor files beside it) to `dst`, as
    `onnx_target` describes."""
    import onnx

    data = dst.with_name(dst.name + ".data")
    for stale in (dst, data):
        stale.unlink(missing_ok=True)
    files = [f for f in src.parent.iterdir() if f.is_file()]
    loose = len(files) > 1  # torch wrote tensors beside the graph
    if not external and not loose and sum(f.stat().st_size for f in files) <= EXTERNAL_DATA_LIMIT:
        shutil.move(str(src), str(dst))
        return
    model = onnx.load(str(src), load_external_data=True)  # reads the loose files beside `src`
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024, convert_attribute=False)
    data.chmod(0o644)  # onnx creates it private; the export is shared like the graph
    print(f"wrote {data} ({data.stat().st_size} bytes of weights of {dst.name})")
