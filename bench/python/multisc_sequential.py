#!/usr/bin/env python3
"""Multi-SC offline tier, one image after another: the sequential Python peer of
`graphs/multisc-lite.toml` (issue 11, "pipeline efficiency").

    bench/python/.venv/bin/python bench/python/multisc_sequential.py IMAGE_DIR --out DIR \
        [--snr DB] [--seed N] [--intra-threads N] [--modulation bpsk] [--assets DIR]

What it measures
----------------
The same steps as the Rust graph, written the way research code is written: a plain
loop over the images of IMAGE_DIR (sorted by name, as `image_dir` reads them), each
image going through every step before the next one starts, with ONNX Runtime's Python
API for the model and numpy for the rest:

    load -> COCO detection (CenterNet, centernet.onnx, 512x512 RGB 0-255, score >= 0.4,
            same-class boxes at IoU > 0.5 dropped, at most 10)
         -> ISNet segmentation (isnet-medium.onnx, 1024x1024, (x - 128) / 256)
         -> object slice (bbox of mask > 127, RGBA with the mask as alpha)
         -> 2x2 tiles of the frame and of the mask
         -> attributes caption per tile, naming the detection that matches the mask's
            box and the other objects in the tile
         -> text channel per caption (UTF-8 bytes -> bits -> Gray-mapped BPSK, AWGN at
            the SNR, hard decisions -> bytes -> lossy UTF-8)
         -> fuse (tile order) -> SymSpell compound correction (symspellpy 6.10.1, max
            edit distance 2, prefix length 7, the symspellpy dictionaries)
         -> image channel for the slice (colour and alpha as two JPEGs at quality 75,
            uncoded over the same modulation and AWGN; a slice whose bytes no longer
            decode is lost and the frame is rebuilt from text alone)
         -> composite reconstruction -> PSNR, SSIM, pixel cosine, BLEU-1/4 and BER
         -> <out>/reconstructions/<name>.png and one row of <out>/metrics.csv

The last line on stdout is a JSON object: `frames`, `seconds` (from the moment the ONNX
session and the SymSpell dictionaries are loaded to the last frame written, so model
loading is excluded, as in the Rust run's `summary.json`), `fps`, `load_seconds` and
`peak_rss_mib` (the process's ru_maxrss). Per-image progress goes to stderr.

`--intra-threads 0` (the default) builds the session with ONNX Runtime's default
options, as research code does (one intra-op thread per core); a positive value sets
`intra_op_num_threads`. The Rust graph runs two ISNet sessions with one intra-op thread
each (`replicas = 2`, `intra_threads = 1`); one session per process is the sequential
way.

Settings are the Rust stages' defaults with the graph's keys (`multisc-lite.toml`):
graph seed 7, `[channel] snr_db = 10`, `modulation = "bpsk"`, `segment model = "isnet"`
(variant medium), `split grid = [2, 2]`, `caption model = "attributes"`,
`image_channel quality = 75, coding = "none"`, `reconstruct model = "composite"`,
`detect` with its defaults; `correct model = "symspell"`, where the graph now uses the
channel-aware `noisy_channel` (not ported here): compare with the graph run with
`--set stage.correct.model=symspell`, as `bench/python/parity` and
`bench/multisc-kodak` do. `--snr` is the graph's `--snr`.

The numerical steps are ports of the Rust code (models/src/detect.rs, isnet.rs, attributes.rs,
colors.rs, composite.rs, channel.rs, quality.rs; actors/src/segment.rs, split.rs,
caption.rs, text_channel.rs, fuse.rs, correct.rs, image_channel.rs, reconstruct.rs,
evaluate.rs), float32 where the Rust code is f32 and in the same order of operations,
so that at a noiseless SNR the texts are the Rust run's and the reconstructions differ
only where the JPEG codec does (`bench/python/parity` checks it).

Where it differs from the Rust pipeline
----------------------------------------
- No contact sheet: the `sheet` stage and its `sheets/` PNGs are left out (the Rust run
  does that work inside its clock, so the comparison slightly favours Python).
- Channel noise: the Rust stages draw from ChaCha8 seeded per (graph seed, stage, frame,
  part); here numpy's default generator is seeded from (--seed, stage, frame, part).
  Statistically the same channel, not the same bit flips: at an SNR where bits flip,
  texts and lost slices differ from the Rust run's frame by frame.
- JPEG: Pillow (libjpeg) instead of the `image` crate's encoder and zune-jpeg decoder,
  with the same settings (quality 75, 4:4:4 chroma, the standard tables scaled the
  libjpeg way): the decoded slice differs by a few levels (mean 0.01-0.5 over the frame
  on kodim01-04, at most 18), and Pillow's streams are 0.7-2.1 % longer there
  (`slice_bytes`, `slice_bits`), so at a given SNR a slice takes a few more bit flips.
  At an SNR where bits flip, libjpeg may decode a damaged stream the Rust decoder
  refuses (or the reverse), so what counts as a lost slice can differ on such frames.
- Resizing (ISNet's input and its mask) is a numpy port of the `image` crate's
  triangle filter, not Pillow's bilinear resize, which weights and rounds differently:
  the mask, hence the captions, must be the Rust run's.
- SymSpell is symspellpy itself (the Rust `symspell` module is a port of it), called
  with `split_by_space=True` on the runs of words the Rust `Corrector` makes (lowercase,
  punctuation at either end of a token kept and ending a run, tokens with digits kept).
- One ONNX session, frames one at a time: no replicas, no overlap of the steps.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import resource
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from symspellpy import SymSpell

from channel_numpy import BITS, add_awgn, demodulate_hard, modulate

F32 = np.float32
REPO = Path(__file__).resolve().parents[2]

# --- graphs/multisc-lite.toml and the stage defaults it relies on -------------------
GRAPH_SEED = 7
SNR_DB = 10.0
MODULATION = "bpsk"
GRID = (2, 2)  # split grid = [rows, cols]
JPEG_QUALITY = 75  # image_channel quality, coding = "none"
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp"}  # image_dir default

# models/src/isnet.rs
ISNET_MODEL = "models/isnet/isnet-medium.onnx"
ISNET_SIDE = 1024
ISNET_THRESHOLD = 127

# models/src/symspell.rs (Corrector)
SYMSPELL_UNIGRAMS = "symspell/frequency_dictionary_en_82_765.txt"
SYMSPELL_BIGRAMS = "symspell/frequency_bigramdictionary_en_243_342.txt"
SYMSPELL_MAX_EDIT_DISTANCE = 2
SYMSPELL_PREFIX_LENGTH = 7

# Stream numbers of the noise generators (the Rust side hashes the stage id instead).
TEXT_CHANNEL_STREAM = 0
IMAGE_CHANNEL_STREAM = 1

# The columns of the Rust csv_sink's metrics.csv for this graph, in its order.
CSV_COLUMNS = [
    "frame", "part", "name", "ber", "bit_errors", "bits", "bits_sent", "bleu1",
    "bleu1_received", "bleu4", "bleu4_received", "corrected", "cosine", "grid_cols",
    "grid_rows", "lost_inputs", "lost_parts", "psnr_db", "sent_texts",
    "slice_bit_errors", "slice_bits", "slice_bytes", "slice_lost", "ssim", "texts",
]


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Rust's `f32::round`/`f64::round` (halves away from zero), exactly, in x's dtype."""
    a = np.abs(x)
    r = np.floor(a)
    r = r + (a - r >= 0.5).astype(a.dtype)
    return np.copysign(r, x)


