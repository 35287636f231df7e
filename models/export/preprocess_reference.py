#!/usr/bin/env python3
"""Reference pre-processing of LLaVA (SigLIP processor) and FCN (torchvision preset) for the Rust tests.

    python models/export/preprocess_reference.py       # writes into models/fixtures/{llava,fcn}/

It draws a deterministic test image (gradients, a disc, fine stripes and a checkerboard, whose
aliasing a resize without antialias would show), saves it as `preprocess_input.png` in both fixture
folders, and runs the real processors of the pinned stack (models/export/requirements.txt) on it:

* LLaVA: transformers' `SiglipImageProcessor` (the torchvision backend, what `AutoImageProcessor`
  gives for `llava-hf/llava-interleave-qwen-0.5b-hf`: bicubic with antialias on the uint8 image, then
  rescale and normalise) at the fixture's 32x32 and at the real checkpoint's 384x384. Written:
  `preprocess_siglip.json` (the 32x32 `pixel_values`, and how far the PIL backend is) and
  `preprocess_siglip_384.png` (the resized uint8 image; `pixel_values` = (png / 255 - 0.5) / 0.5
  exactly, which the script asserts).
* FCN: `FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.transforms()` (shorter side to 520, bilinear,
  antialias, long side truncated with `int()`) on the image as a uint8 tensor, as torchvision's docs
  call it. Written: `preprocess_fcn.png` (the resized uint8 image) and `preprocess_fcn.json`.

`models/tests/preprocess_parity.rs` compares the Rust pre-processing with these files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

import common

LLAVA = common.REPO / "models/fixtures/llava"
FCN = common.REPO / "models/fixtures/fcn"
# 157 x 103: the FCN long side is 520 * 157 / 103 = 792.6, truncated to 792 (rounding gives 793).
WIDTH, HEIGHT = 157, 103


def test_image() -> Image.Image:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    r = 255 * x / (WIDTH - 1)
    g = 255 * y / (HEIGHT - 1)
    b = 127.5 + 127.5 * np.sin(x / 3.0) * np.cos(y / 5.0)
    img = np.stack([r, g, b], axis=-1)
    disc = (x - 100) ** 2 + (y - 50) ** 2 < 30**2
    img[disc] = [230, 40, 60]
    img[10:40, 10:60][(np.arange(30)[:, None] // 2 + np.arange(50)[None, :] // 2) % 2 == 0] = 0
    img[60:95, 10:60, :] = (255 * (np.arange(50)[None, :, None] % 2)).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def siglip(img: Image.Image) -> None:
    import json

    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    from transformers.models.siglip.image_processing_siglip import SiglipImageProcessor

    cfg = json.loads((LLAVA / "preprocessor_config.json").read_text())
    keys = ("image_mean", "image_std", "rescale_factor", "resample")
    args = {k: cfg[k] for k in keys}
    out = {}
    for size in (cfg["size"]["height"], 384):
        tv = SiglipImageProcessor(size={"height": size, "width": size}, **args)
        pil = SiglipImageProcessorPil(size={"height": size, "width": size}, **args)
        x = tv(images=img, return_tensors="pt")["pixel_values"][0].numpy()
        y = pil(images=img, return_tensors="np")["pixel_values"][0]
        # The torchvision backend resizes the uint8 image: its pixel_values are u8 / 255 normalised.
        u8 = np.rint((x * 0.5 + 0.5) * 255).astype(np.int64)
        assert np.abs((u8 / 255 - 0.5) / 0.5 - x).max() < 1e-6, "pixel_values are not a uint8 image"
        pil_diff = np.abs(np.rint((y * 0.5 + 0.5) * 255) - u8)
        out[size] = {"pixel_values": x, "u8": u8, "pil_max": int(pil_diff.max()), "pil_mean": float(pil_diff.mean())}
        print(f"SigLIP {size}: PIL backend vs torchvision backend: max {pil_diff.max():.0f}/255, "
              f"mean {pil_diff.mean():.4f}/255")
    small = cfg["size"]["height"]
    Image.fromarray(out[384]["u8"].transpose(1, 2, 0).astype(np.uint8), "RGB").save(LLAVA / "preprocess_siglip_384.png")
    common.write_json(
        LLAVA / "preprocess_siglip.json",
        {
            "reference": "transformers SiglipImageProcessor (torchvision backend) with the fixture's "
            "preprocessor_config.json on preprocess_input.png; pixel_values [3, S, S]. The 384 output is "
            "preprocess_siglip_384.png (uint8; pixel_values = (u8 / 255 - 0.5) / 0.5).",
            "command": common.command_line(),
            "versions": common.versions(),
            "size": small,
            "pixel_values": np.round(out[small]["pixel_values"], 6).tolist(),
            "pil_backend_max_diff_u8": {str(k): v["pil_max"] for k, v in out.items()},
            "pil_backend_mean_diff_u8": {str(k): round(v["pil_mean"], 5) for k, v in out.items()},
        },
    )


def fcn(img: Image.Image) -> None:
    from torchvision.models.segmentation import FCN_ResNet50_Weights

    preset = FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.transforms()
    t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    x = preset(t).numpy()
    mean = np.array(preset.mean, np.float32)[:, None, None]
    std = np.array(preset.std, np.float32)[:, None, None]
    u8 = np.rint((x * std + mean) * 255)
    assert np.abs((u8 / 255 - mean) / std - x).max() < 1e-5, "FCN input is not a uint8 image"
    # The same preset on the PIL image (PIL's own resize).
    y = preset(img).numpy()
    pil_diff = np.abs(np.rint((y * std + mean) * 255) - u8)
    print(f"FCN {x.shape}: PIL image vs uint8 tensor: max {pil_diff.max():.0f}/255, mean {pil_diff.mean():.4f}/255")
    Image.fromarray(u8.transpose(1, 2, 0).astype(np.uint8), "RGB").save(FCN / "preprocess_fcn.png")
    common.write_json(
        FCN / "preprocess_fcn.json",
        {
            "reference": "torchvision FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.transforms() on "
            "preprocess_input.png as a uint8 tensor; the resized image is preprocess_fcn.png "
            "(input = (u8 / 255 - mean) / std).",
            "command": common.command_line(),
            "versions": common.versions(),
            "resize_size": preset.resize_size,
            "input_size": [WIDTH, HEIGHT],
            "output_size": [int(x.shape[2]), int(x.shape[1])],
            "mean": list(preset.mean),
            "std": list(preset.std),
            "pil_image_max_diff_u8": int(pil_diff.max()),
            "pil_image_mean_diff_u8": round(float(pil_diff.mean()), 5),
        },
    )


def main() -> None:
    img = test_image()
    for d in (LLAVA, FCN):
        img.save(d / "preprocess_input.png")
    siglip(img)
    fcn(img)


if __name__ == "__main__":
    main()
