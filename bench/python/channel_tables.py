"""Markdown tables that put two sweeps of the same graphs side by side (e.g. AWGN and
Rayleigh fading): one table per metric, one row per graph, one column per SNR, each
cell `first / second`, plus the channel uses per pixel and the seeds each point took.

    python bench/python/channel_tables.py /tmp/fade-awgn /tmp/fade-rayleigh \
        --metrics psnr_db ssim wer detection_f1

Reads each sweep's `summary.csv` (columns graph, snr_db, metric, n, seeds, mean, ...).
Standard library only.
"""

import argparse
import csv
import sys
from pathlib import Path

DIGITS = {"psnr_db": 2}
# Semantic systems first, then the pixel baselines; other graphs after, by name.
ORDER = ["multisc-lite", "single-text-lite", "thumbnail-lite", "bpg-ldpc", "deep-jscc"]


def load(folder):
    """{(graph, snr, metric): row} of one sweep's summary.csv."""
    path = Path(folder) / "summary.csv"
    if not path.exists():
        sys.exit(f"{path}: no summary.csv (is {folder} a finished `dataflow sweep --out`?)")
    with path.open() as f:
        return {(r["graph"], float(r["snr_db"]), r["metric"]): r for r in csv.DictReader(f)}


def cell(row, metric, key="mean"):
    if row is None:
        return "–"
    value = float(row[key])
    return f"{value:.{DIGITS.get(metric, 3)}f}"


def seeds(row):
    return "–" if row is None else row["seeds"]


def table(a, b, metric, graphs, snrs):
    head = "| graph | ch. uses / px | " + " | ".join(f"{s:g} dB" for s in snrs) + " |"
    lines = [head, "|---" * (len(snrs) + 2) + "|"]
    for g in graphs:
        if not any((g, s, metric) in a or (g, s, metric) in b for s in snrs):
            continue
        cu = "{} / {}".format(
            cell(a.get((g, snrs[0], "channel_uses_per_pixel")), "cu"),
            cell(b.get((g, snrs[0], "channel_uses_per_pixel")), "cu"),
        )
        cells = [f"{cell(a.get((g, s, metric)), metric)} / {cell(b.get((g, s, metric)), metric)}" for s in snrs]
        lines.append(f"| {g} | {cu} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_table(a, b, graphs, snrs, metric):
    lines = ["| graph | " + " | ".join(f"{s:g} dB" for s in snrs) + " |", "|---" * (len(snrs) + 1) + "|"]
    for g in graphs:
        cells = [f"{seeds(a.get((g, s, metric)))} / {seeds(b.get((g, s, metric)))}" for s in snrs]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("first", help="sweep folder shown first in each cell (e.g. AWGN)")
    p.add_argument("second", help="sweep folder shown second (e.g. Rayleigh)")
    p.add_argument("--metrics", nargs="+", default=["psnr_db", "ssim", "wer", "detection_f1"])
    args = p.parse_args()
    a, b = load(args.first), load(args.second)
    graphs = sorted({k[0] for k in a} | {k[0] for k in b}, key=lambda g: (ORDER.index(g) if g in ORDER else len(ORDER), g))
    snrs = sorted({k[1] for k in a} | {k[1] for k in b})
    for metric in args.metrics:
        print(f"\n{metric}, first / second:\n")
        print(table(a, b, metric, graphs, snrs))
    print("\nseeds per point (psnr_db rows), first / second:\n")
    print(seeds_table(a, b, graphs, snrs, "psnr_db"))


if __name__ == "__main__":
    main()