# --- the `image` crate's triangle resize (image 0.25 imageops::resize) --------------

def _triangle_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (float32, [dst, taps]) of each output pixel, computed
    as `image`'s sampler does: window from (x + 0.5)·ratio ± support·max(ratio, 1),
    clamped to the image, weights normalised by their float32 sum."""
    ratio = F32(src) / F32(dst)
    sratio = ratio if ratio >= 1 else F32(1.0)
    support = F32(1.0) * sratio
    centre = (np.arange(dst, dtype=F32) + F32(0.5)) * ratio
    left = np.clip(np.floor(centre - support).astype(np.int64), 0, src - 1)
    right = np.clip(np.ceil(centre + support).astype(np.int64), left + 1, src)
    centre = centre - F32(0.5)
    taps = int((right - left).max())
    index = np.empty((dst, taps), dtype=np.int64)
    weight = np.zeros((dst, taps), dtype=F32)
    total = np.zeros(dst, dtype=F32)
    for k in range(taps):
        i = left + k
        inside = i < right
        x = np.abs((i.astype(F32) - centre) / sratio)
        w = np.where(inside & (x < 1), F32(1.0) - x, F32(0.0)).astype(F32)
        weight[:, k] = w
        total = total + w  # sequential float32 sum, as the Rust loop
        index[:, k] = np.minimum(i, right - 1)
    return index, weight / total[:, None]


def resize_triangle(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image::imageops::resize(img, width, height, FilterType::Triangle)` for a uint8
    image [h, w] or [h, w, c]: a vertical pass into float32, then a horizontal pass
    rounded (halves away from zero) and clamped back to uint8."""
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img.copy()
    plane = img if img.ndim == 3 else img[:, :, None]
    src = plane.astype(F32)
    index, weight = _triangle_taps(h, height)
    tmp = np.zeros((height, w, plane.shape[2]), dtype=F32)
    for k in range(index.shape[1]):
        tmp += src[index[:, k]] * weight[:, k, None, None]
    index, weight = _triangle_taps(w, width)
    out = np.zeros((height, width, plane.shape[2]), dtype=F32)
    for k in range(index.shape[1]):
        out += tmp[:, index[:, k]] * weight[None, :, k, None]
    out = round_half_away(np.clip(out, F32(0), F32(255))).astype(np.uint8)
    return out if img.ndim == 3 else out[:, :, 0]


def resize_nearest(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize (only used when a mask and its tile differ in size,
    which the graph never does)."""
    h, w = img.shape[:2]
    ys = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(np.int64)
    xs = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(np.int64)
    return img[ys][:, xs]


# --- segment (models/src/isnet.rs) -----------------------------------------------

def isnet_input(image: np.ndarray) -> np.ndarray:
    """Triangle resize to 1024², then (x - 128) / 256 per channel, NCHW float32."""
    resized = resize_triangle(image, ISNET_SIDE, ISNET_SIDE).astype(F32)
    return ((resized - F32(128.0)) / F32(256.0)).transpose(2, 0, 1)[None].copy()


def isnet_mask(saliency: np.ndarray, width: int, height: int) -> np.ndarray:
    """Saliency in [0, 1] at 1024² -> 0..255 mask at the image's size."""
    full = round_half_away(np.clip(saliency.astype(F32), F32(0), F32(1)) * F32(255.0))
    return resize_triangle(full.astype(np.uint8), width, height)


def segment(session: ort.InferenceSession, image: np.ndarray):
    """The mask and, when something is salient, the RGBA slice and its box (x, y, w, h)."""
    h, w = image.shape[:2]
    (saliency,) = session.run(["output"], {"input": isnet_input(image)})
    mask = isnet_mask(saliency.reshape(ISNET_SIDE, ISNET_SIDE), w, h)
    rows = np.flatnonzero((mask > ISNET_THRESHOLD).any(axis=1))
    if rows.size == 0:
        return mask, None, None
    cols = np.flatnonzero((mask > ISNET_THRESHOLD).any(axis=0))
    x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])
    box = (x0, y0, x1 - x0 + 1, y1 - y0 + 1)
    rgba = np.dstack([image[y0:y1 + 1, x0:x1 + 1], mask[y0:y1 + 1, x0:x1 + 1]])
    return mask, rgba, box


# --- detect (models/src/detect.rs) and the objects a caption names (attributes.rs) ---

CENTERNET_MODEL = "models/detect/centernet.onnx"
DETECT_SIDE = 512
DETECT_INPUT, DETECT_OUTPUT = "tower_0/images:0", "tower_0/detections"
SCORE_THRESHOLD = 0.4  # detect score_threshold default
MAX_OBJECTS = 10
NMS_IOU = 0.5
MAIN_MIN_IOU, MAIN_MIN_INSIDE = 0.3, 0.8
MAX_NAMED, MIN_OBJECT_SHARE = 3, 0.3
COCO_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
]


def box_area(b) -> int:
    return b[2] * b[3]


def box_iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    if x1 <= x0 or y1 <= y0:
        return 0.0
    inter = (x1 - x0) * (y1 - y0)
    return inter / (box_area(a) + box_area(b) - inter)


