"""BART spelling correction of the received texts, with transformers: the ``correct`` stage of
``graphs/multisc-torch.toml``.

As ``correct model = "bart"`` (``actors/src/correct.rs``) does with the ONNX export: reads
``texts`` (one per tile, ``None`` for a lost one, which stays ``None``) or ``text`` and adds
``corrected``. Decoding follows the checkpoint's generation settings (beams, n-gram rule,
forced tokens), with at most ``n + n/2 + 10`` new tokens for the longest input of ``n`` tokens
unless ``max_new_tokens`` fixes it. The tiles' texts are corrected in one batch.
(transformers 5 has no ``text2text-generation`` pipeline; this is what it ran.)

``args``: ``model`` (a hub id or a local folder; default the paper's corrector
``oliverguhr/spelling-correction-english-base``), ``beams``, ``max_new_tokens``, ``device``, ``threads``,
``dtype`` (see ``common.py``).

Try it without the engine::

    PYTHONPATH=python .venv-torch/bin/python -m dataflow_stage selftest stages/torch/correct.py BartCorrector
"""

from __future__ import annotations

import time

from dataflow_stage import Stage

from common import device_and_dtype, need

MODEL = "oliverguhr/spelling-correction-english-base"


class BartCorrector(Stage):
    """``corrected`` = BART's rewrite of ``texts`` (or ``text``)."""

    def setup(self, args):
        super().setup(args)
        torch = need("torch")
        transformers = need("transformers")
        self.torch = torch
        self.device, self.dtype = device_and_dtype(args)
        name = str(args.get("model", MODEL))
        self.beams = args.get("beams")
        self.max_new_tokens = args.get("max_new_tokens")
        for key in ("beams", "max_new_tokens"):
            v = args.get(key)
            if v is not None and int(v) < 1:
                raise ValueError(f"args.{key} must be at least 1 (or left out for the checkpoint's), got {v}")
        t0 = time.perf_counter()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(name)
        self.model = transformers.AutoModelForSeq2SeqLM.from_pretrained(name, dtype=self.dtype)
        self.model.to(self.device).eval()
        self.log.info("BART %s loaded on %s (%s) in %.1f s", name, self.device, self.dtype,
                      time.perf_counter() - t0)

    def correct(self, texts: list[str]) -> list[str]:
        """The corrections of ``texts``, in one batch."""
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True).to(self.device)
        options = {}
        if self.beams is not None:
            options["num_beams"] = int(self.beams)
        if self.max_new_tokens is not None:
            options["max_new_tokens"] = int(self.max_new_tokens)
        else:
            n = int(enc["attention_mask"].sum(dim=1).max())
            limit = n + n // 2 + 10
            cap = getattr(self.model.generation_config, "max_length", None)
            options["max_new_tokens"] = min(limit, cap) if cap else limit
        options["max_length"] = None  # the limit is max_new_tokens (no warning about both)
        with self.torch.inference_mode():
            ids = self.model.generate(**enc, **options)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def process(self, frame):
        texts = frame.fields.get("texts")
        if isinstance(texts, list):
            present = [t for t in texts if t is not None]
            fixed = iter(self.correct(present) if present else [])
            frame.fields["corrected"] = [None if t is None else next(fixed) for t in texts]
        elif isinstance(frame.fields.get("text"), str):
            frame.set_text("corrected", self.correct([frame.text("text")])[0])
        else:
            raise KeyError(f"frame {frame.id} has neither `texts` nor `text` to correct")
        return frame
