#!/usr/bin/env python3
"""Export LPIPS v0.1 with the AlexNet backbone to one ONNX for `evaluate` (`lpips = true`).

Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018;
reference code and heads: https://github.com/richzhang/PerceptualSimilarity, PyPI `lpips==0.1.4`
(BSD-2-Clause; the linear heads ship in the wheel as `lpips/weights/v0.1/alex.pth`). Backbone:
torchvision `alexnet(weights=AlexNet_Weights.IMAGENET1K_V1)` (BSD-3-Clause), downloaded by torchvision
on a machine with internet; it is in no package registry.

    python models/export/lpips.py --out assets/models/lpips-onnx                  # real weights (internet)
    python models/export/lpips.py --tiny-random --out models/fixtures/lpips        # the test fixture

Writes `lpips.onnx`: inputs `in0`, `in1` f32[N, 3, H, W], RGB in [-1, 1] (the reference's
`normalize=False` convention), H, W >= 32 and dynamic; output `distance` f32[N]. Inside, as the
reference `lpips.LPIPS(net="alex", version="0.1")`: the scaling layer (shift [-.030, -.088, -.188],
scale [.458, .448, .450]), the five ReLU outputs of AlexNet's features, unit-normalised over channels
(eps 1e-10), squared difference, the 1x1 linear heads, spatial mean, summed over the five layers. Also
`export.json` (command, versions) and, for `--tiny-random`, `a.png`, `b.png` and `expected.json`
(the PyTorch distance of the pair and of a with itself).

`--tiny-random`: the same layers with narrower convolutions (16/48/96/64/64 channels instead of
64/192/384/256/256, so the fixture is 0.6 MB instead of 10 MB) and random weights and heads. The script
first checks that its module equals the reference `lpips.LPIPS` at full width (random backbone via
`pnet_rand=True`, the wheel's real heads; nothing downloaded), then exports the narrow one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

import common

OPSET = 17
FULL_WIDTHS = (64, 192, 384, 256, 256)
TINY_WIDTHS = (16, 48, 96, 64, 64)
# Indices of the ReLUs in torchvision's `alexnet().features` whose outputs LPIPS compares.
TAPS = (1, 4, 7, 9, 11)


def alexnet_features(widths) -> nn.Sequential:
    """torchvision's AlexNet `features[:12]` (up to relu5) with the given conv widths."""
    c1, c2, c3, c4, c5 = widths
    return nn.Sequential(
        nn.Conv2d(3, c1, 11, 4, 2), nn.ReLU(inplace=False), nn.MaxPool2d(3, 2),
        nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(inplace=False), nn.MaxPool2d(3, 2),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(inplace=False),
        nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(inplace=False),
        nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(inplace=False),
    )


class LpipsAlex(nn.Module):
    """LPIPS v0.1 (AlexNet) as `lpips.LPIPS.forward(in0, in1, normalize=False)`, one value per pair."""

    def __init__(self, widths=FULL_WIDTHS):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        self.features = alexnet_features(widths)
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in widths)

    def taps(self, x):
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(x)
        return out

    def forward(self, in0, in1):
        f0 = self.taps((in0 - self.shift) / self.scale)
        f1 = self.taps((in1 - self.shift) / self.scale)
        total = 0
        for a, b, head in zip(f0, f1, self.heads):
            a = a / (torch.sqrt(torch.sum(a**2, dim=1, keepdim=True)) + 1e-10)
            b = b / (torch.sqrt(torch.sum(b**2, dim=1, keepdim=True)) + 1e-10)
            total = total + head((a - b) ** 2).mean(dim=(2, 3), keepdim=True)
        return total.reshape(-1)

    def load_reference(self, ref) -> None:
        """Copies the weights of a reference `lpips.LPIPS(net="alex")`."""
        slices = [ref.net.slice1, ref.net.slice2, ref.net.slice3, ref.net.slice4, ref.net.slice5]
        convs = [m for s in slices for m in s if isinstance(m, nn.Conv2d)]
        mine = [m for m in self.features if isinstance(m, nn.Conv2d)]
        for a, b in zip(mine, convs):
            a.weight.data.copy_(b.weight.data)
            a.bias.data.copy_(b.bias.data)
        for head, lin in zip(self.heads, ref.lins):
            head.weight.data.copy_(lin.model[-1].weight.data)