def frame_box(row, sx: float, sy: float, w: int, h: int):
    """x1, y1, x2, y2 in model pixels -> (x, y, w, h) in the frame, clipped, or None."""
    if not all(math.isfinite(float(v)) for v in row):
        return None

    def clip(v, s, limit):
        return int(min(max(float(round_half_away(np.float64(float(v) * s))), 0.0), float(limit)))
    x0, y0, x1, y1 = clip(row[0], sx, w), clip(row[1], sy, h), clip(row[2], sx, w), clip(row[3], sy, h)
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def detect(session: ort.InferenceSession, image: np.ndarray):
    """The frame's objects: [(class, score, (x, y, w, h))], best first (detect.rs)."""
    h, w = image.shape[:2]
    if w == 0 or h == 0:
        return []
    x = resize_triangle(image, DETECT_SIDE, DETECT_SIDE).astype(F32)[None]
    (raw,) = session.run([DETECT_OUTPUT], {DETECT_INPUT: x})
    sx, sy = w / DETECT_SIDE, h / DETECT_SIDE
    found = []
    for r in raw.reshape(-1, 6):
        score, cls = float(r[4]), float(r[5])
        if not math.isfinite(score) or score < np.float32(SCORE_THRESHOLD):
            continue
        if not (math.isfinite(cls) and cls >= 0 and cls.is_integer() and int(cls) < len(COCO_NAMES)):
            continue
        box = frame_box(r[:4], sx, sy, w, h)
        if box is not None:
            found.append((COCO_NAMES[int(cls)], score, box))
    found.sort(key=lambda d: -d[1])
    kept = []
    for d in found:
        if not any(k[0] == d[0] and box_iou(k[2], d[2]) > NMS_IOU for k in kept):
            kept.append(d)
        if len(kept) == MAX_OBJECTS:
            break
    return kept


def main_object(objects, mask_box):
    """detect::main_object: the best-scoring detection inside the mask's box, else the
    best overlap."""
    def inside(b):
        iw = max(min(b[0] + b[2], mask_box[0] + mask_box[2]) - max(b[0], mask_box[0]), 0)
        ih = max(min(b[1] + b[3], mask_box[1] + mask_box[3]) - max(b[1], mask_box[1]), 0)
        return iw * ih
    best = None
    for i, d in enumerate(objects):
        if box_iou(d[2], mask_box) >= MAIN_MIN_IOU and inside(d[2]) >= MAIN_MIN_INSIDE * max(box_area(d[2]), 1):
            if best is None or d[1] >= objects[best][1]:
                best = i
    if best is not None:
        return best
    overlaps = [(box_iou(d[2], mask_box), i) for i, d in enumerate(objects)]
    overlaps = [o for o in overlaps if o[0] > 0.0]
    if not overlaps:
        return None
    top = max(o[0] for o in overlaps)
    return [o for o in overlaps if o[0] == top][-1][1]


def named_in_tile(objects, mask_box, tile):
    """attributes::named_in_tile: (main class or None, [(class, fx, fy)])."""
    main = main_object(objects, mask_box) if mask_box is not None else None
    others = []
    for i, (cls, _, b) in enumerate(objects):
        if i == main or any(o[0] == cls for o in others):
            continue
        x0, y0 = max(b[0], tile[0]), max(b[1], tile[1])
        x1, y1 = min(b[0] + b[2], tile[0] + tile[2]), min(b[1] + b[3], tile[1] + tile[3])
        if x1 <= x0 or y1 <= y0 or tile[2] == 0 or tile[3] == 0:
            continue
        share = (x1 - x0) * (y1 - y0) / max(box_area(b), 1)
        if share >= MIN_OBJECT_SHARE and len(others) < MAX_NAMED:
            others.append((cls, ((x0 + x1) / 2 - tile[0]) / tile[2], ((y0 + y1) / 2 - tile[1]) / tile[3]))
    return (objects[main][0] if main is not None else None), others


def with_article(cls: str) -> str:
    return ("an " if cls[0] in "aeiou" else "a ") + cls


# --- split (models/src/composite.rs tile_rect) ---------------------------------------

def tile_rect(index: int, grid: tuple[int, int], size: tuple[int, int]):
    """(x, y, w, h) of row-major tile `index`: columns split at c·w/cols, rows at r·h/rows."""
    rows, cols = max(grid[0], 1), max(grid[1], 1)
    w, h = size
    r = min(index // cols, rows - 1)
    c = index % cols
    x0, x1 = c * w // cols, (c + 1) * w // cols
    y0, y1 = r * h // rows, (r + 1) * h // rows
    return x0, y0, x1 - x0, y1 - y0


# --- colour vocabulary (models/src/colors.rs) ---------------------------------------

COLOR_WORDS = ["black", "white", "gray", "red", "orange", "yellow", "green", "blue",
               "purple", "pink", "brown"]
COLOR_REFERENCES = [
    [[12, 12, 12], [40, 40, 44]],
    [[245, 245, 245], [222, 222, 214]],
    [[128, 128, 128], [88, 88, 92], [176, 176, 176]],
    [[200, 35, 35], [130, 20, 25], [230, 80, 70]],
    [[235, 135, 30], [200, 100, 30]],
    [[235, 215, 50], [200, 185, 70], [245, 235, 150]],
    [[60, 140, 60], [30, 75, 35], [140, 190, 100], [100, 120, 60]],
    [[50, 90, 190], [25, 40, 100], [120, 170, 225], [70, 130, 180], [20, 30, 240],
     [10, 15, 125]],
    [[125, 55, 150], [75, 35, 95], [170, 120, 200], [128, 0, 128]],
    [[235, 150, 180], [215, 90, 140]],
    [[120, 75, 40], [75, 50, 30], [165, 125, 85], [140, 110, 80]],
]
BRIGHTNESS_WORDS = ["very dark", "dark", "dim", "fairly bright", "bright", "very bright"]
BRIGHTNESS_TARGET = [20.0, 52.0, 88.0, 122.0, 160.0, 212.0]


# Transcendental functions go through Python's math module (the C library, as Rust's
# f64 methods), not numpy's vectorised versions, which may differ in the last bit and
# so flip a near tie between two colour names.

def _srgb_to_linear_table() -> np.ndarray:
    c = [v / 255.0 for v in range(256)]
    return np.array([x / 12.92 if x <= 0.04045 else math.pow((x + 0.055) / 1.055, 2.4) for x in c])


SRGB_LINEAR = _srgb_to_linear_table()


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) of uint8 sRGB pixels [n, 3] -> float64 [n, 3]."""
    r, g, b = (SRGB_LINEAR[rgb[:, i]] for i in range(3))
    x = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / 0.95047
    y = 0.2126729 * r + 0.7151522 * g + 0.0721750 * b
    z = (0.0193339 * r + 0.119192 * g + 0.9503041 * b) / 1.08883

    def f(t):
        root = np.array([math.cbrt(v) for v in t.tolist()])
        return np.where(t > 216.0 / 24389.0, root, (24389.0 / 27.0 * t + 16.0) / 116.0)

    fx, fy, fz = f(x), f(y), f(z)
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=1)


_REF_RGB = np.array([c for refs in COLOR_REFERENCES for c in refs], dtype=np.uint8)
_REF_NAME = np.array([i for i, refs in enumerate(COLOR_REFERENCES) for _ in refs])
_REF_LAB = srgb_to_lab(_REF_RGB)


def nearest_color(rgb: np.ndarray) -> np.ndarray:
    """Colour index (into COLOR_WORDS) of each pixel: the name of the nearest reference
    in L*a*b* (the first one on a tie, as the Rust loop)."""
    packed = (rgb[:, 0].astype(np.int64) << 16) | (rgb[:, 1].astype(np.int64) << 8) | rgb[:, 2]
    colours, inverse = np.unique(packed, return_inverse=True)
    unique_rgb = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=1)
    lab = srgb_to_lab(unique_rgb.astype(np.uint8))
    d = ((lab[:, None, 0] - _REF_LAB[None, :, 0]) ** 2
         + (lab[:, None, 1] - _REF_LAB[None, :, 1]) ** 2
         + (lab[:, None, 2] - _REF_LAB[None, :, 2]) ** 2)
    return _REF_NAME[np.argmin(d, axis=1)][inverse.reshape(-1)]


def brightness_of(luma: float) -> int:
    for level, upper in enumerate([35.0, 70.0, 105.0, 140.0, 180.0]):
        if luma < upper:
            return level
    return 5


def luma_of(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma (float64) of uint8 pixels [..., 3]."""
    p = rgb.astype(np.float64)
    return 0.299 * p[..., 0] + 0.587 * p[..., 1] + 0.114 * p[..., 2]


