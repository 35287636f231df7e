#!/usr/bin/env python3
"""Deep JSCC (Bourtsoulatze, Burth Kurka, Gündüz, "Deep Joint Source-Channel Coding for
Wireless Image Transmission", IEEE TCCN 2019): train on image crops, export ONNX.

The network of the paper, fully convolutional so any image whose sides are multiples of
4 goes through:

  encoder: 5x5 conv 16 /2, PReLU; 5x5 conv 32 /2, PReLU; 3 x (5x5 conv 32, PReLU);
           5x5 conv c; power normalisation z~ = sqrt(k P) z / ||z|| (P = 1)
  channel: the c x H/4 x W/4 reals are k complex symbols (pairs along the channel axis),
           AWGN with N0 = 10^(-SNR/10), the same channel as dataflow's `[channel]`
  decoder: the mirror with transposed convolutions, PReLU, sigmoid output

Bandwidth ratio: k/n = c / 96 complex channel uses per real source symbol, i.e. c / 32
complex channel uses per pixel (c = 8: 1/12 and 0.25).

The channel is not in the exported graphs: dataflow's `jscc` stage runs
`encoder.onnx`, adds the noise itself (seeded per frame, like every channel stage) and
runs `decoder.onnx`.

Usage (CPU is enough; about 10 minutes):
  python models/export/deep_jscc.py --images DIR --snr 10 --out models/weights/deep_jscc/snr10
  python models/export/deep_jscc.py --images DIR --snr 10 --out ... --eval-images kodak24/

It writes encoder.onnx, decoder.onnx and training.json (data seen, steps, loss and the
PSNR of the held-out images at each evaluation SNR).
"""

import argparse
import json
import math
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


class Encoder(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        layers = []
        chans = [(3, 16, 2), (16, 32, 2), (32, 32, 1), (32, 32, 1), (32, 32, 1)]
        for cin, cout, stride in chans:
            layers += [nn.Conv2d(cin, cout, 5, stride, 2), nn.PReLU(cout)]
        layers.append(nn.Conv2d(32, c, 5, 1, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        z = self.net(x)
        # k complex symbols = numel / 2; scale so the mean energy per complex symbol is 1.
        # (k stays a traced value, so the exported graph normalises any image size.)
        flat = z.flatten(1)
        k = flat.shape[1] / 2
        norm = torch.sqrt(torch.sum(flat * flat, dim=1, keepdim=True))
        return (flat * torch.sqrt(torch.tensor(k, dtype=flat.dtype)) / norm).view_as(z)


class Decoder(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(c, 32, 5, 1, 2), nn.PReLU(32),
            nn.ConvTranspose2d(32, 32, 5, 1, 2), nn.PReLU(32),
            nn.ConvTranspose2d(32, 32, 5, 1, 2), nn.PReLU(32),
            nn.ConvTranspose2d(32, 16, 5, 2, 2, output_padding=1), nn.PReLU(16),
            nn.ConvTranspose2d(16, 3, 5, 2, 2, output_padding=1), nn.Sigmoid(),
        )

    def forward(self, y):
        return self.net(y)


def awgn(z, snr_db: float):
    # Complex AWGN: each real dimension gets variance N0/2.
    n0 = 10 ** (-snr_db / 10)
    return z + torch.randn_like(z) * math.sqrt(n0 / 2)


def load_images(folder: Path):
    exts = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in exts:
            img = Image.open(p).convert("RGB")
            if min(img.size) >= 64:
                out.append((p.name, np.asarray(img, dtype=np.float32) / 255.0))
    if not out:
        sys.exit(f"no images of at least 64x64 in {folder}")
    return out


def crops(images, size: int, batch: int, rng: random.Random):
    xs = []
    for _ in range(batch):
        _, img = images[rng.randrange(len(images))]
        h, w, _ = img.shape
        y0, x0 = rng.randrange(h - size + 1), rng.randrange(w - size + 1)
        c = img[y0:y0 + size, x0:x0 + size]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        xs.append(np.ascontiguousarray(c.transpose(2, 0, 1)))
    return torch.from_numpy(np.stack(xs))


def psnr(a, b):
    mse = torch.mean((a - b) ** 2).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def evaluate(enc, dec, images, snrs, seed=0):
    torch.manual_seed(seed)
    table = {}
    with torch.no_grad():
        for snr in snrs:
            vals = []
            for _, img in images:
                h, w = (img.shape[0] // 4) * 4, (img.shape[1] // 4) * 4
                x = torch.from_numpy(np.ascontiguousarray(img[:h, :w].transpose(2, 0, 1)))[None]
                vals.append(psnr(dec(awgn(enc(x), snr)), x))
            table[str(snr)] = round(float(np.mean(vals)), 3)
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, required=True, help="folder of training images (crops are drawn from it)")
    ap.add_argument("--snr", type=float, default=10.0, help="training SNR (Es/N0, dB)")
    ap.add_argument("--c", type=int, default=8, help="channels of the latent (bandwidth ratio c/96)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-images", type=Path, help="held-out folder for the PSNR curve (e.g. Kodak24)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    images = load_images(args.images)
    enc, dec = Encoder(args.c), Decoder(args.c)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    log = []
    t0 = time.time()
    for step in range(1, args.steps + 1):
        x = crops(images, args.crop, args.batch, rng)
        loss = torch.mean((dec(awgn(enc(x), args.snr)) - x) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps:
            p = 10 * math.log10(1 / max(loss.item(), 1e-12))
            log.append({"step": step, "mse": round(loss.item(), 6), "psnr_db": round(p, 3)})
            print(f"step {step}/{args.steps}  mse {loss.item():.5f}  psnr {p:.2f} dB  {time.time() - t0:.0f} s", flush=True)

    enc.eval()
    dec.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    x = torch.rand(1, 3, 64, 96)
    torch.onnx.export(enc, (x,), args.out / "encoder.onnx", input_names=["image"], output_names=["latent"],
                      dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                    "latent": {0: "batch", 2: "h4", 3: "w4"}},
                      opset_version=17, dynamo=False)
    y = enc(x)
    torch.onnx.export(dec, (y,), args.out / "decoder.onnx", input_names=["latent"], output_names=["image"],
                      dynamic_axes={"latent": {0: "batch", 2: "h4", 3: "w4"},
                                    "image": {0: "batch", 2: "height", 3: "width"}},
                      opset_version=17, dynamo=False)

    report = {
        "paper": "Bourtsoulatze, Burth Kurka, Gunduz, Deep Joint Source-Channel Coding for Wireless Image Transmission, IEEE TCCN 2019",
        "train_snr_db": args.snr,
        "latent_channels": args.c,
        "bandwidth_ratio_k_over_n": args.c / 96,
        "complex_uses_per_pixel": args.c / 32,
        "steps": args.steps, "batch": args.batch, "crop": args.crop, "lr": args.lr, "seed": args.seed,
        "train_images": [n for n, _ in images],
        "train_seconds": round(time.time() - t0, 1),
        "train_log": log,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "command": " ".join(sys.argv),
    }
    if args.eval_images:
        held = load_images(args.eval_images)
        report["eval_images"] = f"{args.eval_images.name} ({len(held)} images)"
        report["eval_psnr_db_by_snr"] = evaluate(enc, dec, held, [0, 3, 6, 9, 12, 15, 18, 20])
        print("held-out PSNR by SNR:", report["eval_psnr_db_by_snr"])
    (args.out / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}/encoder.onnx, decoder.onnx, training.json")


if __name__ == "__main__":
    main()
