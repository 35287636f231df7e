"""A numpy captioner: names the dominant colours of each frame's image.

Used by ``graphs/examples/python-stage.toml``. Each pixel is assigned to the nearest of
a small palette; the caption names the colours covering at least ``min_share`` of the
image, most common first ("mostly blue with some green and white"). Adds ``text`` and
``colour_share`` (the share of the first colour, 0-1).

Try it without the engine::

    PYTHONPATH=python python3 -m dataflow_stage selftest stages/colour_histogram.py ColourHistogram
"""

import numpy as np

from dataflow_stage import Stage

PALETTE = {
    "black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128),
    "red": (200, 30, 30), "orange": (240, 140, 20), "yellow": (235, 220, 40),
    "green": (40, 160, 50), "cyan": (40, 200, 210), "blue": (30, 60, 200),
    "purple": (130, 40, 160), "pink": (240, 150, 190), "brown": (120, 70, 30),
}


class ColourHistogram(Stage):
    """Caption text from the image's dominant colours."""

    def setup(self, args):
        self.min_share = float(args.get("min_share", 0.1))
        self.step = int(args.get("step", 2))  # sample every n-th pixel in each direction
        self.names = list(PALETTE)
        self.colours = np.array([PALETTE[n] for n in self.names], dtype=np.int32)
        self.log.info("palette of %d colours, min_share %.2f", len(self.names), self.min_share)

    def process(self, frame):
        img = frame.image("image")
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        px = img[:: self.step, :: self.step, :3].reshape(-1, 3).astype(np.int32)
        dist = ((px[:, None, :] - self.colours[None, :, :]) ** 2).sum(axis=2)
        counts = np.bincount(dist.argmin(axis=1), minlength=len(self.names))
        share = counts / max(counts.sum(), 1)
        order = [i for i in np.argsort(-share) if share[i] >= self.min_share] or [int(share.argmax())]
        words = [self.names[i] for i in order]
        caption = "mostly " + words[0]
        if len(words) > 1:
            caption += " with some " + (", ".join(words[1:-1]) + " and " if len(words) > 2 else "") + words[-1]
        frame.set_text("text", caption)
        frame.set_number("colour_share", float(share[order[0]]))
        return frame