def seq_sum(values: np.ndarray) -> float:
    """Left-to-right float64 sum (the Rust loops' order; np.sum is pairwise)."""
    return float(np.cumsum(values)[-1]) if values.size else 0.0


# --- caption: the attributes captioner (models/src/attributes.rs) ------------------

MASK_THRESHOLD = 128
MIN_OBJECT_COVERAGE = 0.02
SECOND_COLOR_SHARE = 0.2
MAX_SAMPLES = 8192


def position_words(index: int, rows: int, cols: int) -> str:
    rows, cols = max(rows, 1), max(cols, 1)
    if rows == 1 and cols == 1:
        return "the whole image"
    r, c = min(index // cols, rows - 1), index % cols
    if rows > 3 or cols > 3:
        return f"row {r + 1} column {c + 1}"
    row = "" if rows == 1 else ("top" if r == 0 else ("middle" if rows == 3 and r == 1 else "bottom"))
    col = "" if cols == 1 else ("left" if c == 0 else ("center" if cols == 3 and c == 1 else "right"))
    if (row, col) == ("middle", "center"):
        return "center"
    if row == "":
        return col
    if col == "":
        return row
    return f"{row} {col}"


class Region:
    """Colour statistics of the samples of one region, in sampling order."""

    def __init__(self, rgb: np.ndarray, fx: np.ndarray, fy: np.ndarray):
        self.samples = len(rgb)
        self.luma_sum = seq_sum(luma_of(rgb))
        names = nearest_color(rgb) if self.samples else np.zeros(0, dtype=np.int64)
        self.colors = []  # (name index, count, mean x, mean y)
        for name in np.unique(names):
            sel = names == name
            n = int(sel.sum())
            self.colors.append((int(name), n, seq_sum(fx[sel]) / n, seq_sum(fy[sel]) / n))

    def brightness(self) -> int:
        return brightness_of(self.luma_sum / max(self.samples, 1))

    def dominant(self):
        """Up to two colours (most frequent first, palette order on ties), the second
        only when it has at least SECOND_COLOR_SHARE of the samples."""
        ranked = sorted(self.colors, key=lambda c: (-c[1], c[0]))
        total = max(self.samples, 1)
        return [(c[0], c[2], c[3]) for i, c in enumerate(ranked)
                if i == 0 or (i == 1 and c[1] / total >= SECOND_COLOR_SHARE)]


def amount_words(coverage: float) -> str:
    for upper, words in [(0.15, "a little"), (0.29, "a quarter"), (0.42, "a third"),
                         (0.6, "half"), (0.9, "most")]:
        if coverage < upper:
            return words
    return "all"


def place_words(fx: float, fy: float) -> str:
    col = 0 if fx < 0.38 else (2 if fx > 0.62 else 1)
    row = 0 if fy < 0.38 else (2 if fy > 0.62 else 1)
    return [["at the top left", "at the top", "at the top right"],
            ["on the left", "in the middle", "on the right"],
            ["at the bottom left", "at the bottom", "at the bottom right"]][row][col]


def background_sentence(bg: Region) -> str:
    b = BRIGHTNESS_WORDS[bg.brightness()]
    colors = bg.dominant()
    if not colors:
        return "the background is hidden."
    if len(colors) == 1:
        return f"the background is {COLOR_WORDS[colors[0][0]]} and {b}."
    first, second = colors[0], colors[1]
    dx, dy = second[1] - first[1], second[2] - first[2]
    if abs(dy) >= 0.15 and abs(dy) >= abs(dx):
        top, bottom = (first, second) if dy > 0 else (second, first)
        return (f"the background is {b}, {COLOR_WORDS[top[0]]} at the top and "
                f"{COLOR_WORDS[bottom[0]]} at the bottom.")
    if abs(dx) >= 0.15:
        left, right = (first, second) if dx > 0 else (second, first)
        return (f"the background is {b}, {COLOR_WORDS[left[0]]} on the left and "
                f"{COLOR_WORDS[right[0]]} on the right.")
    return (f"the background is {b}, mostly {COLOR_WORDS[first[0]]} with some "
            f"{COLOR_WORDS[second[0]]}.")


def describe_tile(tile: np.ndarray, mask: np.ndarray | None, index: int, rows: int, cols: int,
                  named=(None, ())) -> str:
    """The caption of one tile (uint8 [h, w, 3]) with its part of the mask (or None),
    naming the objects of `named` (named_in_tile: main class, other objects)."""
    text = position_words(index, rows, cols) + ": "
    h, w = tile.shape[:2]
    if w == 0 or h == 0:
        return text + "this part is empty."
    if mask is not None and mask.shape != (h, w):
        mask = resize_nearest(mask, w, h)
    step = max(math.ceil(math.sqrt(w * h / MAX_SAMPLES)), 1)
    ys, xs = np.arange(step // 2, h, step), np.arange(step // 2, w, step)
    rgb = tile[ys][:, xs].reshape(-1, 3)
    fx = np.broadcast_to((xs + 0.5) / w, (len(ys), len(xs))).reshape(-1)
    fy = np.broadcast_to(((ys + 0.5) / h)[:, None], (len(ys), len(xs))).reshape(-1)
    total = max(len(rgb), 1)
    is_obj = (mask[ys][:, xs].reshape(-1) >= MASK_THRESHOLD) if mask is not None \
        else np.zeros(len(rgb), dtype=bool)
    obj = Region(rgb[is_obj], fx[is_obj], fy[is_obj])
    bg = Region(rgb[~is_obj], fx[~is_obj], fy[~is_obj])
    main, others = named
    clauses = []
    if mask is not None:
        coverage = obj.samples / total
        if coverage > MIN_OBJECT_COVERAGE:
            n = max(obj.samples, 1)
            amount = amount_words(coverage)
            colors = " and ".join(COLOR_WORDS[c[0]] for c in obj.dominant())
            subject = with_article(main) if main else "the main object"
            if coverage >= 0.9:
                clauses.append(f"{subject} covers {amount} of this part; it is {colors}")
            else:
                place = place_words(seq_sum(fx[is_obj]) / n, seq_sum(fy[is_obj]) / n)
                clauses.append(f"{subject} covers {amount} of this part, {place}; it is {colors}")
        else:
            clauses.append("there is no main object here")
    for cls, ox, oy in others:
        clauses.append(f"{with_article(cls)} is {place_words(ox, oy)}")
    if clauses:
        text += "; ".join(clauses) + ". "
    if bg.samples / total < 0.03:
        return text + "the background is hidden."
    return text + background_sentence(bg)


# --- text and image channels (models/src/channel.rs) --------------------------------



def channel_rng(seed: int, stream: int, frame: int, part: int) -> np.random.Generator:
    """One independent noise stream per (seed, channel, frame, part)."""
    return np.random.default_rng([seed, stream, frame, part])


def transmit_bytes(data: bytes, modulation: str, snr_db: float, rng: np.random.Generator):
    """bytes -> MSB-first bits -> Gray-mapped constellation (unit symbol energy) ->
    complex AWGN with N0 = 10^(-SNR/10) -> nearest level -> bits -> bytes, with the
    functions of channel_numpy.py (the channel benchmark's numpy peer).
    Returns (received bytes, bits sent, bit errors)."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    received = add_awgn(modulate(bits, modulation), snr_db, rng)
    rx_bits = demodulate_hard(received, modulation, bits.size)
    errors = int(np.count_nonzero(rx_bits != bits))
    return np.packbits(rx_bits).tobytes(), int(bits.size), errors


# Unicode White_Space (Rust's char::is_whitespace).
WHITE_SPACE = set("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {
    chr(c) for c in range(0x2000, 0x200B)}


def decode_text_lossy(data: bytes) -> str:
    """Received bytes -> text: invalid UTF-8 dropped, whitespace to one space, other
    control characters dropped, trimmed (channel.rs decode_text_lossy)."""
    out = []
    last_space = True
    for c in data.decode("utf-8", errors="replace"):
        if c in WHITE_SPACE:
            c = " "
        if c == "\ufffd" or unicodedata.category(c) == "Cc":
            continue
        if c == " ":
            if not last_space:
                out.append(" ")
            last_space = True
        else:
            out.append(c)
            last_space = False
    return "".join(out).rstrip(" ")


def jpeg_bytes(pixels: np.ndarray, quality: int) -> bytes:
    """JPEG at `quality`, 4:4:4 (the `image` crate's encoder does not subsample chroma)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def decode_jpeg(data: bytes, mode: str, size: tuple[int, int]) -> np.ndarray | None:
    """The decoded image in `mode`, or None when the bytes no longer decode or decode to
    another size (the slice is then lost)."""
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as img:
            img.load()
            if img.size != size:
                return None
            return np.asarray(img.convert(mode))
    except Exception:  # any decoding failure counts as a lost slice, as in the Rust stage
        return None


def image_channel(rgba: np.ndarray, modulation: str, snr_db: float, seed: int, frame: int):
    """The slice over the link: colour and alpha JPEGs, each on its own noise stream.
    Returns (received RGBA or None, bytes sent, bits, bit errors)."""
    h, w = rgba.shape[:2]
    colour = jpeg_bytes(np.ascontiguousarray(rgba[:, :, :3]), JPEG_QUALITY)
    alpha = jpeg_bytes(np.ascontiguousarray(rgba[:, :, 3]), JPEG_QUALITY)
    rx_colour, bits_c, err_c = transmit_bytes(
        colour, modulation, snr_db, channel_rng(seed, IMAGE_CHANNEL_STREAM, frame, 0))
    rx_alpha, bits_a, err_a = transmit_bytes(
        alpha, modulation, snr_db, channel_rng(seed, IMAGE_CHANNEL_STREAM, frame, 1))
    c = decode_jpeg(rx_colour, "RGB", (w, h))
    a = decode_jpeg(rx_alpha, "L", (w, h))
    received = np.dstack([c, a]) if c is not None and a is not None else None
    return received, len(colour) + len(alpha), bits_c + bits_a, err_c + err_a


# --- correct (models/src/symspell.rs Corrector, with symspellpy) --------------------

def load_symspell(assets: Path) -> SymSpell:
    unigrams, bigrams = assets / SYMSPELL_UNIGRAMS, assets / SYMSPELL_BIGRAMS
    for path in (unigrams, bigrams):
        if not path.is_file():
            sys.exit(f"multisc_sequential.py: SymSpell dictionary {path} is missing; "
                     f"run `make setup` in {REPO} (or pass --assets DIR)")
    sym = SymSpell(max_dictionary_edit_distance=SYMSPELL_MAX_EDIT_DISTANCE,
                   prefix_length=SYMSPELL_PREFIX_LENGTH)
    sym.load_dictionary(str(unigrams), term_index=0, count_index=1)
    sym.load_bigram_dictionary(str(bigrams), term_index=0, count_index=2)
    return sym


def split_token(tok: str) -> tuple[str, str, str]:
    """(leading punctuation, core, trailing punctuation); punctuation = not alphanumeric."""
    start = next((i for i, c in enumerate(tok) if c.isalnum()), len(tok))
    end = next((i + 1 for i in range(len(tok) - 1, -1, -1) if tok[i].isalnum()), start)
    end = max(end, start)
    return tok[:start], tok[start:end], tok[end:]


def correct_text(sym: SymSpell, text: str) -> str:
    """Corrector::correct: lowercase, split on whitespace, punctuation at a token's ends
    kept and ending a run of words, tokens with digits kept, each run corrected with
    lookup_compound; tokens re-joined with single spaces."""
    out: list[str] = []
    run: list[str] = []
    run_lead = ""

    def flush(lead: str, trail: str):
        if not run:
            if lead or trail:
                out.append(lead + trail)
            return
        best = sym.lookup_compound(" ".join(run), SYMSPELL_MAX_EDIT_DISTANCE, split_by_space=True)
        out.append(lead + best[0].term + trail)
        run.clear()

    for tok in text.lower().split():
        lead, core, trail = split_token(tok)
        if not core:
            flush(run_lead, "")
            run_lead = ""
            out.append(lead)
            continue
        if any(c in "0123456789" for c in core):
            flush(run_lead, "")
            run_lead = ""
            out.append(tok)
            continue
        if lead:
            flush(run_lead, "")
            run_lead = lead
        run.append(core)
        if trail:
            flush(run_lead, trail)
            run_lead = ""
    flush(run_lead, "")
    return " ".join(out)


# --- reconstruct: the composite reconstructor (models/src/composite.rs) ------------

NEUTRAL = np.array([128, 128, 128], dtype=F32)
PAINT_SATURATION = F32(0.6)
BLEND_SOFTENING = F32(0.25)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def find_brightness(words: list[str]) -> int | None:
    found = None
    for i, w in enumerate(words):
        before = words[i - 1] if i > 0 else ""
        if w == "dark":
            found = 0 if before == "very" else 1
        elif w == "dim":
            found = 2
        elif w == "bright":
            found = 5 if before == "very" else (3 if before == "fairly" else 4)
    return found


def parse_background(text: str):
    """(colour indices, layout, brightness) of a tile text, or None when it names no
    colour and no brightness. Layouts: flat, vertical, horizontal, mixed."""
    lower = text.translate(_ASCII_LOWER)
    pieces = lower.replace(";", ".").replace("!", ".").replace("?", ".").split(".")
    sentence = next((s for s in pieces if "background" in s), lower)
    words = [w for w in "".join(c if ("a" <= c <= "z" or "A" <= c <= "Z") else " "
                                for c in sentence).split(" ") if w]
    colors: list[int] = []
    for w in words:
        name = "gray" if w.lower() == "grey" else w.lower()
        if name in COLOR_WORDS:
            c = COLOR_WORDS.index(name)
            if len(colors) < 2 and c not in colors:
                colors.append(c)
    brightness = find_brightness(words)
    if not colors and brightness is None:
        return None
    if len(colors) < 2:
        layout = "flat"
    elif "top" in words or "bottom" in words:
        layout = "vertical"
    elif "left" in words or "right" in words:
        layout = "horizontal"
    else:
        layout = "mixed"
    return colors, layout, brightness


def _mix(a: np.ndarray, b: np.ndarray, t) -> np.ndarray:
    return a + (b - a) * t


def _luma32(c: np.ndarray) -> F32:
    return F32(0.299) * c[0] + F32(0.587) * c[1] + F32(0.114) * c[2]


def paint_color(index: int) -> np.ndarray:
    p = np.array(COLOR_REFERENCES[index][0], dtype=F32)
    y = _luma32(p)
    return _mix(np.array([y, y, y], dtype=F32), p, PAINT_SATURATION)


def spec_colors(colors: list[int], layout: str, brightness: int | None):
    first = paint_color(colors[0]) if colors else None
    second = paint_color(colors[1]) if len(colors) > 1 else None
    if first is None:
        a, b = NEUTRAL, NEUTRAL
    elif second is None:
        a, b = first, first
    elif layout in ("mixed", "flat"):
        a = b = _mix(first, second, F32(0.3))
    else:
        a, b = _mix(first, second, BLEND_SOFTENING), _mix(second, first, BLEND_SOFTENING)
    if brightness is None:
        return a, b
    target = F32(BRIGHTNESS_TARGET[brightness])
    mean = (_luma32(a) + _luma32(b)) / F32(2.0)
    if not colors or mean < 1.0:
        g = np.array([target] * 3, dtype=F32)
        return g, g
    k = min(max(target / mean, F32(0.4)), F32(2.5))
    return a * k, b * k


def _smoothstep(t: np.ndarray) -> np.ndarray:
    u = np.clip((t - F32(0.25)) / F32(0.5), F32(0), F32(1))
    return u * u * (F32(3.0) - F32(2.0) * u)


def paint_tile(canvas: np.ndarray, rect, spec) -> None:
    x0, y0, tw, th = rect
    if spec is None:
        a, b, layout = NEUTRAL, NEUTRAL, "flat"
    else:
        a, b = spec_colors(*spec)
        layout = spec[1]
    if layout == "vertical":
        t = _smoothstep((np.arange(th, dtype=F32) + F32(0.5)) / F32(max(th, 1)))[:, None, None]
    elif layout == "horizontal":
        t = _smoothstep((np.arange(tw, dtype=F32) + F32(0.5)) / F32(max(tw, 1)))[None, :, None]
    else:
        t = np.zeros((1, 1, 1), dtype=F32)
    canvas[y0:y0 + th, x0:x0 + tw] = _mix(a, b, t)


def box_blur_pass(src: np.ndarray, r: int, horizontal: bool) -> np.ndarray:
    """One running-sum box blur of radius r along rows or columns, edges clamped, with
    the Rust loop's float32 additions in the same order."""
    rows = src if horizontal else src.transpose(1, 0, 2)
    inner = rows.shape[1]
    norm = F32(1.0) / F32(2 * r + 1)
    acc = np.zeros((rows.shape[0], 3), dtype=F32)
    for k in range(2 * r + 1):
        acc = acc + rows[:, min(max(k - r, 0), inner - 1)]
    out = np.empty_like(rows)
    for i in range(inner):
        out[:, i] = acc * norm
        acc = acc + (rows[:, min(i + r + 1, inner - 1)] - rows[:, max(i - r, 0)])
    return out if horizontal else out.transpose(1, 0, 2)


def composite_over(dst: np.ndarray, rgba: np.ndarray, x: int, y: int) -> None:
    h, w = dst.shape[:2]
    sh, sw = min(rgba.shape[0], h - y), min(rgba.shape[1], w - x)
    if sh <= 0 or sw <= 0:
        return
    src = rgba[:sh, :sw].astype(F32)
    a = src[:, :, 3:4] / F32(255.0)
    region = dst[y:y + sh, x:x + sw]
    v = src[:, :, :3] * a + region.astype(F32) * (F32(1.0) - a)
    blended = np.clip(round_half_away(v), 0, 255).astype(np.uint8)
    region[...] = np.where(a > 0, blended, region)


def reconstruct(texts: list[str | None], grid, size, obj) -> np.ndarray:
    """Background painted from each tile's colour words, seams blurred, the received
    slice alpha-composited at its box."""
    w, h = size
    rows, cols = max(grid[0], 1), max(grid[1], 1)
    canvas = np.empty((h, w, 3), dtype=F32)
    canvas[...] = NEUTRAL
    for k in range(rows * cols):
        text = texts[k] if k < len(texts) else None
        spec = parse_background(text) if text is not None else None
        paint_tile(canvas, tile_rect(k, grid, size), spec)
    if rows * cols > 1:
        r = max(min(w // cols, h // rows) // 10, 1)
        for _ in range(2):
            canvas = box_blur_pass(canvas, r, True)
            canvas = box_blur_pass(canvas, r, False)
    out = np.clip(round_half_away(canvas), 0, 255).astype(np.uint8)
    if obj is not None:
        composite_over(out, *obj)
    return out


# --- evaluate (models/src/quality.rs) ------------------------------------------------

PSNR_CAP_DB = 100.0
BLEU_EPSILON = 0.1


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    d = reference.astype(np.int64) - image.astype(np.int64)
    mse = float((d * d).sum()) / d.size
    if mse <= 0:
        return PSNR_CAP_DB
    return min(10.0 * math.log10(255.0 * 255.0 / mse), PSNR_CAP_DB)


def _filter_valid(plane: np.ndarray, k: np.ndarray) -> np.ndarray:
    n = len(k)
    h, w = plane.shape
    tmp = np.zeros((h, w + 1 - n))
    for i in range(n):
        tmp = tmp + k[i] * plane[:, i:i + w + 1 - n]
    out = np.zeros((h + 1 - n, w + 1 - n))
    for i in range(n):
        out = out + k[i] * tmp[i:i + h + 1 - n]
    return out


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    """SSIM on BT.601 luma, 11x11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03,
    L = 255, averaged over the window positions inside the image ("valid")."""
    h, w = reference.shape[:2]
    if w == 0 or h == 0:
        return 1.0
    size = min(11, w, h)
    if size % 2 == 0:
        size -= 1
    centre = (size - 1) / 2.0
    k = np.array([math.exp(-(i - centre) * (i - centre) / (2.0 * 1.5 * 1.5)) for i in range(size)])
    k = k / seq_sum(k)
    a, b = luma_of(reference), luma_of(image)
    mu_a, mu_b = _filter_valid(a, k), _filter_valid(b, k)
    s_aa, s_bb, s_ab = _filter_valid(a * a, k), _filter_valid(b * b, k), _filter_valid(a * b, k)
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    va, vb, cov = s_aa - mu_a * mu_a, s_bb - mu_b * mu_b, s_ab - mu_a * mu_b
    m = ((2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)) / (
        (mu_a * mu_a + mu_b * mu_b + c1) * (va + vb + c2))
    return seq_sum(m.reshape(-1)) / m.size


def pixel_cosine(reference: np.ndarray, image: np.ndarray) -> float:
    a, b = reference.astype(np.int64).reshape(-1), image.astype(np.int64).reshape(-1)
    dot, na, nb = float(a @ b), float(a @ a), float(b @ b)
    if na > 0 and nb > 0:
        return dot / (math.sqrt(na) * math.sqrt(nb))
    return 1.0 if na == 0 and nb == 0 else 0.0


def bleu(candidate: str, reference: str, max_n: int) -> float:
    """BLEU-N against one reference, uniform weights, brevity penalty, smoothing
    method 1 of Chen & Cherry (epsilon 0.1)."""
    cand = [t.lower() for t in candidate.split()]
    refs = [t.lower() for t in reference.split()]
    if not cand or max_n == 0:
        return 0.0
    log_sum = 0.0
    for n in range(1, max_n + 1):
        c = Counter(tuple(cand[i:i + n]) for i in range(len(cand) - n + 1))
        r = Counter(tuple(refs[i:i + n]) for i in range(len(refs) - n + 1))
        matched = sum(min(k, r[g]) for g, k in c.items())
        total = max(len(cand) - (n - 1), 1)
        p = BLEU_EPSILON / total if matched == 0 else matched / total
        log_sum += math.log(p) / max_n
    bp = 1.0 if len(cand) > len(refs) else math.exp(1.0 - len(refs) / len(cand))
    return bp * math.exp(log_sum)


# --- the loop --------------------------------------------------------------------------

def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        sys.exit(f"multisc_sequential.py: {folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        sys.exit(f"multisc_sequential.py: no .png/.jpg/.jpeg/.webp image in {folder}")
    return files


def frame_name(stem: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)


def number(x: float) -> str:
    """A number as Rust's `{}` prints an f64 (integers without '.0', no exponent)."""
    x = float(x)
    if x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return np.format_float_positional(x, unique=True, trim="-")


def process(path: Path, seq: int, sessions, sym, args) -> dict:
    """Every step of one frame; returns its metrics.csv row."""
    session, detector = sessions
    with Image.open(path) as img:
        image = np.asarray(img.convert("RGB"))
    h, w = image.shape[:2]
    objects = detect(detector, image)
    mask, rgba, box = segment(session, image)
    rows, cols = GRID
    sent, received, corrected = [], [], []
    bits = bit_errors = 0
    for k in range(rows * cols):
        x, y, tw, th = tile_rect(k, GRID, (w, h))
        named = named_in_tile(objects, box, (x, y, tw, th))
        caption = describe_tile(image[y:y + th, x:x + tw], mask[y:y + th, x:x + tw], k, rows, cols, named)
        rx, n_bits, errors = transmit_bytes(caption.encode("utf-8"), args.modulation, args.snr,
                                            channel_rng(args.seed, TEXT_CHANNEL_STREAM, seq, k))
        text = decode_text_lossy(rx)
        sent.append(caption)
        received.append(text)
        bits += n_bits
        bit_errors += errors
    for text in received:
        corrected.append(correct_text(sym, text))
    row = {"frame": f"0:{seq}", "part": "0", "name": path.stem}
    obj = None
    if rgba is not None:
        slice_rx, slice_bytes, slice_bits, slice_errors = image_channel(
            rgba, args.modulation, args.snr, args.seed, seq)
        if slice_rx is not None:
            obj = (slice_rx, box[0], box[1])
        else:
            print(f"{path.name}: the object slice does not decode after the channel; "
                  f"rebuilt from text alone", file=sys.stderr)
        row.update(slice_bytes=number(slice_bytes), slice_lost=number(slice_rx is None))
    else:
        slice_bits = slice_errors = 0
        row.update(slice_lost="0")
    rebuilt = reconstruct(corrected, GRID, (w, h), obj)
    joined_sent, joined_corrected, joined_received = (" ".join(t) for t in (sent, corrected, received))
    total_bits, total_errors = bits + slice_bits, bit_errors + slice_errors
    row.update(
        ber=number(total_errors / total_bits if total_bits > 0 else 0.0),
        bit_errors=number(bit_errors), bits=number(bits), bits_sent=number(total_bits),
        bleu1=number(bleu(joined_corrected, joined_sent, 1)),
        bleu1_received=number(bleu(joined_received, joined_sent, 1)),
        bleu4=number(bleu(joined_corrected, joined_sent, 4)),
        bleu4_received=number(bleu(joined_received, joined_sent, 4)),
        corrected=" | ".join(corrected), cosine=number(pixel_cosine(image, rebuilt)),
        grid_cols=number(cols), grid_rows=number(rows), lost_inputs="0", lost_parts="0",
        psnr_db=number(psnr(image, rebuilt)), sent_texts=" | ".join(sent),
        slice_bit_errors=number(slice_errors), slice_bits=number(slice_bits),
        ssim=number(ssim(image, rebuilt)), texts=" | ".join(received),
    )
    Image.fromarray(rebuilt).save(args.out / "reconstructions" / f"{frame_name(path.stem)}.png")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Multi-SC offline tier (graphs/multisc-lite.toml), one image after "
                    "another with onnxruntime's Python API.")
    parser.add_argument("image_dir", type=Path, help="folder of .png/.jpg/.jpeg/.webp images")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: reconstructions/<name>.png and metrics.csv")
    parser.add_argument("--snr", type=float, default=SNR_DB,
                        help=f"channel SNR Es/N0 in dB (default {SNR_DB:g}, the graph's)")
    parser.add_argument("--seed", type=int, default=GRAPH_SEED,
                        help=f"noise seed (default {GRAPH_SEED}, the graph's)")
    parser.add_argument("--intra-threads", type=int, default=0,
                        help="ONNX Runtime intra_op_num_threads; 0 = its default options")
    parser.add_argument("--modulation", choices=sorted(BITS), default=MODULATION,
                        help=f"channel modulation (default {MODULATION}, the graph's)")
    parser.add_argument("--assets", type=Path, default=REPO / "assets",
                        help="the set-up's assets folder (default <repo>/assets)")
    args = parser.parse_args()
    if not math.isfinite(args.snr):
        sys.exit(f"multisc_sequential.py: --snr must be a finite number of dB, got {args.snr}")
    if args.intra_threads < 0:
        sys.exit("multisc_sequential.py: --intra-threads must be 0 (default options) or more")
    images = list_images(args.image_dir)
    (args.out / "reconstructions").mkdir(parents=True, exist_ok=True)

    load_start = time.perf_counter()
    model = args.assets / ISNET_MODEL
    if not model.is_file():
        sys.exit(f"multisc_sequential.py: ISNet model {model} is missing; run `make setup` "
                 f"in {REPO} (or pass --assets DIR)")
    options = ort.SessionOptions()
    if args.intra_threads > 0:
        options.intra_op_num_threads = args.intra_threads
    session = ort.InferenceSession(str(model), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    detector_model = args.assets / CENTERNET_MODEL
    if not detector_model.is_file():
        sys.exit(f"multisc_sequential.py: detector model {detector_model} is missing; run "
                 f"`scripts/setup-assets` in {REPO} (or pass --assets DIR)")
    detector = ort.InferenceSession(str(detector_model), sess_options=options,
                                    providers=["CPUExecutionProvider"])
    sym = load_symspell(args.assets)
    started = time.perf_counter()
    load_seconds = started - load_start

    rows = []
    failed = 0
    for seq, path in enumerate(images):
        t0 = time.perf_counter()
        try:
            rows.append(process(path, seq, (session, detector), sym, args))
        except (OSError, ValueError) as e:  # an unreadable image: reported, the run goes on
            print(f"{path}: cannot read or decode: {e}; remove it from the folder", file=sys.stderr)
            failed += 1
            continue
        print(f"{path.name}: {time.perf_counter() - t0:.2f} s, PSNR {float(rows[-1]['psnr_db']):.2f} dB",
              file=sys.stderr)
    with open(args.out / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([row.get(c, "") for c in CSV_COLUMNS])
    seconds = time.perf_counter() - started
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "frames": len(rows), "failed": failed, "seconds": round(seconds, 4),
        "fps": round(len(rows) / seconds, 4) if seconds > 0 else 0.0,
        "load_seconds": round(load_seconds, 4), "peak_rss_mib": round(peak_rss_mib, 1),
        "intra_threads": args.intra_threads, "snr_db": args.snr, "modulation": args.modulation,
        "onnxruntime": ort.__version__,
    }))


if __name__ == "__main__":
    main()
