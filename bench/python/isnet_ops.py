"""Inside the ISNet stage: ONNX Runtime's own profiler, time per operator type.

    bench/python/.venv/bin/python bench/python/isnet_ops.py [--model PATH] [--runs N] [--threads N]

`perf` (bench/profile-multisc) stops at libonnxruntime, which ships stripped. This runs
the same model file the `segment` stage loads (assets/models/isnet/isnet-medium.onnx),
with the same runtime version and one intra-op thread (the graph's `intra_threads = 1`),
on a 1x3x1024x1024 input (ISNet's cost does not depend on the pixels), with
`enable_profiling`, and sums the profiler's per-node kernel times by operator type over
N runs after the warm-up runs (default 2: the second run still grows ONNX Runtime's
memory arena and is much slower). Prints a table: operator, nodes, ms per frame, share.
"""

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "assets/models/isnet/isnet-medium.onnx"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if not Path(args.model).is_file():
        raise SystemExit(f"{args.model}: no such model; run `make setup` (scripts/setup-assets) first")

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "isnet")
    sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, 3, 1024, 1024), dtype=np.float32)
    walls = []
    for _ in range(args.warmup + args.runs):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        walls.append(time.perf_counter() - t0)
    trace = json.load(open(sess.end_profiling()))

    # Node events ("cat": "Node", name "<node>_kernel_time"), one per node per run; those
    # before the end of the last warm-up run are left out.
    runs = sorted((e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])
    last_warm = runs[args.warmup - 1] if args.warmup > 0 and len(runs) >= args.warmup else None
    cutoff = last_warm["ts"] + last_warm["dur"] if last_warm else 0
    per_op, nodes = defaultdict(float), defaultdict(set)
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= cutoff:
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] += e["dur"] / 1000.0 / args.runs
            nodes[op].add(e["name"])
    total = sum(per_op.values())
    timed = sorted(walls[args.warmup:])
    wall = timed[len(timed) // 2] * 1000
    print(f"ISNet {Path(args.model).name}, onnxruntime {ort.__version__}, intra_op_num_threads={args.threads}, "
          f"median wall {wall:.0f} ms per frame over {args.runs} runs (after {args.warmup} warm-up runs: "
          f"{', '.join(f'{w * 1000:.0f}' for w in walls[:args.warmup])} ms); "
          f"kernels sum to {total:.0f} ms")
    print()
    print(f"| {'operator':<22} | {'nodes':>5} | {'ms / frame':>10} | {'share':>6} |")
    print("|------------------------|-------|------------|--------|")
    for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1]):
        if ms / total >= 0.002:
            print(f"| {op:<22} | {len(nodes[op]):>5} | {ms:>10.1f} | {100 * ms / total:>5.1f}% |")


if __name__ == "__main__":
    main()
