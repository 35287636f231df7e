"""The summary table at the end of `bench/run`: headline numbers, peers and ratios.

    python3 bench/summarize.py STEP_DIR

STEP_DIR holds one `<step>.txt` per step of bench/run (its whole output). Each table row
is read back from the step's own printed table, so the summary can never disagree with
the log above it. A step that is missing or printed no table is listed as such.
Standard library only.
"""

import re
import sys
from pathlib import Path


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def table_row(text: str, first_cell: str) -> list[str] | None:
    """The last markdown row whose first cell starts with `first_cell`."""
    rows = [cells(line) for line in text.splitlines() if line.lstrip().startswith("|")]
    hits = [r for r in rows if r and r[0].startswith(first_cell)]
    return hits[-1] if hits else None


def num(s: str) -> float:
    return float(s.replace(",", "").split()[0])


def dora_policy(text: str) -> str:
    m = re.search(r"queue_policy (\w+)", text)
    return m.group(1) if m else "?"


def main() -> None:
    steps = Path(sys.argv[1])
    read = lambda name: (steps / f"{name}.txt").read_text() if (steps / f"{name}.txt").exists() else ""
    out: list[tuple[str, str, str, str, str]] = []  # benchmark, ours, peer, ratio, target

    engine, gst, dora = read("engine"), read("gstreamer-chain"), read("dora-chain")
    e_rates = {}
    for case in ("1 KiB, saturated", "6 MiB, saturated"):
        r = table_row(engine, case)
        if r:
            e_rates[case] = num(r[1])
            out.append((f"engine, {case}", f"{num(r[1]):,.0f} msg/s", f"tokio channels {num(r[2]):,.0f}", f"{num(r[3]):.2f}", ">= 0.5"))
        # bench/gstreamer-chain: | case | buffers | buffers/s (appsrc, one shared buffer,
        # clock in the process) | hop µs | old buf/s (fakesrc, gst-launch wall clock) | ...
        g = table_row(gst, case)
        if r and g:
            out.append((f"engine vs GStreamer appsrc (shared buffer, same clock), {case}", f"{num(r[1]):,.0f} msg/s",
                        f"gst appsrc + 8 queues {num(g[2]):,.0f}", f"{num(r[1]) / num(g[2]):.2f}", "> 1"))
            if len(g) > 4 and g[4]:
                out.append((f"  old: vs gst-launch fakesrc (buffer per msg, wall clock), {case}", f"{num(r[1]):,.0f} msg/s",
                            f"gst fakesrc + 8 queues {num(g[4]):,.0f}", f"{num(r[1]) / num(g[4]):.2f}", ""))
        # bench/dora-chain: | case | msgs | msg/s | hop µs | received | per run |
        d = table_row(dora, case)
        if r and d:
            out.append((f"engine vs dora (process per node, {dora_policy(dora)}), {case}", f"{num(r[1]):,.0f} msg/s",
                        f"dora {num(d[2]):,.0f} ({d[4]} received)", f"{num(r[1]) / num(d[2]):.2f}", "> 1"))
    if len(e_rates) == 2:
        small, large = e_rates["1 KiB, saturated"], e_rates["6 MiB, saturated"]
        out.append(("engine, 6 MiB / 1 KiB rate", f"{large:,.0f} / {small:,.0f}", "", f"{large / small:.2f}", "~1 (flat)"))
    r = table_row(engine, "1 KiB, paced")
    if r:
        peers = [f"tokio {r[7]}"]
        g, d = table_row(gst, "1 KiB, paced"), table_row(dora, "1 KiB, paced")
        if g:
            peers.append(f"gst {g[3]}")
        if d:
            peers.append(f"dora {d[3]}")
        out.append(("hop latency, paced 1 KiB, p50 / p99 µs", f"{r[6]} µs", "; ".join(peers), "", ""))

    channel, channel_np = read("channel"), read("channel-numpy")
    for m in ("bpsk", "qpsk", "qam16", "qam64"):
        r, p = table_row(channel, m), table_row(channel_np, f"numpy {m}")
        if r:
            peer, ratio = (f"numpy {num(p[5]):.1f}", f"{num(r[5]) / num(p[5]):.2f}") if p else ("", "")
            out.append((f"channel {m}: modulate + AWGN + demodulate, 1 core", f"{num(r[5]):.1f} Msym/s", peer, ratio, ""))

    # cargo bench --bench ldpc: "<snr> dB  <decoder>  <Mbit/s> <mean iter> <BLER>" rows
    ldpc = read("ldpc")
    for snr in ("1", "-1"):
        def mbps(name: str) -> float | None:
            m = re.search(rf"^{re.escape(snr)} dB\s+{re.escape(name)}\s+([\d.]+)", ldpc, re.M)
            return float(m.group(1)) if m else None
        for ours, peer, rule in (("dataflow layered min-sum (0.75)", "ldpc-toolbox HL min-sum f32 (0.75)", "min-sum"),
                                 ("dataflow layered sum-product", "ldpc-toolbox HLPhif32", "sum-product")):
            a, b = mbps(ours), mbps(peer)
            if a and b:
                out.append((f"LDPC {rule}, BG1 Z=384, {snr} dB, same rule + f32, 1 core", f"{a:.2f} Mbit/s",
                            f"ldpc-toolbox {b:.2f}", f"{a / b:.2f}", ""))

    bp = read("backpressure-memory")
    flat = re.search(r"second-half peak vs first-half peak: ([+-][\d.]+) % \((.*?),", bp)
    bound = re.search(r"measured peak (\d+) MiB = ([\d.]+) frames above the baseline \((within|ABOVE) the bound\)", bp)
    total = re.search(r"= (\d+) MiB; measured peak", bp)
    frames = re.search(r"run: .*?, (\d+) frames in", bp)
    if flat and bound and total:
        n = frames.group(1) if frames else "?"
        out.append((f"backpressure, {n} 1080p frames: peak RSS after warm-up", f"{bound.group(1)} MiB",
                    f"bound {total.group(1)} MiB", f"{bound.group(3)} bound", "within"))
        out.append(("backpressure: 2nd-half vs 1st-half peak", f"{flat.group(1)} %", "", flat.group(2), "flat (< 5 %)"))

    mk = read("multisc-kodak")
    r = table_row(mk, "replicas=")
    if r:
        out.append(("Multi-SC lite on Kodak vs its slowest stage (segment) alone", f"{r[1]} fps, {r[4]} MiB",
                    f"segment alone {r[2]} fps, {r[5]} MiB", r[3], ">= 0.9"))
    r = table_row(mk, "pipeline vs python")
    if r:
        out.append(("Multi-SC lite on Kodak vs sequential Python (onnxruntime)", f"{r[1]} fps, {r[4]} MiB",
                    f"python {r[2]} fps, {r[5]} MiB", r[3], "> 1"))

    prof = read("profile-multisc")
    m = re.search(r"== 1\. by thread.*?==\n((?:.*\n){1,3})", prof)
    if m:
        top = "; ".join(" ".join(line.split()) for line in m.group(1).strip().splitlines())
        out.append(("profile: CPU share by thread (top 3)", top, "", "", ""))

    ops = [cells(line) for line in read("isnet-ops").splitlines() if line.startswith("| ") and "operator" not in line]
    if ops:
        top = "; ".join(f"{r[0]} {r[3]}" for r in ops[:3])
        out.append(("inside ISNet (onnxruntime profiler, 1 thread): top operators", top, "", "", ""))

    print()
    print("== summary (medians as printed by each step above) ==")
    if not out:
        print("no step printed a table")
        return
    heads = ("benchmark", "ours", "peer", "ratio", "target")
    widths = [max(len(h), *(len(row[i]) for row in out)) for i, h in enumerate(heads)]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"
    print(line(heads))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in out:
        print(line(row))


if __name__ == "__main__":
    main()
