#!/usr/bin/env python3
"""Convert an ESRGAN-slim TF.js layers model of `@upscalerjs/esrgan-slim` to ONNX.

Run by `scripts/setup-assets` with the Python of its conversion venv (tensorflow-cpu,
tf2onnx, onnx, numpy<2, tensorflow-hub pinned in `scripts/assets.json`, tensorflowjs
installed without its dependencies), never at run time:

    convert-esrgan.py convert MODEL.json OUT.onnx --scale 4 [--opset 13]
    convert-esrgan.py verify OUT.onnx --model MODEL.json --scale 4 --image PHOTO \
        [--tolerance 1e-3]

The package's models are Keras functional models of standard layers (an RDN: `Conv2D`,
`Concatenate`, `Add`, `UpSampling2D`; `architecture: "rdn"` in the package's
`getModelDefinition.js`, whose input and output range is 0–255). `convert` loads the
model into Keras with `tensorflowjs` and writes it with `tf2onnx.convert.from_keras`.

`tensorflowjs` 4.17 imports `tensorflow_decision_forests` and `jax` at import time for
converters this script does not use; empty stand-in modules are registered for them so
neither needs installing (they are not on the code path that loads a layers model).

tf2onnx's output is not byte-stable, so the result is checked instead by its tensors
(input `LR` f32 `[-1, -1, -1, 3]`, output `SR` f32 `[-1, -1, -1, 3]`, NHWC, RGB 0–255)
and by a reference: the Keras model and the ONNX model (onnxruntime, CPU) on the same
sample photo (a 96×64 crop) must agree within `--tolerance` (max absolute difference, in
0–255 units), and the output must be `scale` times the input. `verify` prints one JSON
line and exits 1 when it fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from pathlib import Path

INPUT = "LR"
OUTPUT = "SR"
# The crop of the reference photo fed to both models (x, y, width, height).
CROP = (200, 60, 96, 64)


def quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("PYTHONHASHSEED", "0")


def stub_modules() -> None:
    """Empty modules for the imports of tensorflowjs' unused converters (see the docs)."""
    for name in ("tensorflow_decision_forests", "jax", "jax.experimental", "jax.experimental.jax2tf"):
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
    sys.modules["jax"].experimental = sys.modules["jax.experimental"]
    sys.modules["jax.experimental"].jax2tf = sys.modules["jax.experimental.jax2tf"]


def load_keras(model_json: Path):
    stub_modules()
    from tensorflowjs.converters import keras_tfjs_loader

    return keras_tfjs_loader.load_keras_model(str(model_json), load_weights=True)


def modern_resize(onnx_model) -> int:
    """Replaces the deprecated `tf_half_pixel_for_nn` of the nearest-neighbour Resize nodes
    (onnxruntime warns about it on every load) by `asymmetric` + `floor`: for the integer
    scale of UpSampling2D both pick source pixel floor(x / s). `verify` checks the result."""
    count = 0
    for node in onnx_model.graph.node:
        if node.op_type != "Resize":
            continue
        attrs = {a.name: a for a in node.attribute}
        mode = attrs.get("coordinate_transformation_mode")
        if mode is not None and mode.s == b"tf_half_pixel_for_nn":
            mode.s = b"asymmetric"
            if "nearest_mode" in attrs:
                attrs["nearest_mode"].s = b"floor"
            else:
                from onnx import helper

                node.attribute.append(helper.make_attribute("nearest_mode", "floor"))
            count += 1
    return count


def convert(args) -> int:
    import tensorflow as tf
    import tf2onnx

    model = load_keras(args.model)
    spec = [tf.TensorSpec((None, None, None, 3), tf.float32, name=INPUT)]
    onnx_model, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=args.opset)
    # Name the output `SR` whatever the Keras output tensor was called.
    old = onnx_model.graph.output[0].name
    if old != OUTPUT:
        for node in onnx_model.graph.node:
            node.output[:] = [OUTPUT if o == old else o for o in node.output]
        onnx_model.graph.output[0].name = OUTPUT
    fixed = modern_resize(onnx_model)
    onnx_model.doc_string = ""
    args.out.write_bytes(onnx_model.SerializeToString())
    print(f"convert: {args.model} -> {args.out} ({args.out.stat().st_size} bytes, "
          f"{fixed} Resize nodes moved off tf_half_pixel_for_nn)", flush=True)
    return 0


def reference_input(image: Path):
    import numpy as np
    from PIL import Image

    x, y, w, h = CROP
    img = Image.open(image).convert("RGB").crop((x, y, x + w, y + h))
    return np.asarray(img, dtype=np.float32)[None]


def verify(args) -> int:
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(args.onnx))
    onnx.checker.check_model(model)

    def spec(v):
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return (v.name, dims) if t.elem_type == onnx.TensorProto.FLOAT else (v.name, "not f32")

    inputs = [spec(v) for v in model.graph.input]
    outputs = [spec(v) for v in model.graph.output]
    problems = []
    if inputs != [(INPUT, [-1, -1, -1, 3])]:
        problems.append(f"inputs {inputs}, expected [('{INPUT}', [-1, -1, -1, 3])]")
    if outputs != [(OUTPUT, [-1, -1, -1, 3])]:
        problems.append(f"outputs {outputs}, expected [('{OUTPUT}', [-1, -1, -1, 3])]")
    x = reference_input(args.image)
    session = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT], {INPUT: x})[0]
    want = load_keras(args.model).predict(x, verbose=0)
    expect_shape = (1, x.shape[1] * args.scale, x.shape[2] * args.scale, 3)
    if got.shape != expect_shape or want.shape != expect_shape:
        problems.append(f"output shapes onnx {got.shape}, keras {want.shape}, expected {expect_shape}")
        diff = float("inf")
    else:
        diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    if not diff <= args.tolerance:
        problems.append(f"ONNX differs from Keras by {diff:.3g} (> {args.tolerance})")
    result = {
        "ok": not problems,
        "scale": args.scale,
        "image": args.image.name,
        "crop": list(CROP),
        "max_abs_diff": diff,
        "tolerance": args.tolerance,
        "output_mean": round(float(got.mean()), 3),
        "problems": problems,
    }
    print(json.dumps(result), flush=True)
    return 1 if problems else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("model", type=Path, help="the TF.js model.json (weights beside it)")
    c.add_argument("out", type=Path, help="the ONNX file to write")
    c.add_argument("--scale", type=int, required=True)
    c.add_argument("--opset", type=int, default=13)
    v = sub.add_parser("verify")
    v.add_argument("onnx", type=Path)
    v.add_argument("--model", type=Path, required=True, help="the TF.js model.json it came from")
    v.add_argument("--scale", type=int, required=True)
    v.add_argument("--image", type=Path, required=True)
    v.add_argument("--tolerance", type=float, default=1e-3)
    args = ap.parse_args()
    quiet_tf()
    return verify(args) if args.cmd == "verify" else convert(args)


if __name__ == "__main__":
    sys.exit(main())
