#!/usr/bin/env python3
"""Parity of the Rust ESRGAN-slim upscaler (dataflow_models::esrgan) with onnxruntime-Python.

    bench/python/setup && bench/python/.venv/bin/python bench/python/esrgan_parity.py

Runs the ignored test `esrgan_parity_dump` (cargo test -p dataflow-models --test esrgan),
which writes the model input the Rust side made (a 48×40 test image, raw f32 NHWC, 0–255)
and, for every scale (×2, ×3, ×4, ×8), the raw output of one model run. Then feeds the
same input to the same `assets/models/esrgan/esrgan-slim-x{S}.onnx` through onnxruntime
(the version of bench/python/requirements.txt, the runtime the Rust side loads) and
compares every output value: max |Rust - Python| <= 1e-4 (in 0–255 units).
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
TOL = 1e-4


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dump", type=Path, default=REPO / "target" / "esrgan-parity")
    ap.add_argument("--skip-dump", action="store_true")
    args = ap.parse_args()
    if not args.skip_dump:
        cmd = ["cargo", "test", "-p", "dataflow-models", "--test", "esrgan", "--",
               "--ignored", "--exact", "esrgan_parity_dump", "--nocapture"]
        env = dict(os.environ, ESRGAN_PARITY_OUT=str(args.dump.resolve()))
        subprocess.run(cmd, cwd=REPO, env=env, check=True)
    rust = json.loads((args.dump / "rust.json").read_text())
    w, h = rust["width"], rust["height"]
    x = np.fromfile(args.dump / "input.f32", dtype="<f4").reshape(1, h, w, 3)
    worst, failures = 0.0, []
    for item in rust["scales"]:
        s = item["scale"]
        model = REPO / "assets" / "models" / "esrgan" / f"esrgan-slim-x{s}.onnx"
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        py = session.run(["SR"], {"LR": x})[0]
        rs = np.fromfile(args.dump / f"x{s}.output.f32", dtype="<f4")
        if rs.size != py.size:
            print(f"x{s}: Rust wrote {rs.size} values, Python made {py.shape}")
            failures.append(f"x{s}")
            continue
        diff = float(np.max(np.abs(py.reshape(-1).astype(np.float64) - rs.astype(np.float64))))
        worst = max(worst, diff)
        print(f"x{s}: output {list(py.shape)}, max |Rust - Python| {diff:.2e}")
        if not diff <= TOL:
            failures.append(f"x{s}")
    print(f"esrgan parity: {len(rust['scales'])} scales, worst difference {worst:.2e} "
          f"(tolerance {TOL:g}); {'FAIL ' + ', '.join(failures) if failures else 'ok'}")
    return 1 if failures or not rust["scales"] else 0


if __name__ == "__main__":
    sys.exit(main())
