#!/usr/bin/env python3
"""Text correction by SNR from `dataflow sweep` folders: one markdown table and one plot.

    bench/python/.venv/bin/python bench/python/correction_table.py \
        symspell=/tmp/k24-symspell noisy_channel=/tmp/k24-noisy_channel --out wer.png

Each LABEL=DIR is the output folder of a sweep of the same graph, images and SNRs with a
different corrector (`--set stage.correct.model=...`). From each folder's `summary.csv`
it takes the mean and 95 % CI of `wer`, `object_recall` and `bleu4` per SNR, and from
the first folder `ber` and `wer_received` (the received text does not depend on the
corrector). Prints a markdown table (with n, the rows behind each mean, and the rows
whose sent text names a COCO object, behind object recall) and writes a
two-panel PNG: WER (received and each corrector) and object recall, against SNR.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_summary(folder: Path) -> dict[tuple[float, str], dict[str, float]]:
    path = folder / "summary.csv"
    if not path.is_file():
        sys.exit(f"correction_table.py: {path} is missing; is {folder} a finished `dataflow sweep` folder?")
    out: dict[tuple[float, str], dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out[(float(row["snr_db"]), row["metric"])] = {
                k: float(row[k]) if row[k] not in ("", "NaN", "nan") else float("nan")
                for k in ("n", "mean", "ci95_low", "ci95_high")
            }
    return out


def cell(s: dict, snr: float, metric: str) -> str:
    v = s.get((snr, metric))
    return "–" if v is None else f"{v['mean']:.3f}"


def draw(ax, points, label: str, colour: str) -> None:
    """Mean and 95 % CI band (clipped to [0, 1]) of one series."""
    pts = [(x, v) for x, v in points if v is not None]
    xs = [x for x, _ in pts]
    ax.plot(xs, [v["mean"] for _, v in pts], marker="o", label=label, color=colour)
    ax.fill_between(xs, [max(v["ci95_low"], 0.0) for _, v in pts],
                    [min(v["ci95_high"], 1.0) for _, v in pts], alpha=0.15, color=colour)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LABEL=SWEEP_DIR, one per corrector")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = ap.parse_args()
    runs = []
    for spec in args.runs:
        label, sep, folder = spec.partition("=")
        if not sep:
            sys.exit(f"correction_table.py: `{spec}` is not LABEL=DIR")
        runs.append((label, read_summary(Path(folder))))
    first = runs[0][1]
    snrs = sorted({snr for snr, metric in first if metric == "wer"})
    header = ["SNR dB", "n", "n recall", "BER", "WER received"]
    header += [f"WER {label}" for label, _ in runs]
    header += [f"object recall {label}" for label, _ in runs]
    header += [f"BLEU-4 {label}" for label, _ in runs]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for snr in snrs:
        n = int(first[(snr, "wer")]["n"])
        rec = first.get((snr, "object_recall"))
        row = [f"{snr:g}", str(n), str(int(rec["n"])) if rec else "0", cell(first, snr, "ber"),
               cell(first, snr, "wer_received")]
        row += [cell(s, snr, "wer") for _, s in runs]
        row += [cell(s, snr, "object_recall") for _, s in runs]
        row += [cell(s, snr, "bleu4") for _, s in runs]
        print("| " + " | ".join(row) + " |")

    fig, (ax_wer, ax_rec) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = defaultdict(list)
    series["received"] = [(s, first.get((s, "wer_received"))) for s in snrs]
    for label, s in runs:
        series[label] = [(snr, s.get((snr, "wer"))) for snr in snrs]
    colour = {label: f"C{i}" for i, label in enumerate(series)}
    for label, points in series.items():
        draw(ax_wer, points, label, colour[label])
    for label, s in runs:
        draw(ax_rec, [(snr, s.get((snr, "object_recall"))) for snr in snrs], label, colour[label])
    ax_wer.set(xlabel="SNR Es/N0 (dB)", ylabel="word error rate", title="WER of the text after the channel",
               ylim=(0, 1.02))
    ax_rec.set(xlabel="SNR Es/N0 (dB)", ylabel="object recall",
               title="object names sent that survive correction", ylim=(0, 1.02))
    for ax in (ax_wer, ax_rec):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"\nplot: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
