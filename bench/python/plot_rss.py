"""Draw a `t_s,vmrss_kib` CSV (bench/backpressure-memory) as a PNG line chart.

    python bench/python/plot_rss.py IN.csv OUT.png --title T [--baseline-kib K] [--bound-kib K] [--warmup-s S]

The baseline (the same graph with 16x16 frames) and the bound the edge capacities imply
are drawn as horizontal lines, the warm-up as a shaded band, so a reader sees at once
whether the curve is flat and under the bound. Needs matplotlib (bench/python/setup).
"""

import argparse
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("png")
    ap.add_argument("--title", default="VmRSS")
    ap.add_argument("--baseline-kib", type=float)
    ap.add_argument("--bound-kib", type=float)
    ap.add_argument("--warmup-s", type=float, default=0.0)
    args = ap.parse_args()

    with open(args.csv, newline="") as f:
        rows = [(float(r["t_s"]), int(r["vmrss_kib"]) / 1024) for r in csv.DictReader(f)]
    if not rows:
        raise SystemExit(f"{args.csv}: no samples (was the run too short to sample?)")
    t, mib = zip(*rows)

    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    if args.warmup_s > 0:
        ax.axvspan(0, args.warmup_s, color="0.92", label=f"warm-up ({args.warmup_s:.0f} s)")
    ax.plot(t, mib, lw=0.8, color="tab:blue", label="VmRSS (sampled every 200 ms)")
    if args.bound_kib:
        ax.axhline(args.bound_kib / 1024, color="tab:red", ls="--", lw=1, label="bound from edge capacities")
    if args.baseline_kib:
        ax.axhline(args.baseline_kib / 1024, color="0.4", ls=":", lw=1, label="baseline (16x16 frames)")
    top = max(max(mib), (args.bound_kib or 0) / 1024)
    ax.set_ylim(0, top * 1.15)
    ax.set_xlim(0, max(t))
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("MiB")
    ax.set_title(args.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.png)


if __name__ == "__main__":
    main()
