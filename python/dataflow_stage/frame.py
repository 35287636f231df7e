"""One frame as a Python stage sees it: an id and named fields.

Field values: ``str`` (texts), ``float`` (numbers), numpy ``uint8`` arrays (images:
HxWx3 RGB, HxWx4 RGBA, HxW gray or mask), numpy ``float32`` arrays of any shape
(tensors: an embedding, a feature map), ``bytes`` (inputs arrive as read-only
``memoryview`` of shared memory), ``list`` of ``str | None`` (texts
of several parts), ``dict`` of numbers (records), ``tuple`` of four ints (rectangles).
Input images, tensors and bytes are read-only views of shared memory that the next frame overwrites:
copy one (``img.copy()``) to keep it past :meth:`Stage.process`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Frame:
    """A frame: ``id`` (``"stream:seq"``), ``seq``, ``part`` and ``fields``."""

    def __init__(self, id: str, fields: dict[str, Any] | None = None, seq: int = 0,
                 part: tuple[int, int] = (0, 1), port: str | None = None) -> None:
        #: Frame id as the engine prints it (``"stream:seq"``).
        self.id = id
        #: Sequence number within the source's stream.
        self.seq = seq
        #: Which part of the frame this is: (index, count).
        self.part = part
        #: Named values (see the module doc for the types).
        self.fields: dict[str, Any] = dict(fields or {})
        #: Output port to send this frame on (``None``: the stage's first port).
        self.port = port

    @property
    def lost_inputs(self) -> int:
        """Parts that did not arrive in time (a stage with ``join_timeout_ms``; else 0)."""
        v = self.fields.get("lost_inputs", 0)
        return int(v) if isinstance(v, (int, float)) else 0

    def __repr__(self) -> str:
        return f"Frame({self.id}, {sorted(self.fields)})"

    def image(self, name: str = "image") -> np.ndarray:
        """The image field ``name`` (uint8, HxWxC or HxW); raises if absent."""
        v = self._get(name)
        if not isinstance(v, np.ndarray):
            raise TypeError(f"field `{name}` of frame {self.id} is {type(v).__name__}, not an image")
        return v

    def tensor(self, name: str) -> np.ndarray:
        """The float32 tensor field ``name`` (any shape); raises if absent."""
        v = self._get(name)
        if not isinstance(v, np.ndarray) or v.dtype != np.float32:
            kind = f"a {v.dtype} array" if isinstance(v, np.ndarray) else type(v).__name__
            raise TypeError(f"field `{name}` of frame {self.id} is {kind}, not a float32 tensor")
        return v

    def text(self, name: str = "text") -> str:
        """The text field ``name``; raises if absent."""
        v = self._get(name)
        if not isinstance(v, str):
            raise TypeError(f"field `{name}` of frame {self.id} is {type(v).__name__}, not a text")
        return v

    def number(self, name: str) -> float:
        """The number field ``name``; raises if absent."""
        v = self._get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"field `{name}` of frame {self.id} is {type(v).__name__}, not a number")
        return float(v)

    def set_text(self, name: str, value: str) -> "Frame":
        """Sets a text field; returns the frame."""
        self.fields[name] = str(value)
        return self

    def set_number(self, name: str, value: float) -> "Frame":
        """Sets a number field; returns the frame."""
        self.fields[name] = float(value)
        return self

    def set_image(self, name: str, value: np.ndarray) -> "Frame":
        """Sets an image (HxWx3 RGB, HxWx4 RGBA) or mask (HxW) field of uint8."""
        arr = np.asarray(value)
        check_image(name, arr)
        self.fields[name] = arr
        return self

    def set_mask(self, name: str, value: np.ndarray) -> "Frame":
        """Sets a mask field: HxW, uint8 (bool arrays become 0/255)."""
        arr = np.asarray(value)
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8) * 255
        if arr.ndim != 2:
            raise ValueError(f"mask `{name}` must be HxW, got shape {arr.shape}")
        return self.set_image(name, arr)

    def set_tensor(self, name: str, value: np.ndarray) -> "Frame":
        """Sets a float32 tensor field (any shape; other float types are converted)."""
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"tensor `{name}` must hold floats, got {arr.dtype}")
        self.fields[name] = arr.astype(np.float32, copy=False)
        return self

    def drop(self, name: str) -> "Frame":
        """Removes a field (it is not sent on)."""
        self.fields.pop(name, None)
        return self

    def derive(self, port: str | None = None, **fields: Any) -> "Frame":
        """A new frame with the same id and part carrying only ``fields``."""
        return Frame(self.id, fields, self.seq, self.part, port)

    def _get(self, name: str) -> Any:
        try:
            return self.fields[name]
        except KeyError:
            have = ", ".join(sorted(self.fields)) or "none"
            raise KeyError(f"frame {self.id} has no field `{name}` (it has: {have}); "
                           "list it in the stage's `requires` so validation checks the wiring") from None


def check_image(name: str, arr: np.ndarray) -> None:
    """Raises unless ``arr`` is a uint8 image the engine can carry."""
    if arr.dtype != np.uint8:
        raise TypeError(f"image `{name}` must be uint8, got {arr.dtype}; convert with "
                        "np.clip(a, 0, 255).astype(np.uint8), or, for a tensor, use float32 "
                        "(Frame.set_tensor)")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))):
        raise ValueError(f"image `{name}` must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
