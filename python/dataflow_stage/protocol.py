"""Messages between the engine and a worker: a 4-byte little-endian length, then JSON.

Engine to worker: ``{"op": "setup", "args": {...}}`` once, then
``{"op": "frame", "frame": "0:7", "seq": 7, "part": [0, 1], "in_size": N, "fields":
{...}}`` per frame, and ``{"op": "close"}`` at the end of the stream. A stage under ``batch`` gets
``{"op": "batch", "in_size": N, "frames": [{"frame": "0:7", "seq": 7, "part": [0, 1],
"fields": {...}}, ...]}`` instead, each frame's buffers at their own offsets.

Worker to engine: ``{"ok": true, "pid": P}`` after setup, then per frame ``{"ok":
true, "outputs": [{"port": null, "set": {...}, "drop": [...]}], "busy_s": S}`` (``S``: seconds in ``process``) or ``{"ok": false,
"error": "..."}``; per batch ``{"ok": true, "frames": [{"ok": true, "outputs": [...]} |
{"ok": false, "error": "..."}, ...], "busy_s": S}``, one result per frame in the
request's order, all outputs' buffers in the output segment at distinct offsets.

A field is ``{"t": "text" | "number" | "texts" | "record" | "rect", "v": value}`` or,
with its bytes in a shared-memory segment, ``{"t": "image", "h": H, "w": W, "c": C,
"offset": O}`` / ``{"t": "tensor", "shape": [D0, D1, ...], "offset": O}`` (float32,
little-endian, row-major) / ``{"t": "bytes", "offset": O, "len": N}``.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

import numpy as np

from .frame import check_image
from .shm import OutputSegment, aligned

#: Largest header accepted (pixels never travel in headers).
MAX_HEADER = 64 << 20


def read(stream: BinaryIO) -> dict[str, Any] | None:
    """The next message, or ``None`` at end of input."""
    head = stream.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack("<I", head)
    if n > MAX_HEADER:
        raise ValueError(f"header of {n} bytes from the engine; the stream is corrupt")
    body = stream.read(n)
    if len(body) < n:
        return None
    return json.loads(body)


def write(stream: BinaryIO, msg: dict[str, Any]) -> None:
    """Sends one message."""
    body = json.dumps(msg, separators=(",", ":")).encode()
    stream.write(struct.pack("<I", len(body)) + body)
    stream.flush()


def encode(name: str, value: Any, seg: OutputSegment, at: list[int], pending: list) -> dict[str, Any]:
    """The wire form of an output field; images and bytes are placed at ``at[0]``."""
    if isinstance(value, str):
        return {"t": "text", "v": value}
    if isinstance(value, (bool, int, float, np.integer, np.floating)):
        return {"t": "number", "v": float(value)}
    if isinstance(value, np.ndarray) and value.dtype == np.float32:
        arr = np.ascontiguousarray(value, dtype="<f4")
        pending.append((at[0], arr.reshape(-1).view(np.uint8)))
        f = {"t": "tensor", "shape": [int(d) for d in value.shape], "offset": at[0]}
        at[0] += aligned(arr.nbytes)
        return f
    if isinstance(value, np.ndarray):
        check_image(name, value)
        h, w = value.shape[:2]
        c = 1 if value.ndim == 2 else value.shape[2]
        pending.append((at[0], value))
        f = {"t": "image", "h": h, "w": w, "c": c, "offset": at[0]}
        at[0] += aligned(value.nbytes)
        return f
    if isinstance(value, (bytes, bytearray, memoryview)):
        arr = np.frombuffer(bytes(value), dtype=np.uint8)
        pending.append((at[0], arr))
        f = {"t": "bytes", "offset": at[0], "len": arr.nbytes}
        at[0] += aligned(arr.nbytes)
        return f
    if isinstance(value, tuple) and len(value) == 4:
        return {"t": "rect", "v": [int(v) for v in value]}
    if isinstance(value, list) and all(v is None or isinstance(v, str) for v in value):
        return {"t": "texts", "v": value}
    if isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
        return {"t": "record", "v": {str(k): float(v) for k, v in value.items()}}
    raise TypeError(f"field `{name}` is a {type(value).__name__}, which cannot cross to the engine; "
                    "use str, a number, a uint8 numpy image, a float32 numpy array, bytes, a list of str, "
                    "a dict of numbers or an (x, y, w, h) tuple")


def flush(seg: OutputSegment, end: int, pending: list) -> int:
    """Copies the placed buffers into the output segment; returns its size."""
    if pending:
        buf = seg.reserve(end)
        for off, arr in pending:
            np.frombuffer(buf, dtype=np.uint8, count=arr.nbytes, offset=off)[:] = arr.reshape(-1)
    return seg.size
