"""LLaVA prefill peak memory: logits for the last position only (llava.py today) vs every position
(the old export). `export VOCAB`: the tiny fixture's model (llava.py --tiny-random, seed 0) with the
vocabulary resized to VOCAB; its decoder exported both ways (the "all" variant is llava.Decoder with
`h[:, -1:]` replaced by `h` before the LM head). `run KIND SEQ VOCAB`: one prefill of SEQ positions
with onnxruntime (1 thread); peak RSS read by /usr/bin/time -v around it."""
import inspect
import os
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "models" / "export"))
OUT = Path(os.environ.get("PREFILL_OUT", "/tmp/llava-prefill-mem"))


def export(vocab: int):
    OUT.mkdir(parents=True, exist_ok=True)
    import torch
    import llava

    src = textwrap.dedent(inspect.getsource(llava.Decoder.forward))
    assert "self.head(self.lm.norm(h[:, -1:]))" in src
    ns = {"torch": torch}
    exec(src.replace("self.head(self.lm.norm(h[:, -1:]))", "self.head(self.lm.norm(h))"), ns)
    AllPositions = type("AllPositions", (llava.Decoder,), {"forward": ns["forward"]})
    model, *_ = llava.build(True, 0)
    model.resize_token_embeddings(vocab)
    for kind, cls in (("last", llava.Decoder), ("all", AllPositions)):
        dec = cls(model).eval()
        layers, b, s = len(dec.lm.layers), 1, 3
        past = [torch.zeros(b, dec.kv_heads, 0, dec.head_dim) for _ in range(2 * layers)]
        names = [f"past.{i}" for i in range(2 * layers)]
        axes = {n: {2: "past"} for n in names}
        axes.update({"inputs_embeds": {1: "s"}, "attention_mask": {1: "t"}, "position_ids": {1: "s"},
                     "logits": {1: "l"}})
        with torch.no_grad():
            torch.onnx.export(dec, (torch.randn(b, s, dec.lm.config.hidden_size), torch.ones(b, s, dtype=torch.int64),
                                    torch.arange(s)[None], *past), str(OUT / f"decoder_{kind}_{vocab}.onnx"),
                              input_names=["inputs_embeds", "attention_mask", "position_ids", *names],
                              output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False)


def run(kind: str, seq: int, vocab: int):
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(OUT / f"decoder_{kind}_{vocab}.onnx"), so, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    hidden = inputs["inputs_embeds"].shape[2]
    feeds = {"inputs_embeds": np.random.default_rng(0).standard_normal((1, seq, hidden)).astype(np.float32),
             "attention_mask": np.ones((1, seq), np.int64), "position_ids": np.arange(seq, dtype=np.int64)[None]}
    for n, i in inputs.items():
        if n.startswith("past"):
            feeds[n] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    logits = sess.run(["logits"], feeds)[0]
    print(f"{kind}: logits {logits.shape} = {logits.nbytes / 2**20:.1f} MiB")


if __name__ == "__main__":
    if sys.argv[1] == "export":
        export(int(sys.argv[2]))
    else:
        run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
