"""The base class of a Python stage."""

from __future__ import annotations

import logging
from typing import Any

from .log import get_logger


class Stage:
    """Base class of a Python stage: one instance per replica, in its own process.

    The engine calls :meth:`setup` once with the graph's ``args`` table before the
    source opens, :meth:`process` once per frame (one frame at a time) — or, when the
    graph gives the stage ``batch = { max, wait_ms }``, :meth:`process_batch` with up to
    ``max`` frames at once if the class defines it — and :meth:`close` at the end of
    the stream.
    """

    #: Logger whose records land in the engine's log with the stage and frame.
    log: logging.Logger

    def __init__(self) -> None:
        self.args: dict[str, Any] = {}
        self.log = get_logger()

    def setup(self, args: dict[str, Any]) -> None:
        """Loads models and reads ``args`` (the graph's ``args = { ... }``)."""
        self.args = args

    def process(self, frame):
        """Handles one frame.

        Return the frame (changed or not) to send it on, a list of frames to send
        several (each may name its output ``port``), or ``None`` to send nothing. An
        exception fails this frame only (class ``python`` in ``errors.jsonl``).
        """
        if type(self).process_batch is not Stage.process_batch:
            return self.process_batch([frame])
        raise NotImplementedError(f"{type(self).__name__} defines neither process nor process_batch")

    def process_batch(self, frames):
        """Handles a list of frames and returns a list of output frames.

        Without ``batch`` in the graph, ``frames`` has one element. Under ``batch = {
        max, wait_ms }`` the engine gathers up to ``max`` frames (waiting at most
        ``wait_ms`` after the first) and the worker gets them in one call; define this
        instead of (or beside) :meth:`process` to run a model once per batch.

        Return the output frames in any order: an output belongs to the input frame it
        is (return the input ``Frame`` objects, changed), else to the input with its id
        and part (frames made with ``frame.derive()``); an input with no output is
        dropped. If the call raises, the worker calls it again with each frame alone, so
        that only the frame that raises fails (class ``python``, with its traceback);
        the others go on. A class without its own ``process_batch`` gets
        :meth:`process` per frame instead.
        """
        out = []
        for f in frames:
            r = self.process(f)
            if r is None:
                continue
            out.extend(r if isinstance(r, list) else [r])
        return out

    def close(self) -> None:
        """Releases what :meth:`setup` took; called once at the end of the stream."""
