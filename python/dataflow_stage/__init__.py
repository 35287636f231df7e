"""Write a dataflow stage in Python.

A stage is a class deriving from :class:`Stage`; the engine runs one worker process per
replica (``kind = "python"`` in a graph) and hands it one frame at a time::

    import numpy as np
    from dataflow_stage import Stage

    class Brightness(Stage):
        def setup(self, args):
            self.scale = float(args.get("scale", 1.0))

        def process(self, frame):
            img = frame.image("image")          # HxWx3 uint8, read-only view
            frame.set_number("brightness", float(img.mean()) * self.scale)
            return frame

Under ``batch = { max, wait_ms }`` in the graph, a class that defines
``process_batch(frames)`` gets up to ``max`` frames per call (one model run per batch).

Try it without the engine: ``python -m dataflow_stage selftest my_stage.py Brightness``.
"""

from .frame import Frame
from .log import get_logger
from .stage import Stage

__all__ = ["Frame", "Stage", "get_logger"]
