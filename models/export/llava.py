#!/usr/bin/env python3
"""Export LLaVA-Interleave-Qwen-0.5B (the paper's lightweight LLaVA) to ONNX for `caption model = "llava"`.

Model card: https://huggingface.co/llava-hf/llava-interleave-qwen-0.5b-hf (Qwen1.5-0.5B text model,
SigLIP-so400m/14 at 384 px vision tower, 729 image tokens; licence: see the model card — the Qwen1.5
weights are under the Tongyi Qianwen licence, SigLIP under Apache-2.0).

    python models/export/llava.py --out assets/models/llava              # real weights (internet)
    python models/export/llava.py --tiny-random --out models/fixtures/llava  # the test fixture

Layout written to `--out` (the transformers.js / optimum layout):

    onnx/vision_encoder.onnx         pixel_values f32[b, 3, S, S] -> image_features f32[b, N, hidden]
                                     (vision tower, feature layer, projector)
    onnx/embed_tokens.onnx           input_ids i64[b, s] -> inputs_embeds f32[b, s, hidden]
    onnx/decoder_model_merged.onnx   inputs_embeds f32[b, s, hidden], attention_mask i64[b, past + s],
                                     position_ids i64[b, s], past_key_values.{i}.key/value
                                     f32[b, kv_heads, past, head_dim] -> logits f32[b, 1, vocab] (the
                                     last position only: decoding needs no other, and the prefill's
                                     [b, s, vocab] would be ~456 MB a tile for the real model's 151,936
                                     tokens × ~750 positions), present.{i}.key/value
                                     f32[b, kv_heads, past + s, head_dim] (past of length 0 = no past)
    tokenizer.json, config.json, preprocessor_config.json
    export.json                      what the Rust side needs: prompt template, image token and count,
                                     pre-processing, stop tokens, cache shapes, versions, command
    expected.json                    greedy ids of the PyTorch model (`generate`) for the images in
                                     `images/` (tiny mode), checked against the ONNX loop below

`--tiny-random` builds the same classes (LlavaForConditionalGeneration with a Qwen2 text model and a
SigLIP vision tower, same feature layer/strategy and projector) from a shrunken config with random
weights and a byte-level BPE tokenizer trained locally with Qwen's pre-tokenizer and special tokens.
`--bench N` times the ONNX decode loop (onnxruntime's Python API, 1 thread) for N new tokens.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import common

REAL = "llava-hf/llava-interleave-qwen-0.5b-hf"
QUERY = "Relay a brief, clear account of the picture shown."
IMAGE_TOKEN = "<image>"
# The chat template of llava-interleave-qwen (processor_config / chat_template.json), used to render
# the tiny model's prompt; real exports render the checkpoint's own template.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "{query}"}]}]
OPSET = 17


class VisionEncoder(nn.Module):
    """pixel_values -> image_features: vision tower, the configured feature layer, projector."""

    def __init__(self, model):
        super().__init__()
        self.tower = model.model.vision_tower
        self.projector = model.model.multi_modal_projector
        self.layer = model.config.vision_feature_layer
        self.strategy = model.config.vision_feature_select_strategy

    def forward(self, pixel_values):
        hidden = self.tower(pixel_values, output_hidden_states=True).hidden_states[self.layer]
        if self.strategy == "default":
            hidden = hidden[:, 1:]
        return self.projector(hidden)


class Embedder(nn.Module):
    """input_ids -> inputs_embeds."""

    def __init__(self, model):
        super().__init__()
        self.embed = model.model.language_model.embed_tokens

    def forward(self, input_ids):
        return self.embed(input_ids)


class Decoder(nn.Module):
    """Qwen2 decoder with an explicit KV cache (merged: a past of length 0 is no past).

    Uses the checkpoint's own modules (projections, norms, rotary embedding, MLP, lm_head) and
    writes out only the attention with its cache and mask, so the traced graph has plain inputs.
    The LM head runs on the last position only (`logits` [b, 1, vocab]).
    """

    def __init__(self, model):
        super().__init__()
        self.lm = model.model.language_model
        self.head = model.lm_head
        cfg = self.lm.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

        b, s, _ = inputs_embeds.shape
        past_len = past[0].shape[2]
        total = past_len + s
        cos, sin = self.lm.rotary_emb(inputs_embeds, position_ids)
        key_pos = torch.arange(total, device=inputs_embeds.device)
        query_pos = torch.arange(s, device=inputs_embeds.device) + past_len
        allowed = (key_pos[None, :] <= query_pos[:, None])[None, None] & (attention_mask[:, None, None, :] > 0)
        bias = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
        h = inputs_embeds
        presents = []
        for i, layer in enumerate(self.lm.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            rep = self.heads // self.kv_heads
            kr = k.repeat_interleave(rep, dim=1) if rep > 1 else k
            vr = v.repeat_interleave(rep, dim=1) if rep > 1 else v
            scores = torch.matmul(q, kr.transpose(2, 3)) * (self.head_dim**-0.5) + bias
            probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            out = torch.matmul(probs, vr).transpose(1, 2).reshape(b, s, self.heads * self.head_dim)
            h = h + attn.o_proj(out)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        logits = self.head(self.lm.norm(h[:, -1:]))
        return (logits, *presents)


def build(tiny: bool, seed: int):
    """The model, tokenizer (a `tokenizers.Tokenizer`), processor settings and prompt template."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, Qwen2Config, SiglipVisionConfig

    if not tiny:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(REAL)
        model = LlavaForConditionalGeneration.from_pretrained(REAL, dtype=torch.float32).eval()
        prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
        tokenizer = getattr(processor.tokenizer, "backend_tokenizer", None) or processor.tokenizer._tokenizer
        return model, tokenizer, processor.image_processor.to_dict(), prompt

    common.seed_everything(seed)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN]
    tokenizer = common.train_byte_level_bpe(420, specials, qwen_style=True)
    vocab = tokenizer.get_vocab_size()
    text = Qwen2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        # Wide random weights, so greedy outputs vary from token to token and image to image.
        initializer_range=0.5,
        bos_token_id=tokenizer.token_to_id("<|endoftext|>"),
        eos_token_id=tokenizer.token_to_id("<|im_end|>"),
    )
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    config = LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=tokenizer.token_to_id(IMAGE_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_seq_length=(32 // 8) ** 2,
        tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(config).eval()
    # Random init leaves biases at zero and the projector small; widen them so the image matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "multi_modal_projector" in name or "vision_tower" in name:
                p.normal_(0.0, 0.3) if p.dim() > 1 else None
    image_processor = {
        "size": {"height": 32, "width": 32},
        "do_convert_rgb": True,
        "do_resize": True,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor",
    }
    import jinja2

    prompt = jinja2.Environment().from_string(TINY_CHAT_TEMPLATE).render(messages=MESSAGES, add_generation_prompt=True)
    return model, tokenizer, image_processor, prompt


def export(model, out: Path, external: bool = False) -> dict:
    """Writes the three ONNX files; returns the cache geometry. Each graph is exported into a
    private folder and moved to `onnx/`; past 2 GiB (the fp32 decoder of a 0.5B model with its
    LM head is close) or with `external`, its weights go to one `<name>.onnx.data` beside it."""
    onnx_dir = out / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    size = cfg.vision_config.image_size
    lm_cfg = model.model.language_model.config
    dec = Decoder(model).eval()
    layers = len(dec.lm.layers)
    hidden = lm_cfg.hidden_size

    with common.onnx_target(onnx_dir / "vision_encoder.onnx", external) as target, torch.no_grad():
        torch.onnx.export(
            VisionEncoder(model).eval(),
            (torch.randn(2, 3, size, size),),
            str(target),
            input_names=["pixel_values"],
            output_names=["image_features"],
            dynamic_axes={"pixel_values": {0: "batch"}, "image_features": {0: "batch", 1: "image_tokens"}},
            opset_version=OPSET,
            dynamo=False,
        )
    with common.onnx_target(onnx_dir / "embed_tokens.onnx", external) as target, torch.no_grad():
        torch.onnx.export(
            Embedder(model).eval(),
            (torch.tensor([[1, 2, 3]], dtype=torch.int64),),
            str(target),
            input_names=["input_ids"],
            output_names=["inputs_embeds"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "inputs_embeds": {0: "batch", 1: "sequence"}},
            opset_version=OPSET,
            dynamo=False,
        )
    with common.onnx_target(onnx_dir / "decoder_model_merged.onnx", external) as target, torch.no_grad():
        b, s, p = 2, 3, 4
        past = []
        past_names, present_names, axes = [], [], {}
        for i in range(layers):
            for kind in ("key", "value"):
                past.append(torch.randn(b, dec.kv_heads, p, dec.head_dim))
                pn, qn = f"past_key_values.{i}.{kind}", f"present.{i}.{kind}"
                past_names.append(pn)
                present_names.append(qn)
                axes[pn] = {0: "batch", 2: "past_sequence"}
                axes[qn] = {0: "batch", 2: "total_sequence"}
        axes.update(
            {
                "inputs_embeds": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "total_sequence"},
                "position_ids": {0: "batch", 1: "sequence"},
                "logits": {0: "batch"},
            }
        )
        torch.onnx.export(
            dec,
            (
                torch.randn(b, s, hidden),
                torch.ones(b, p + s, dtype=torch.int64),
                torch.arange(p, p + s, dtype=torch.int64).repeat(b, 1),
                *past,
            ),
            str(target),
            input_names=["inputs_embeds", "attention_mask", "position_ids", *past_names],
            output_names=["logits", *present_names],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    for name in ("vision_encoder", "embed_tokens", "decoder_model_merged"):
        common.check_onnx(onnx_dir / f"{name}.onnx")
    return {
        "num_layers": layers,
        "num_key_value_heads": dec.kv_heads,
        "head_dim": dec.head_dim,
        "hidden_size": hidden,
        "vocab_size": lm_cfg.vocab_size,
    }


def pixel_values(images, proc: dict) -> np.ndarray:
    """The processor's pre-processing: RGB, resize (bicubic) to the model's size, rescale, normalise."""
    from PIL import Image

    h, w = proc["size"]["height"], proc["size"]["width"]
    mean = np.array(proc["image_mean"], dtype=np.float32)[:, None, None]
    std = np.array(proc["image_std"], dtype=np.float32)[:, None, None]
    out = []
    for img in images:
        img = img.convert("RGB")
        if img.size != (w, h):
            img = img.resize((w, h), Image.BICUBIC)
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) * np.float32(proc["rescale_factor"])
        out.append((x - mean) / std)
    return np.stack(out).astype(np.float32)


class OrtLlava:
    """The decode loop the Rust side runs, with onnxruntime's Python API (reference and benchmark)."""

    def __init__(self, out: Path, geometry: dict, threads: int = 1):
        self.vision = common.ort_session(out / "onnx/vision_encoder.onnx", threads)
        self.embed = common.ort_session(out / "onnx/embed_tokens.onnx", threads)
        self.decoder = common.ort_session(out / "onnx/decoder_model_merged.onnx", threads)
        self.g = geometry

    def generate(self, input_ids: np.ndarray, pixels: np.ndarray, image_token: int, max_new: int, stops: list[int]):
        """Greedy ids per row (stop token excluded) and the seconds spent after the prefill."""
        b, s = input_ids.shape
        feats = self.vision.run(["image_features"], {"pixel_values": pixels})[0]
        embeds = self.embed.run(["inputs_embeds"], {"input_ids": input_ids})[0]
        for row in range(b):
            embeds[row, input_ids[row] == image_token] = feats[row]
        g = self.g
        past = {
            f"past_key_values.{i}.{kind}": np.zeros((b, g["num_key_value_heads"], 0, g["head_dim"]), np.float32)
            for i in range(g["num_layers"])
            for kind in ("key", "value")
        }
        mask = np.ones((b, s), np.int64)
        positions = np.arange(s, dtype=np.int64)[None].repeat(b, 0)
        out = [[] for _ in range(b)]
        done = [False] * b
        started = None
        for step in range(max_new):
            res = self.decoder.run(None, {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions, **past})
            logits = res[0][:, -1]
            nxt = logits.argmax(-1)
            for row in range(b):
                if not done[row]:
                    if int(nxt[row]) in stops:
                        done[row] = True
                    else:
                        out[row].append(int(nxt[row]))
            if all(done) or step + 1 == max_new:
                break
            if started is None:
                started = time.perf_counter()
            past = {name.replace("present", "past_key_values"): v for name, v in zip(self.names(), res[1:])}
            embeds = self.embed.run(["inputs_embeds"], {"input_ids": nxt[:, None].astype(np.int64)})[0]
            total = mask.shape[1] + 1
            mask = np.ones((b, total), np.int64)
            positions = np.full((b, 1), total - 1, np.int64)
        return out, (time.perf_counter() - started) if started else 0.0

    def names(self):
        return [o.name for o in self.decoder.get_outputs()[1:]]


def test_images(n: int, size: int):
    """Deterministic test tiles (gradients and a disc), `size`² so the processor's resize is the identity."""
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    imgs = []
    for k in range(n):
        r = (xx * 255 * (k + 1) / n) % 256
        g = (yy * 255) * (1 - k / n)
        disc = ((xx - 0.3 - 0.1 * k) ** 2 + (yy - 0.5) ** 2) < 0.08
        bl = np.where(disc, 230.0 - 40 * k, 40.0 + 30 * k)
        imgs.append(Image.fromarray(np.stack([r, g, bl], -1).round().astype(np.uint8), "RGB"))
    return imgs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=common.REPO / "assets/models/llava")
    ap.add_argument("--tiny-random", action="store_true", help="random weights, shrunken config (test fixture)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=8, help="length of the expected greedy outputs")
    ap.add_argument("--bench", type=int, default=0, help="time the ONNX decode loop for this many new tokens")
    ap.add_argument("--bench-runs", type=int, default=21, help="timed runs (the median is printed)")
    ap.add_argument("--bench-only", action="store_true", help="only time an existing export in --out")
    common.add_external_data_flag(ap)
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    if not args.bench_only:
        model, tokenizer, proc, prompt = build(args.tiny_random, args.seed)
        geometry = export(model, out, args.external_data)
        tokenizer.save(str(out / "tokenizer.json"))
        model.config.to_json_file(str(out / "config.json"))
        common.write_json(out / "preprocessor_config.json", {k: v for k, v in proc.items() if not callable(v)})
        cfg = model.config
        stops = [tokenizer.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>")]
        with torch.no_grad():
            n_img = VisionEncoder(model)(torch.zeros(1, 3, proc["size"]["height"], proc["size"]["width"])).shape[1]
        meta = {
            "model": "tiny-random" if args.tiny_random else REAL,
            "command": common.command_line(),
            "versions": common.versions(),
            "query": QUERY,
            "prompt_template": prompt,
            "image_token": IMAGE_TOKEN,
            "image_token_id": cfg.image_token_index,
            "image_seq_length": int(n_img),
            "image_size": [proc["size"]["height"], proc["size"]["width"]],
            "image_mean": list(proc["image_mean"]),
            "image_std": list(proc["image_std"]),
            "rescale_factor": proc["rescale_factor"],
            "stop_token_ids": stops,
            "pad_token_id": stops[1],
            **geometry,
        }
        common.write_json(out / "export.json", meta)

        # The ONNX loop against PyTorch's `generate`: four images for the fixture, one for a real
        # export (same test image; nothing written besides the printed result).
        images = test_images(4 if args.tiny_random else 1, proc["size"]["height"])
        if args.tiny_random:
            img_dir = out / "images"
            img_dir.mkdir(exist_ok=True)
            for k, im in enumerate(images):
                im.save(img_dir / f"tile{k}.png")
        text = meta["prompt_template"].replace("{query}", QUERY).replace(IMAGE_TOKEN, IMAGE_TOKEN * n_img)
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        px = pixel_values(images, proc)
        expected = []
        for k in range(len(images)):
            input_ids = torch.tensor([ids])
            gen = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                pixel_values=torch.from_numpy(px[k : k + 1]),
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=stops[1],
            )[0, len(ids) :].tolist()
            gen = gen[: next((i for i, t in enumerate(gen) if t in stops), len(gen))]
            expected.append(
                {"image": f"images/tile{k}.png", "ids": gen, "text": tokenizer.decode(gen, skip_special_tokens=True)}
            )
        ort_ids, _ = OrtLlava(out, geometry).generate(
            np.array([ids] * len(images), np.int64), px, cfg.image_token_index, args.max_new_tokens, stops
        )
        for e, got in zip(expected, ort_ids):
            assert e["ids"] == got, f"ONNX loop {got} != PyTorch generate {e['ids']} for {e['image']}"
        print(f"onnxruntime greedy ids = PyTorch generate (exact) for {len(images)} image(s), "
              f"up to {args.max_new_tokens} new tokens")
        if args.tiny_random:
            common.write_json(
                out / "expected.json",
                {
                    "reference": "LlavaForConditionalGeneration.generate(do_sample=False), one image at a time; "
                    "the ONNX loop in llava.py (batch of 4) gives the same ids",
                    "prompt_ids": ids,
                    "max_new_tokens": args.max_new_tokens,
                    "greedy": expected,
                },
            )

    if args.bench:
        import json

        meta = json.loads((out / "export.json").read_text())
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(out / "tokenizer.json"))
        text = meta["prompt_template"].replace("{query}", meta["query"])
        text = text.replace(meta["image_token"], meta["image_token"] * meta["image_seq_length"])
        ids = tok.encode(text, add_special_tokens=False).ids
        from PIL import Image

        img = Image.open(out / "images/tile0.png") if (out / "images/tile0.png").exists() else test_images(1, 32)[0]
        px = pixel_values([img], {"size": {"height": meta["image_size"][0], "width": meta["image_size"][1]},
                                  "image_mean": meta["image_mean"], "image_std": meta["image_std"],
                                  "rescale_factor": meta["rescale_factor"]})
        runner = OrtLlava(out, meta)
        runner.generate(np.array([ids], np.int64), px, meta["image_token_id"], 4, [])  # warm-up
        rates = []
        for _ in range(args.bench_runs):
            got, secs = runner.generate(np.array([ids], np.int64), px, meta["image_token_id"], args.bench, [])
            rates.append((len(got[0]) - 1) / secs)
        rates.sort()
        print(f"python onnxruntime decode loop: {args.bench} new tokens, 1 thread, {len(rates)} runs: "
              f"median {rates[len(rates) // 2]:.0f} tokens/s (min {rates[0]:.0f}, max {rates[-1]:.0f})")


if __name__ == "__main__":
    main()
