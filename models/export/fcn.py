#!/usr/bin/env python3
"""Export torchvision's FCN-ResNet50 (PASCAL VOC, 21 classes) to ONNX for `segment model = "fcn"`.

Model card: https://pytorch.org/vision/stable/models/generated/torchvision.models.segmentation.fcn_resnet50.html
Weights `FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1` (trained on a COCO subset with the 20 VOC
categories; torchvision, BSD-3-Clause). Long et al., "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015.

    python models/export/fcn.py --out assets/models/fcn                    # real weights (internet)
    python models/export/fcn.py --tiny-random --out models/fixtures/fcn    # the test fixture

Writes `fcn.onnx` (input `input` f32[1, 3, H, W], ImageNet-normalised RGB, any H×W -> output `out`
f32[1, 21, H, W], class logits at the input's resolution; the auxiliary head is not exported) and
`export.json` (labels, normalisation, the resize of torchvision's preset, versions, command).

`--tiny-random` builds torchvision's own `FCN` model with its `FCNHead` and an
`IntermediateLayerGetter` over a shrunken ResNet made of torchvision's `Bottleneck` blocks (one block
per stage, widths 4/8/16/32 instead of 64/128/256/512 so the file stays small; the same stem, output
stride 8 with dilations 2 and 4 in the last two stages, 21 classes, random weights). It also writes a
test image and the label map that the PyTorch model gives for it (`expected.json`).
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

import common

VOC_LABELS = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
RESIZE = 520  # torchvision's SemanticSegmentation preset: shorter side to 520 px, bilinear
OPSET = 17


class TinyResNet(nn.Module):
    """ResNet-50's layout (stem, four stages of Bottleneck blocks, dilation in stages 3-4) at small width."""

    def __init__(self, widths=(4, 8, 16, 32)):
        super().__init__()
        from torchvision.models.resnet import Bottleneck

        self.conv1 = nn.Conv2d(3, 16, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 16
        for i, (planes, stride, dilation) in enumerate(zip(widths, (1, 2, 1, 1), (1, 1, 2, 4))):
            down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
            block = Bottleneck(inplanes, planes, stride, down, dilation=dilation)
            setattr(self, f"layer{i + 1}", nn.Sequential(block))
            inplanes = planes * 4
        self.out_channels = inplanes


class Wrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input):  # noqa: A002 - the ONNX input name
        return self.model(input)["out"]


def build(tiny: bool, seed: int):
    from torchvision.models import segmentation
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    if not tiny:
        weights = segmentation.FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1
        model = segmentation.fcn_resnet50(weights=weights)
        model.aux_classifier = None  # training-time head; `out` does not use it
        # torchvision names the classes as VOC does, with "__background__" first.
        assert list(weights.meta["categories"])[1:] == VOC_LABELS[1:], weights.meta["categories"]
        return model.eval()
    common.seed_everything(seed)
    backbone = TinyResNet()
    body = IntermediateLayerGetter(backbone, return_layers={"layer4": "out"})
    model = FCN(body, FCNHead(backbone.out_channels, len(VOC_LABELS)), None).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so the export carries them
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model


def test_image(w: int = 48, h: int = 40):
    """A fixed RGB test image: a gradient with a bright disc and a dark bar."""
    from PIL import Image

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 40 + 150 * xx / w
    g = 60 + 120 * yy / h
    b = np.full_like(r, 90.0)
    disc = (xx - 30) ** 2 + (yy - 18) ** 2 < 100
    r[disc], g[disc], b[disc] = 240, 200, 40
    bar = (yy > 30) & (xx > 5) & (xx < 20)
    r[bar], g[bar], b[bar] = 20, 20, 120
    return Image.fromarray(np.stack([r, g, b], -1).round().astype(np.uint8), "RGB")


def normalise(img) -> np.ndarray:
    x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
    mean = np.array(MEAN, np.float32)[:, None, None]
    std = np.array(STD, np.float32)[:, None, None]
    return ((x - mean) / std)[None].astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=common.REPO / "assets/models/fcn")
    ap.add_argument("--tiny-random", action="store_true", help="random weights, shrunken backbone (test fixture)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = build(args.tiny_random, args.seed)
    path = out / "fcn.onnx"
    with torch.no_grad():
        torch.onnx.export(
            Wrapper(model).eval(),
            (torch.randn(1, 3, 64, 48),),
            str(path),
            input_names=["input"],
            output_names=["out"],
            dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "out": {0: "batch", 2: "height", 3: "width"}},
            opset_version=OPSET,
            dynamo=False,
        )
    common.check_onnx(path)
    common.write_json(
        out / "export.json",
        {
            "model": "tiny-random" if args.tiny_random else "torchvision fcn_resnet50 COCO_WITH_VOC_LABELS_V1",
            "command": common.command_line(),
            "versions": common.versions(),
            "labels": VOC_LABELS,
            "mean": MEAN,
            "std": STD,
            "resize_shorter": RESIZE,
        },
    )
    if not args.tiny_random:
        return
    img = test_image()
    img.save(out / "image.png")
    x = normalise(img)
    with torch.no_grad():
        logits = Wrapper(model)(torch.from_numpy(x)).numpy()[0]
    labels = logits.argmax(0)
    ort_labels = common.ort_session(path).run(["out"], {"input": x})[0][0].argmax(0)
    assert (labels == ort_labels).all(), "onnxruntime and PyTorch disagree on the label map"
    counts = np.bincount(labels.ravel(), minlength=len(VOC_LABELS))
    counts[0] = 0
    main_class = int(counts.argmax())
    ys, xs = np.nonzero(labels == main_class)
    common.write_json(
        out / "expected.json",
        {
            "reference": "argmax over classes of the PyTorch model's `out` for image.png (no resize: "
            "the image is used at its own size), checked equal to onnxruntime's",
            "image": "image.png",
            "labels": labels.astype(int).tolist(),
            "main_class": main_class,
            "main_label": VOC_LABELS[main_class],
            "main_pixels": int(counts[main_class]),
            "box": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
        },
    )


if __name__ == "__main__":
    main()
