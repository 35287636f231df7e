"""The two shared-memory segments of a worker: pixels cross without encoding.

The engine writes each frame's images, float32 tensors and byte fields into the *input* segment (a
file under ``/dev/shm``, grown when needed, never shrunk) and sends their offsets in
the frame's header; the worker maps it read-only and wraps numpy views around it. The
worker writes the images it returns into the *output* segment, growing it itself, and
the engine reads them back at the offsets of the reply.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np

#: Every buffer starts on a 64-byte boundary (cache lines; aligned numpy views).
ALIGN = 64


def aligned(n: int) -> int:
    """``n`` rounded up to :data:`ALIGN`."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


class InputSegment:
    """The engine-written segment, mapped read-only."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._map: mmap.mmap | None = None
        self._size = 0

    def view(self, size: int) -> memoryview | mmap.mmap:
        """The mapping, remapped when the engine has grown the file to ``size``."""
        if size > self._size or self._map is None:
            # Views handed out earlier keep the old mapping alive; it is not closed.
            self._map = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ)
            self._size = size
        return self._map

    def decode(self, fields: dict[str, Any], size: int) -> dict[str, Any]:
        """Field values from a frame header (images and tensors as read-only numpy views)."""
        out: dict[str, Any] = {}
        buf = self.view(size) if size > 0 else None
        for name, f in fields.items():
            t = f["t"]
            if t == "image":
                h, w, c = f["h"], f["w"], f["c"]
                arr = np.frombuffer(buf, dtype=np.uint8, count=h * w * c, offset=f["offset"])
                out[name] = arr.reshape((h, w) if c == 1 else (h, w, c))
            elif t == "tensor":
                shape = tuple(f["shape"])
                count = int(np.prod(shape, dtype=np.int64))
                if count == 0:
                    out[name] = np.zeros(shape, dtype=np.float32)
                else:
                    arr = np.frombuffer(buf, dtype="<f4", count=count, offset=f["offset"])
                    out[name] = arr.reshape(shape)
            elif t == "bytes":
                # A read-only view, no copy; bytes(v) keeps a copy past this frame.
                out[name] = memoryview(buf)[f["offset"]:f["offset"] + f["len"]] if f["len"] else b""
            elif t == "rect":
                out[name] = tuple(f["v"])
            else:
                out[name] = f["v"]
        return out


class OutputSegment:
    """The worker-written segment, grown by the worker."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR)
        self._map: mmap.mmap | None = None
        self.size = os.fstat(self._fd).st_size

    def reserve(self, need: int) -> mmap.mmap:
        """A writable mapping of at least ``need`` bytes."""
        if need > self.size:
            self.size = max(need, 2 * self.size, 1 << 16)
            os.ftruncate(self._fd, self.size)
            self._map = None
        if self._map is None:
            self._map = mmap.mmap(self._fd, self.size, access=mmap.ACCESS_WRITE)
        return self._map
