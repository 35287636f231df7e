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
from .stage import Stage

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


def as_list(returned: Any, what: str) -> list[Frame]:
    """What ``process`` or ``process_batch`` returned, as a list of frames."""
    frames = [] if returned is None else returned if isinstance(returned, list) else [returned]
    for f in frames:
        if not isinstance(f, Frame):
            raise TypeError(f"{what} returned a {type(f).__name__}; return a Frame, a list of Frames or None")
    return frames


def encode_outputs(frames: list[Frame], inputs: dict[str, Any], seg: OutputSegment, at: list[int],
                   pending: list) -> list[dict[str, Any]]:
    """The wire form of one input's output frames (buffers placed from ``at[0]`` on)."""
    outputs = []
    for f in frames:
        changed = {n: protocol.encode(n, v, seg, at, pending)
                   for n, v in f.fields.items() if not (n in inputs and inputs[n] is v)}
        dropped = [n for n in inputs if n not in f.fields]
        outputs.append({"port": f.port, "set": changed, "drop": dropped})
    return outputs


def results(returned: Any, frame: Frame, inputs: dict[str, Any], seg: OutputSegment) -> dict[str, Any]:
    """The reply for what ``process`` returned."""
    at, pending = [0], []
    outputs = encode_outputs(as_list(returned, "process"), inputs, seg, at, pending)
    size = protocol.flush(seg, at[0], pending)
    return {"ok": True, "outputs": outputs, "out_size": size}


def defines_batch(stage: Any) -> bool:
    """Whether the stage's class has its own ``process_batch``."""
    return type(stage).process_batch is not Stage.process_batch


def assign(returned: Any, frames: list[Frame]) -> list[list[Frame]]:
    """Each input frame's outputs among what ``process_batch(frames)`` returned: an output
    belongs to the input it is, else to the one input with its id and part. Raises for
    an output that matches no input or several."""
    out = as_list(returned, "process_batch")
    each: list[list[Frame]] = [[] for _ in frames]
    if len(frames) == 1:
        each[0] = out
        return each
    by_object = {id(f): i for i, f in enumerate(frames)}
    by_id: dict[tuple, list[int]] = {}
    for i, f in enumerate(frames):
        by_id.setdefault((f.id, tuple(f.part)), []).append(i)
    for o in out:
        i = by_object.get(id(o))
        if i is None:
            match = by_id.get((o.id, tuple(o.part)), [])
            if len(match) != 1:
                ids = ", ".join(f.id for f in frames)
                why = "is not in the batch" if not match else f"matches {len(match)} frames of the batch"
                raise ValueError(f"process_batch returned frame {o.id}, which {why} ({ids}); "
                                 "return the input Frame objects or frames made with frame.derive()")
            i = match[0]
        each[i].append(o)
    return each


def call_one(stage: Any, frame: Frame, batched: bool) -> list[Frame] | BaseException:
    """One frame through ``process`` (or ``process_batch([frame])``): its outputs or its exception."""
    log.current_frame = frame.id
    try:
        if batched:
            return assign(stage.process_batch([frame]), [frame])[0]
        return as_list(stage.process(frame), "process")
    except Exception as e:  # noqa: BLE001 - fails this frame only
        return e


def call_batch(stage: Any, fresh) -> list[list[Frame] | BaseException]:
    """Each frame's outputs or exception: one ``process_batch`` call when the class
    defines it (if it raises, its frames again one at a time, so that only the frame
    that raises fails), else ``process`` per frame. ``fresh()`` makes the input frames."""
    frames = fresh()
    if not defines_batch(stage):
        return [call_one(stage, f, False) for f in frames]
    if len(frames) > 1:
        log.current_frame = ",".join(f.id for f in frames)
        try:
            return list(assign(stage.process_batch(list(frames)), frames))
        except Exception as e:  # noqa: BLE001 - retried frame by frame below
            log.get_logger().warning("process_batch raised on a batch of %d frames (%s: %s); calling it "
                                     "again for each frame alone", len(frames), type(e).__name__, e)
            frames = fresh()  # the failed call may have changed the frames
    return [call_one(stage, f, True) for f in frames]


def serve_batch(stage: Any, msg: dict[str, Any], seg_in: InputSegment, seg_out: OutputSegment) -> dict[str, Any]:
    """The reply to a batch request: one result per frame, in the request's order."""
    heads = msg["frames"]
    inputs = [seg_in.decode(h["fields"], msg["in_size"]) for h in heads]

    def fresh() -> list[Frame]:
        return [Frame(h["frame"], fields, h["seq"], tuple(h["part"])) for h, fields in zip(heads, inputs)]

    t0 = time.perf_counter()
    each = call_batch(stage, fresh)
    busy = time.perf_counter() - t0
    at, pending, replies = [0], [], []
    for got, fields in zip(each, inputs):
        if isinstance(got, BaseException):
            replies.append({"ok": False, "error": error_text(got)})
            continue
        try:
            replies.append({"ok": True, "outputs": encode_outputs(got, fields, seg_out, at, pending)})
        except Exception as e:  # noqa: BLE001 - fails this frame only
            replies.append({"ok": False, "error": error_text(e)})
    size = protocol.flush(seg_out, at[0], pending)
    return {"ok": True, "frames": replies, "busy_s": busy, "out_size": size}


def serve(stage: Any, rx, tx, seg_in: InputSegment, seg_out: OutputSegment) -> None:
    """Answers frames and batches until ``close`` or end of input."""
    while True:
        msg = protocol.read(rx)
        if msg is None or msg.get("op") == "close":
            break
        if msg.get("op") == "batch":
            try:
                reply = serve_batch(stage, msg, seg_in, seg_out)
            except Exception as e:  # noqa: BLE001 - fails the batch's frames, the worker goes on
                reply = {"ok": False, "error": error_text(e)}
            log.current_frame = "-"
            protocol.write(tx, reply)
            continue
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
