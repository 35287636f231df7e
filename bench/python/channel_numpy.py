"""The channel model the research-code way, in numpy: the channel benchmark's peer, and
the channel of the sequential Multi-SC peer (multisc_sequential.transmit_bytes).

    python bench/python/channel_numpy.py [--bytes N] [--reps N] [--snr-db DB]

Per repetition, on one core (numpy's elementwise kernels are single-threaded; run with
OMP_NUM_THREADS=1 anyway), the same four steps as `cargo bench --bench channel`:
bytes -> bits (np.unpackbits), Gray-coded modulation (BPSK on the real axis; square QAM
as two Gray PAM axes, unit average energy, the same constellations as
models/src/channel.rs), AWGN at Es/N0 = SNR (two standard normals per symbol from
numpy's PCG64 generator, where the Rust side uses ChaCha8), and hard decisions back to
bits. Prints the same table as the Rust bench (millions of symbols per second from the
median time of each step) with a BER column to show both do the same work.
"""

import argparse
import time

import numpy as np

BITS = {"bpsk": 1, "qpsk": 2, "qam16": 4, "qam64": 6}
SCALE = {"bpsk": 1.0, "qpsk": np.sqrt(2.0), "qam16": np.sqrt(10.0), "qam64": np.sqrt(42.0)}


def pam_tables(bits: int, scale: float):
    """Amplitude of each Gray code word, and Gray bits of each level index (MSB first)."""
    levels = 1 << bits
    idx = np.arange(levels)
    gray = idx ^ (idx >> 1)
    amplitude_of_gray = np.empty(levels)
    amplitude_of_gray[gray] = (2.0 * idx - (levels - 1)) / scale
    gray_bits = ((gray[:, None] >> np.arange(bits - 1, -1, -1)) & 1).astype(np.uint8)
    return amplitude_of_gray, gray_bits


def modulate(bits: np.ndarray, name: str) -> np.ndarray:
    k = BITS[name]
    per_axis = 1 if name == "bpsk" else k // 2
    amp, _ = pam_tables(per_axis, SCALE[name])
    pad = (-len(bits)) % k
    b = np.concatenate([bits, np.zeros(pad, np.uint8)]) if pad else bits
    weights = 1 << np.arange(per_axis - 1, -1, -1)
    if name == "bpsk":
        return amp[b].astype(np.complex128)
    words = b.reshape(-1, 2, per_axis) @ weights
    return amp[words[:, 0]] + 1j * amp[words[:, 1]]


def demodulate_hard(symbols: np.ndarray, name: str, n_bits: int) -> np.ndarray:
    k = BITS[name]
    per_axis = 1 if name == "bpsk" else k // 2
    levels = 1 << per_axis
    _, gray_bits = pam_tables(per_axis, SCALE[name])

    def nearest(y):
        return np.clip(np.rint((y * SCALE[name] + (levels - 1)) / 2.0), 0, levels - 1).astype(np.intp)

    if name == "bpsk":
        return gray_bits[nearest(symbols.real)].reshape(-1)[:n_bits]
    i, q = nearest(symbols.real), nearest(symbols.imag)
    return np.concatenate([gray_bits[i], gray_bits[q]], axis=1).reshape(-1)[:n_bits]


def add_awgn(symbols: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Complex AWGN at Es/N0 = snr_db (N0 = 10^(-SNR/10), N0/2 per dimension)."""
    sigma = np.sqrt(10 ** (-snr_db / 10) / 2)
    noise = rng.standard_normal((len(symbols), 2))
    return symbols + sigma * (noise[:, 0] + 1j * noise[:, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bytes", type=int, default=65536)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--snr-db", type=float, default=10.0)
    args = ap.parse_args()
    data = np.random.default_rng(1).integers(0, 256, args.bytes, dtype=np.uint8)
    print(f"numpy {np.__version__}; {args.bytes} bytes per repetition, median of {args.reps} (after one warm-up), Es/N0 {args.snr_db} dB")
    print()
    print(f"| {'mod':<12} | {'symbols':>9} | {'modulate':>10} | {'AWGN':>10} | {'demod hard':>10} | {'chain':>10} | {'chain + bits':>12} | {'chain Mbit/s':>13} | {'BER':>9} |")
    print("|--------------|-----------|------------|------------|------------|------------|--------------|---------------|-----------|")
    for name in BITS:
        times, errors, n_sym = [], 0, 0
        for rep in range(args.reps + 1):
            rng = np.random.default_rng(rep)
            t0 = time.perf_counter()
            bits = np.unpackbits(data)
            t1 = time.perf_counter()
            sym = modulate(bits, name)
            t2 = time.perf_counter()
            sym = add_awgn(sym, args.snr_db, rng)
            t3 = time.perf_counter()
            out = demodulate_hard(sym, name, len(bits))
            t4 = time.perf_counter()
            if rep > 0:
                times.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3))
                errors += int(np.count_nonzero(out != bits))
            n_sym = len(sym)
        med = np.median(np.array(times), axis=0)
        rate = lambda s: n_sym / s / 1e6
        chain = med[1] + med[2] + med[3]
        ber = errors / (args.reps * args.bytes * 8)
        print(f"| {'numpy ' + name:<12} | {n_sym:>9} | {rate(med[1]):>10.2f} | {rate(med[2]):>10.2f} | {rate(med[3]):>10.2f} | "
              f"{rate(chain):>10.2f} | {rate(chain + med[0]):>12.2f} | {rate(chain) * BITS[name]:>13.2f} | {ber:>9.2e} |")


if __name__ == "__main__":
    main()
