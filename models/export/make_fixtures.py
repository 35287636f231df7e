#!/usr/bin/env python3
"""Build the tiny ONNX fixtures in `models/fixtures/` used by the `dataflow-models` tests.

The outputs are committed, so neither CI nor users need Python for them. To rebuild:

    python3 -m venv /work/venv-fixtures && /work/venv-fixtures/bin/pip install onnx==1.23.2
    /work/venv-fixtures/bin/python models/export/make_fixtures.py

Fixtures (opset 17, IR version 8; deterministic bytes: no timestamps, fixed producer):

* `add.onnx` - input `x` f32 [1, 3] -> output `y` f32 [1, 3], y = x + [1, 2, 3].
* `isnet_like.onnx` - the I/O contract of ISNet: input `input` f32 [1, 3, 1024, 1024] ->
  output `output` f32 [1, 1, 1024, 1024] = sigmoid(mean over channels). With ISNet's
  pre-processing (x - 128) / 256, a white pixel (255) maps to sigmoid(0.496) = 0.62
  (mask 158, salient) and a black one to sigmoid(-0.5) = 0.38 (mask 96, background).
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent.parent / "fixtures"
OPSET = [helper.make_opsetid("", 17)]


def save(model: onnx.ModelProto, name: str) -> None:
    model.ir_version = 8
    model.producer_name = "dataflow-models/export/make_fixtures.py"
    onnx.checker.check_model(model, full_check=True)
    path = OUT / name
    onnx.save(model, path)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def add() -> None:
    bias = numpy_helper.from_array(np.array([[1.0, 2.0, 3.0]], dtype=np.float32), "bias")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializer=[bias],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "add.onnx")


def isnet_like() -> None:
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1], keepdims=1),
            helper.make_node("Sigmoid", ["mean"], ["output"]),
        ],
        "isnet_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 1024, 1024])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 1024, 1024])],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "isnet_like.onnx")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    add()
    isnet_like()
