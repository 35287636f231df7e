"""Logging that lands in the engine's log with the stage and the frame.

Records go to the worker's stderr as ``DFS<TAB>LEVEL<TAB>FRAME<TAB>message`` lines;
the engine reads them and logs them (tracing) with its own ``stage`` field.
"""

from __future__ import annotations

import logging
import sys

#: Frame being processed ("-" between frames); set by the worker loop.
current_frame = "-"

_NAME = "dataflow_stage"


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", " | ")
        return f"DFS\t{record.levelname}\t{current_frame}\t{text}"


def get_logger() -> logging.Logger:
    """The stage's logger (INFO and above reach the engine)."""
    log = logging.getLogger(_NAME)
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(_Format("%(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log
