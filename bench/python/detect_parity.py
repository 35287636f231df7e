#!/usr/bin/env python3
"""Parity of the Rust COCO detector (dataflow_models::detect) with onnxruntime-Python.

    bench/python/setup && bench/python/.venv/bin/python bench/python/detect_parity.py

Runs the ignored test `detect_parity_dump` (cargo nextest), which writes for every sample
photo in assets/samples the model input the Rust side made (raw f32, NHWC), its raw
`[100, 6]` output and the detections it kept. Then feeds the same input to the same
`assets/models/detect/centernet.onnx` through onnxruntime (the version of
bench/python/requirements.txt, the runtime the Rust side loads) and compares:
  raw      every box coordinate (model pixels) and score: max |Rust - Python| <= 1e-4;
  kept     the Python port of `postprocess` (threshold, scaling, clipping, class-wise NMS,
           max_objects) on Python's raw output gives the same classes, boxes and scores
           (scores within 1e-4).
Exit 1 on any difference. `--skip-dump` reuses an existing dump (`--dump DIR`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[2]
THRESHOLD = 0.4  # detect::DEFAULT_SCORE_THRESHOLD
MAX_OBJECTS = 10  # detect::DEFAULT_MAX_OBJECTS
NMS_IOU = 0.5  # detect::NMS_IOU
SIDE = 512
TOL = 1e-4


def iou(a, b) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    x0, y0 = max(ax0, bx0), max(ay0, by0)
    x1, y1 = min(ax0 + aw, bx0 + bw), min(ay0 + ah, by0 + bh)
    if x1 <= x0 or y1 <= y0:
        return 0.0
    inter = (x1 - x0) * (y1 - y0)
    return inter / (aw * ah + bw * bh - inter)


def rust_round(v: float) -> float:
    """f64::round: halves away from zero (Python's round() goes to even)."""
    return float(np.sign(v) * np.floor(abs(v) + 0.5))


def postprocess(raw: np.ndarray, width: int, height: int, names: list[str]) -> list[dict]:
    sx, sy = width / SIDE, height / SIDE
    found = []
    for r in raw.reshape(-1, 6).astype(np.float64):
        score, cls = r[4], r[5]
        if not np.isfinite(score) or score < np.float32(THRESHOLD):
            continue
        if not (np.isfinite(cls) and cls >= 0 and cls == int(cls) and int(cls) < len(names)):
            continue
        clip = lambda v, s, m: min(max(rust_round(v * s), 0.0), float(m))
        x0, y0 = clip(r[0], sx, width), clip(r[1], sy, height)
        x1, y1 = clip(r[2], sx, width), clip(r[3], sy, height)
        if x1 <= x0 or y1 <= y0:
            continue
        found.append({"class": names[int(cls)], "score": float(np.float32(score)),
                      "box": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)]})
    found.sort(key=lambda d: -d["score"])  # stable, like sort_by on total_cmp
    kept = []
    for d in found:
        if not any(k["class"] == d["class"] and iou(k["box"], d["box"]) > NMS_IOU for k in kept):
            kept.append(d)
        if len(kept) == MAX_OBJECTS:
            break
    return kept


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dump", type=Path, default=REPO / "target" / "detect-parity")
    ap.add_argument("--skip-dump", action="store_true")
    args = ap.parse_args()
    if not args.skip_dump:
        cmd = ["cargo", "nextest", "run", "--all-features", "--run-ignored", "only",
               "-E", "test(detect_parity_dump)"]
        env = dict(os.environ, DETECT_PARITY_OUT=str(args.dump))
        subprocess.run(cmd, cwd=REPO, env=env, check=True)
    rust = json.loads((args.dump / "rust.json").read_text())
    names, dump = rust["coco_names"], rust["photos"]
    session = ort.InferenceSession(str(REPO / "assets/models/detect/centernet.onnx"),
                                   providers=["CPUExecutionProvider"])
    worst, failures = 0.0, []
    for item in dump:
        x = np.fromfile(args.dump / f"{item['name']}.input.f32", dtype="<f4").reshape(1, SIDE, SIDE, 3)
        raw_py = session.run(["tower_0/detections"], {"tower_0/images:0": x})[0][0]
        raw_rs = np.asarray(item["raw"], dtype=np.float32).reshape(-1, 6)
        diff = float(np.max(np.abs(raw_py[:, :5] - raw_rs[:, :5])))
        same_classes = bool(np.array_equal(raw_py[:, 5], raw_rs[:, 5]))
        worst = max(worst, diff)
        kept_py = postprocess(raw_py, item["width"], item["height"], names)
        kept_rs = item["objects"]
        kept_ok = len(kept_py) == len(kept_rs) and all(
            a["class"] == b["class"] and a["box"] == b["box"] and abs(a["score"] - b["score"]) <= TOL
            for a, b in zip(kept_py, kept_rs))
        print(f"{item['name']:16} raw max|diff| {diff:.2e}  classes equal {same_classes}  "
              f"kept {[(d['class'], round(d['score'], 3), d['box']) for d in kept_rs]} equal {kept_ok}")
        if diff > TOL or not same_classes or not kept_ok:
            failures.append(item["name"])
    print(f"detect parity: {len(dump)} photos, worst raw difference {worst:.2e} (tolerance {TOL:g}); "
          f"{'FAIL ' + ', '.join(failures) if failures else 'ok'}")
    return 1 if failures else 0



if __name__ == "__main__":
    sys.exit(main())
