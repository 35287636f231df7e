"""LLaVA captions of each tile, with transformers: the ``caption`` stage of
``graphs/multisc-torch.toml``.

As ``caption model = "llava"`` (``actors/src/caption.rs``) does with the ONNX export, each
message's ``image`` (a tile of ``split``, or a whole frame) is described in answer to the
paper's query, greedily, and the answer is added as ``text``. The checkpoint's own processor
renders the chat template and expands the image token; ``generate`` decodes with the KV cache.

``args``: ``model`` (a hub id or a local folder; default the paper's LLaVA-Interleave-Qwen-0.5B),
``query`` (default the paper's), ``max_new_tokens`` (48), ``device`` (``auto``: cuda when
available), ``dtype`` (``auto``: float16 on a GPU, float32 on the CPU), ``threads`` (CPU threads;
default: all cores).

Try it without the engine (``.venv-torch`` from ``scripts/setup-torch``)::

    PYTHONPATH=python .venv-torch/bin/python -m dataflow_stage selftest stages/torch/caption.py LlavaCaptioner
"""

from __future__ import annotations

import time

from dataflow_stage import Stage

from common import device_and_dtype, need, to_pil

MODEL = "llava-hf/llava-interleave-qwen-0.5b-hf"
QUERY = "Relay a brief, clear account of the picture shown."


class LlavaCaptioner(Stage):
    """``text`` = LLaVA's answer to the query about ``image``."""

    def setup(self, args):
        super().setup(args)
        torch = need("torch")
        transformers = need("transformers")
        self.torch = torch
        self.device, self.dtype = device_and_dtype(args)
        name = str(args.get("model", MODEL))
        self.query = str(args.get("query", QUERY))
        self.max_new_tokens = int(args.get("max_new_tokens", 48))
        if self.max_new_tokens < 1:
            raise ValueError(f"args.max_new_tokens must be at least 1, got {self.max_new_tokens}")
        t0 = time.perf_counter()
        self.processor = transformers.AutoProcessor.from_pretrained(name)
        self.model = transformers.LlavaForConditionalGeneration.from_pretrained(name, dtype=self.dtype)
        self.model.to(self.device).eval()
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.query}]}]
        self.prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        self.log.info("LLaVA %s loaded on %s (%s) in %.1f s", name, self.device, self.dtype,
                      time.perf_counter() - t0)

    def process(self, frame):
        img = frame.image("image")
        if img.shape[0] == 0 or img.shape[1] == 0:
            raise ValueError(f"frame {frame.id}: the tile is empty")
        inputs = self.processor(images=to_pil(img), text=self.prompt, return_tensors="pt")
        inputs = inputs.to(self.device, dtype=self.dtype)
        with self.torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = ids[0, inputs["input_ids"].shape[1]:]
        frame.set_text("text", self.processor.decode(new, skip_special_tokens=True).strip())
        return frame