def fixture_pair(size: int = 64):
    """Two fixed RGB images: smooth gradients plus seeded noise, b a perturbed a."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:size, 0:size] / size
    a = np.stack([xx, yy, 0.5 + 0.4 * np.sin(6 * xx * yy)], -1) * 200 + rng.uniform(0, 55, (size, size, 3))
    b = np.clip(a + rng.normal(0, 25, a.shape) + 30 * (xx > 0.5)[..., None], 0, 255)
    return a.astype(np.uint8), b.astype(np.uint8)


def to_input(img: np.ndarray) -> torch.Tensor:
    """uint8 HWC RGB -> f32 [1, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(img.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]


def reference_package():
    """The PyPI `lpips` package (this script's own name hides it on `sys.path`)."""
    import importlib
    import sys

    here = Path(__file__).resolve().parent
    saved = sys.path[:]
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        return importlib.import_module("lpips")
    finally:
        sys.path = saved


def check_against_reference() -> None:
    """Our module at full width equals `lpips.LPIPS` (random backbone, the wheel's heads)."""
    lpips = reference_package()
    ref = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()
    mine = LpipsAlex(FULL_WIDTHS).eval()
    mine.load_reference(ref)
    a, b = fixture_pair()
    with torch.no_grad():
        want = ref(to_input(a), to_input(b)).reshape(-1)
        got = mine(to_input(a), to_input(b))
    assert torch.allclose(want, got, rtol=1e-5, atol=1e-7), (want, got)
    print(f"module equals lpips.LPIPS at full width: {got.item():.6f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tiny-random", action="store_true", help="narrow random network (test fixture)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    common.seed_everything(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    if args.tiny_random:
        check_against_reference()
        model = LpipsAlex(TINY_WIDTHS).eval()
        with torch.no_grad():
            for head in model.heads:
                # The real heads are non-negative weights; keep that property.
                head.weight.data = head.weight.data.abs()
        widths = TINY_WIDTHS
    else:
        lpips = reference_package()
        ref = lpips.LPIPS(net="alex", version="0.1", verbose=False).eval()  # downloads torchvision's AlexNet
        model = LpipsAlex(FULL_WIDTHS).eval()
        model.load_reference(ref)
        widths = FULL_WIDTHS

    a, b = fixture_pair()
    x0, x1 = to_input(a), to_input(b)
    path = args.out / "lpips.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model, (x0, x1), str(path), input_names=["in0", "in1"], output_names=["distance"],
            dynamic_axes={"in0": {0: "n", 2: "h", 3: "w"}, "in1": {0: "n", 2: "h", 3: "w"}, "distance": {0: "n"}},
            opset_version=OPSET, dynamo=False,
        )
        want = model(x0, x1).item()
        same = model(x0, x0).item()
    common.check_onnx(path)
    sess = common.ort_session(path)
    got = float(sess.run(["distance"], {"in0": x0.numpy(), "in1": x1.numpy()})[0][0])
    assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (got, want)
    print(f"LPIPS of the fixture pair: torch {want:.6f}, onnxruntime {got:.6f}")

    info = {
        "model": "lpips-v0.1-alex",
        "widths": list(widths),
        "tiny_random": args.tiny_random,
        "inputs": {"in0": "f32[N,3,H,W] RGB in [-1,1]", "in1": "f32[N,3,H,W] RGB in [-1,1]"},
        "outputs": {"distance": "f32[N]"},
        "command": common.command_line(),
        "versions": common.versions(),
    }
    common.write_json(args.out / "export.json", info)
    if args.tiny_random:
        from PIL import Image

        Image.fromarray(a).save(args.out / "a.png")
        Image.fromarray(b).save(args.out / "b.png")
        common.write_json(args.out / "expected.json", {"a_b": want, "a_a": same, "onnxruntime_a_b": got})


if __name__ == "__main__":
    main()
