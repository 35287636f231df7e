"""``python -m dataflow_stage selftest SCRIPT [CLASS]``: runs a stage on a generated frame.

Feeds one test frame (a 64x48 RGB gradient ``image``, a ``text`` and a ``number``)
through ``setup``, ``process`` and ``close`` without the engine, and prints what came
out. CLASS may be left out when the script defines one subclass of ``Stage``. Exit
status 0 when the stage ran, 1 when it raised (the traceback is printed).
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


def test_frame(width: int, height: int) -> Frame:
    """The generated frame."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                    np.full_like(x, 128)], axis=-1).astype(np.uint8)
    img.flags.writeable = False  # like the engine's shared-memory views
    return Frame("0:0", {"image": img, "text": "a test frame", "number": 1.0})


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
        out = stage.process(test_frame(a.width, a.height))
        stage.close()
    except Exception:  # noqa: BLE001 - shown to the user
        traceback.print_exc()
        return 1
    frames = [] if out is None else out if isinstance(out, list) else [out]
    print(f"{a.script}:{a.cls}: {len(frames)} frame(s) out")
    for f in frames:
        print(f"  frame {f.id} port {f.port or '(first)'}")
        for name, v in sorted(f.fields.items()):
            print(f"    {name}: {describe(v)}")
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
    a = p.parse_args(argv)
    return selftest(a)


if __name__ == "__main__":
    sys.exit(main())
