#!/usr/bin/env python3
"""Export a CLIP image tower with its projection to ONNX for `evaluate` (`clip = true`, CLIP cosine).

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021.
Default checkpoint `openai/clip-vit-base-patch32` (MIT), https://huggingface.co/openai/clip-vit-base-patch32;
`--model` names another `CLIPVisionModelWithProjection` checkpoint (e.g. the ViT-H/14 of IP-Adapter).

    python models/export/clip.py --out assets/models/clip                    # real weights (internet)
    python models/export/clip.py --tiny-random --out models/fixtures/clip    # the test fixture

Writes `clip_image.onnx`: `pixel_values` f32[B, 3, S, S] (CLIPImageProcessor: shorter side to S bicubic,
centre crop, x/255, CLIP mean/std; S = 224 for the default) -> `image_embeds` f32[B, P] (projected,
not normalised; P = 512 for the default), and `export.json` (S, mean, std, P, command, versions).
`--tiny-random`: `CLIPVisionModelWithProjection` with 2 layers, width 32, 32 px, patch 8, projection 16,
random weights; also `x.png`, `y.png` (32x32) and `expected.json` (their embeddings and cosine in PyTorch).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

import common

OPSET = 17
DEFAULT = "openai/clip-vit-base-patch32"
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


class Tower(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, pixel_values):
        return self.m(pixel_values=pixel_values).image_embeds


def pixels(img: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)
    return ((x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])[None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default=DEFAULT)
    p.add_argument("--tiny-random", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    common.seed_everything(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if args.tiny_random:
        cfg = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                               num_hidden_layers=2, num_attention_heads=4, projection_dim=16)
        cfg._attn_implementation = "eager"
        model = CLIPVisionModelWithProjection(cfg)
    else:
        model = CLIPVisionModelWithProjection.from_pretrained(args.model, attn_implementation="eager")
    model = model.eval()
    s, dim = model.config.image_size, model.config.projection_dim
    tower = Tower(model)
    path = args.out / "clip_image.onnx"
    with torch.no_grad():
        torch.onnx.export(tower, (torch.randn(1, 3, s, s),), str(path), input_names=["pixel_values"],
                          output_names=["image_embeds"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    common.check_onnx(path)
    info = {"model": "tiny-random" if args.tiny_random else args.model, "image_size": s, "image_mean": MEAN,
            "image_std": STD, "projection_dim": dim, "command": common.command_line(), "versions": common.versions()}
    common.write_json(args.out / "export.json", info)
    # onnxruntime against torch on one image (real exports too); the fixture keeps the pair.
    from PIL import Image

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
    y = np.clip(x.astype(int) + rng.integers(-60, 60, x.shape), 0, 255).astype(np.uint8)
    with torch.no_grad():
        ex, ey = tower(pixels(x))[0], tower(pixels(y))[0]
    cos = float(torch.nn.functional.cosine_similarity(ex, ey, dim=0))
    sess = common.ort_session(path)
    got = sess.run(["image_embeds"], {"pixel_values": pixels(x).numpy()})[0][0]
    err = float(np.max(np.abs(got - ex.numpy())))
    assert np.allclose(got, ex.numpy(), atol=1e-5), f"onnxruntime differs from torch (max abs {err})"
    print(f"clip image embedding: onnxruntime = torch (max abs difference {err:.2e}, tolerance 1e-5)")
    if args.tiny_random:
        Image.fromarray(x).save(args.out / "x.png")
        Image.fromarray(y).save(args.out / "y.png")
        common.write_json(args.out / "expected.json", {"x": ex.tolist(), "y": ey.tolist(), "cosine": cos})


if __name__ == "__main__":
    main()
