"""The worker process the engine starts for each replica of a ``python`` stage.

    python -m dataflow_stage.worker (--script FILE | --module NAME) --class NAME \
        --shm-in PATH --shm-out PATH --parent-pid PID

Protocol messages arrive on stdin and replies leave on stdout (see ``protocol``); the
stage's own prints are sent to stderr, which the engine logs. The worker dies with the
engine (``PR_SET_PDEATHSIG``), ignores Ctrl-C (the engine drains the stream and closes
it), and returns after ``close`` or when its stdin closes.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import importlib.util
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from . import log, protocol
from .frame import Frame
from .shm import InputSegment, OutputSegment

#: Lines of a traceback kept in the error text (the end: where it was raised).
TRACEBACK_LINES = 8
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Asks the kernel to kill this process when the engine's thread that started it ends."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the engine still kills the worker when the stage ends
    if parent and os.getppid() != parent:
        sys.exit(0)  # the engine died before prctl took effect


def load_module(script: str):
    """Runs a script file as a module (its folder goes on ``sys.path``); cached by path."""
    path = Path(script).resolve()
    for mod in sys.modules.values():
        if getattr(mod, "__file__", None) == str(path):
            return mod
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod
    spec.loader.exec_module(mod)
    return mod


def load_class(script: str | None, module: str | None, name: str) -> type:
    """The stage class from a script file or an importable module."""
    mod = load_module(script) if script else importlib.import_module(str(module))
    cls = getattr(mod, name, None)
    if not isinstance(cls, type):
        raise ImportError(f"{script or module} has no class `{name}`")
    return cls


def error_text(e: BaseException) -> str:
    """The last lines of the traceback of ``e``."""
    lines = "".join(traceback.format_exception(e)).rstrip().splitlines()
    return "\n".join(lines[-TRACEBACK_LINES:])


def results(returned: Any, frame: Frame, inputs: dict[str, Any], seg: OutputSegment) -> dict[str, Any]:
    """The reply for what ``process`` returned."""
    frames = [] if returned is None else returned if isinstance(returned, list) else [returned]
    at, pending, outputs = [0], [], []
    for f in frames:
        if not isinstance(f, Frame):
            raise TypeError(f"process returned a {type(f).__name__}; return a Frame, a list of Frames or None")
        changed = {n: protocol.encode(n, v, seg, at, pending)
                   for n, v in f.fields.items() if not (n in inputs and inputs[n] is v)}
        dropped = [n for n in inputs if n not in f.fields]
        outputs.append({"port": f.port, "set": changed, "drop": dropped})
    size = protocol.flush(seg, at[0], pending)
    return {"ok": True, "outputs": outputs, "out_size": size}


def serve(stage: Any, rx, tx, seg_in: InputSegment, seg_out: OutputSegment) -> None:
    """Answers frames until ``close`` or end of input."""
    while True:
        msg = protocol.read(rx)
        if msg is None or msg.get("op") == "close":
            break
        log.current_frame = msg["frame"]
        try:
            inputs = seg_in.decode(msg["fields"], msg["in_size"])
            frame = Frame(msg["frame"], inputs, msg["seq"], tuple(msg["part"]))
            t0 = time.perf_counter()
            returned = stage.process(frame)
            busy = time.perf_counter() - t0
            reply = results(returned, frame, inputs, seg_out)
            reply["busy_s"] = busy
        except Exception as e:  # noqa: BLE001 - any failure fails this frame only
            reply = {"ok": False, "error": error_text(e)}
        log.current_frame = "-"
        protocol.write(tx, reply)


def main(argv: list[str] | None = None) -> int:
    """Runs the worker; returns its exit status."""
    p = argparse.ArgumentParser(prog="python -m dataflow_stage.worker")
    p.add_argument("--script")
    p.add_argument("--module")
    p.add_argument("--class", dest="cls", required=True)
    p.add_argument("--shm-in", required=True)
    p.add_argument("--shm-out", required=True)
    p.add_argument("--parent-pid", type=int, default=0)
    a = p.parse_args(argv)
    die_with_parent(a.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol owns the original stdin/stdout; the stage's prints go to stderr.
    rx = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
    tx = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Opened before the ready reply: the engine then unlinks both files, so that nothing
    # is left under /dev/shm even if the engine is killed.
    seg_in, seg_out = InputSegment(a.shm_in), OutputSegment(a.shm_out)
    setup = protocol.read(rx)
    if setup is None:
        return 0
    try:
        stage = load_class(a.script, a.module, a.cls)()
        stage.setup(setup.get("args", {}))
    except Exception as e:  # noqa: BLE001 - reported to the engine, which refuses to start
        protocol.write(tx, {"ok": False, "error": error_text(e)})
        return 1
    protocol.write(tx, {"ok": True, "pid": os.getpid()})
    try:
        serve(stage, rx, tx, seg_in, seg_out)
    finally:
        stage.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
