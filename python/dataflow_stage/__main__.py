"""``python -m dataflow_stage selftest SCRIPT [CLASS]``: runs a stage on a generated frame.

Feeds one test frame (a 64x48 RGB gradient ``image``, a ``text`` and a ``number``)
through ``setup``, ``process`` and ``close`` without the engine, and prints what came
out. With ``--batch N`` it feeds N such frames (ids ``0:0`` … ``0:N-1``, each image
shifted by its index) to ``process_batch`` in one call, as the engine does under
``batch = { max = N }``, and says which input each output belongs to (the worker's
rule: the input frame itself, or a frame with its id and part). CLASS may be left out
when the script defines one subclass of ``Stage``. Exit status 0 when the stage ran, 1
when it raised (the traceback is printed) or returned a frame that belongs to no input.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

import numpy as np

from .frame import Frame
from .stage import Stage
from .worker import load_class, load_module


def test_frame(width: int, height: int, k: int = 0) -> Frame:
    """The generated frame number ``k`` (its blue channel shifted by ``k``)."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                    np.full_like(x, (128 + 37 * k) % 256)], axis=-1).astype(np.uint8)
    img.flags.writeable = False  # like the engine's shared-memory views
    return Frame(f"0:{k}", {"image": img, "text": "a test frame", "number": float(k + 1)}, seq=k)


def owner(out: Frame, inputs: list[Frame]) -> Frame | None:
    """The input an output belongs to: itself, else the one with its id and part."""
    for f in inputs:
        if out is f:
            return f
    for f in inputs:
        if (out.id, out.part) == (f.id, f.part):
            return f
    return None


def describe(value) -> str:
    """One line about a field value."""
    if isinstance(value, np.ndarray):
        return f"array {value.shape} {value.dtype}"
    return repr(value) if len(repr(value)) < 200 else repr(value)[:197] + "..."


def selftest(a: argparse.Namespace) -> int:
    """Runs the stage on the test frame."""
    try:
        if a.cls is None:
            found = [v for v in vars(load_module(a.script)).values()
                     if isinstance(v, type) and issubclass(v, Stage) and v is not Stage]
            if len(found) != 1:
                print(f"{a.script} defines {len(found)} Stage subclasses; name the one to test", file=sys.stderr)
                return 2
            a.cls = found[0].__name__
        stage = load_class(a.script, None, a.cls)()
        stage.setup(json.loads(a.args))
        if a.batch is None:
            inputs = [test_frame(a.width, a.height)]
            out = stage.process(inputs[0])
        else:
            inputs = [test_frame(a.width, a.height, k) for k in range(a.batch)]
            out = stage.process_batch(inputs)
        stage.close()
    except Exception:  # noqa: BLE001 - shown to the user
        traceback.print_exc()
        return 1
    frames = [] if out is None else out if isinstance(out, list) else [out]
    print(f"{a.script}:{a.cls}: {len(inputs)} frame(s) in, {len(frames)} frame(s) out")
    orphans = 0
    for f in frames:
        of = owner(f, inputs)
        orphans += of is None
        belongs = f"input {of.id}" if of is not None else "NO INPUT (the engine would drop it)"
        print(f"  frame {f.id} port {f.port or '(first)'}, belongs to {belongs}")
        for name, v in sorted(f.fields.items()):
            print(f"    {name}: {describe(v)}")
    if orphans:
        print(f"{orphans} output frame(s) belong to no input: return the input frames, changed, "
              "or frames made with frame.derive()", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line of the package."""
    p = argparse.ArgumentParser(prog="dataflow-stage", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("selftest", help="run a stage on a generated frame, without the engine")
    s.add_argument("script")
    s.add_argument("cls", metavar="CLASS", nargs="?")
    s.add_argument("--args", default="{}", help="the graph's args, as JSON")
    s.add_argument("--width", type=int, default=64)
    s.add_argument("--height", type=int, default=48)
    s.add_argument("--batch", type=int, metavar="N",
                   help="feed N frames to process_batch in one call, as under batch = { max = N }")
    a = p.parse_args(argv)
    return selftest(a)


if __name__ == "__main__":
    sys.exit(main())
