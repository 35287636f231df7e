"""The plain-Python peer of ``bench/python-stage``: the same per-frame work without the engine.

For each frame: hand the buffer to a ``dataflow_stage.Frame`` (a read-only ``memoryview``
of the payload, or a read-only uint8 image view, as a worker gets them from shared
memory), call the stage's ``process``, and collect what it returned. The buffer is made
once, as the engine's ``synthetic`` source makes it once (``payload_bytes``,
``pattern = "flat"``), so neither side pays for generating frames. Prints one JSON line.

    PYTHONPATH=python python3 bench/python-stage-loop.py --script S --class C \\
        (--payload-bytes N | --width W --height H) --frames N [--args JSON]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from dataflow_stage.frame import Frame
from dataflow_stage.worker import load_class


def buffer(a: argparse.Namespace) -> dict:
    """The frame's field, made once."""
    if a.payload_bytes is not None:
        return {"payload": memoryview(bytes([0xA5]) * a.payload_bytes)}
    img = np.full((a.height, a.width, 3), 128, dtype=np.uint8)
    img.flags.writeable = False
    return {"image": img}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--script", required=True)
    p.add_argument("--class", dest="cls", required=True)
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--payload-bytes", type=int)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--args", default="{}")
    a = p.parse_args()
    stage = load_class(a.script, None, a.cls)()
    stage.setup(json.loads(a.args))
    fields = buffer(a)
    collected = []
    t0 = time.perf_counter()
    for i in range(a.frames):
        out = stage.process(Frame(f"0:{i}", fields, i))
        frames = [] if out is None else out if isinstance(out, list) else [out]
        collected.extend(f.fields for f in frames)
    dt = time.perf_counter() - t0
    stage.close()
    print(json.dumps({"frames": a.frames, "out": len(collected), "seconds": round(dt, 4),
                      "frames_per_s": round(a.frames / dt, 1), "us_per_frame": round(dt / a.frames * 1e6, 2)}))


if __name__ == "__main__":
    main()
