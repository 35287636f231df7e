#!/usr/bin/env python3
"""Export a BART spelling corrector to ONNX (optimum's seq2seq layout) for `correct model = "bart"`.

Default checkpoint: `oliverguhr/spelling-correction-english-base`
(https://huggingface.co/oliverguhr/spelling-correction-english-base): BART-base fine-tuned to repair
English spelling errors; MIT licence (model card). Any BartForConditionalGeneration checkpoint can be
named with `--model`.

    python models/export/bart.py --out assets/models/bart                     # real weights (internet)
    python models/export/bart.py --tiny-random --out models/fixtures/bart     # the test fixture

Layout written to `--out`:

    encoder_model.onnx              input_ids i64[b, S], attention_mask i64[b, S]
                                    -> last_hidden_state f32[b, S, d]
    decoder_model.onnx              input_ids i64[b, t], encoder_attention_mask i64[b, S],
                                    encoder_hidden_states f32[b, S, d]
                                    -> logits f32[b, t, vocab], present.{i}.decoder.key/value
                                    f32[b, heads, t, hd], present.{i}.encoder.key/value f32[b, heads, S, hd]
    decoder_with_past_model.onnx    input_ids i64[b, 1], encoder_attention_mask i64[b, S],
                                    past_key_values.{i}.decoder.key/value f32[b, heads, past, hd],
                                    past_key_values.{i}.encoder.key/value f32[b, heads, S, hd]
                                    -> logits f32[b, 1, vocab], present.{i}.decoder.key/value (past + 1)
    tokenizer.json, config.json, generation_config.json
    export.json                     start/forced/stop tokens, cache shapes, versions, command, and
                                    `generation`: the checkpoint's generation settings (num_beams,
                                    no_repeat_ngram_size, early_stopping, length_penalty, forced BOS/EOS,
                                    max_length, min_length, decoder_start_token_id; null = not set)
    expected.json                   (tiny mode) ids of `generate` for fixed texts: greedy and beam search
    generation.json                 (tiny mode) ids of `generate` with the exported generation settings
                                    (and variants of them) and the token limit sized from the input

The Rust decoder (`models/src/bart.rs`) takes its defaults from `generation`. A `max_length` the
checkpoint does not set is left null: transformers' own fallback of 20 tokens would cut a 40-token
caption, so the limit is sized from the input instead (`token_limit` below, the same rule as Rust).

`--tiny-random`: the same BartForConditionalGeneration class from a shrunken BartConfig with random
weights, and a byte-level BPE tokenizer (RoBERTa post-processor, `<s> <pad> </s> <unk>` … `<mask>`)
trained locally. Its generation settings are bart-base's (4 beams, no_repeat_ngram_size 3, early
stopping, forced BOS/EOS) plus `max_length 40` and `min_length 4`, and `</s>` gets a logit bias of
5 so that some hypotheses end early and the early-stopping and min-length rules are exercised.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import common

REAL = "oliverguhr/spelling-correction-english-base"
OPSET = 17
TEXTS = [
    "teh cat sat on teh mat",
    "a red motorbke is parked on the stret",
    "A person in a white space suit.",
]
# Extra texts of generation.json: a short one and one past the limit's cap.
GENERATION_TEXTS = TEXTS + [
    "teh cat",
    "there are two dogs playing wiht a red bal in teh park near a big tree and a smal house",
]
# The generation settings `export.json` carries (transformers' GenerationConfig names).
GENERATION_KEYS = [
    "num_beams",
    "no_repeat_ngram_size",
    "early_stopping",
    "length_penalty",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "max_length",
    "min_length",
    "decoder_start_token_id",
]
# New-token limit sized from the input (models/src/bart.rs `Bart::token_limit` uses the same rule):
# a spelling fix is about as long as its input in tokens (misspellings split into more BPE pieces
# than the fixed words), so 1.5 x the input tokens + 10 leaves room, capped by the checkpoint's
# max_length (when it sets one) and the decoder's learned positions.
LIMIT_MARGIN = 10


def token_limit(n_input: int, generation: dict, max_positions: int) -> int:
    limit = min(n_input + n_input // 2 + LIMIT_MARGIN, max_positions - 1)
    if generation.get("max_length") is not None:
        limit = min(limit, generation["max_length"] - 1)
    return max(limit, 1)


def generation_settings(model) -> dict:
    """The checkpoint's generation settings (None where it sets none; transformers then uses its defaults)."""
    gc = model.generation_config
    out = {k: getattr(gc, k, None) for k in GENERATION_KEYS}
    for k in ("forced_bos_token_id", "forced_eos_token_id", "decoder_start_token_id"):
        if isinstance(out[k], list):
            out[k] = out[k][0]
    return out


def attention(q, k, v, bias, heads):
    """Multi-head attention of [b, t, d] queries on [b, heads, T, hd] keys/values."""
    b, t, d = q.shape
    hd = d // heads
    q = q.view(b, t, heads, hd).transpose(1, 2)
    w = torch.matmul(q, k.transpose(2, 3)) * (hd**-0.5) + bias
    p = torch.softmax(w, dim=-1)
    return torch.matmul(p, v).transpose(1, 2).reshape(b, t, d)


def split_heads(x, heads):
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


class Encoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.model.encoder

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class Decoder(nn.Module):
    """BART decoder with explicit caches, from the checkpoint's own modules.

    `with_past=False`: the first step (any number of tokens), computing the cross-attention keys
    and values from `encoder_hidden_states`. `with_past=True`: one token per row, both caches given.
    """

    def __init__(self, model, with_past: bool):
        super().__init__()
        self.model = model
        self.dec = model.model.decoder
        self.heads = model.config.decoder_attention_heads
        self.with_past = with_past

    def forward(self, input_ids, encoder_attention_mask, *rest):
        dec = self.dec
        neg = torch.finfo(torch.float32).min
        if self.with_past:
            past = rest
            past_len = past[0].shape[2]
        else:
            enc = rest[0]
            past = None
            past_len = 0
        b, t = input_ids.shape
        positions = torch.arange(t, device=input_ids.device) + past_len
        x = dec.embed_tokens(input_ids) + F.embedding(positions + dec.embed_positions.offset, dec.embed_positions.weight)
        x = dec.layernorm_embedding(x)
        total = past_len + t
        causal = torch.arange(total)[None, :] <= positions[:, None]
        self_bias = torch.where(causal, 0.0, neg)[None, None]
        cross_bias = torch.where(encoder_attention_mask[:, None, None, :] > 0, 0.0, neg)
        presents = []
        for i, layer in enumerate(dec.layers):
            sa, ca = layer.self_attn, layer.encoder_attn
            k = split_heads(sa.k_proj(x), self.heads)
            v = split_heads(sa.v_proj(x), self.heads)
            if past is not None:
                k = torch.cat([past[4 * i], k], dim=2)
                v = torch.cat([past[4 * i + 1], v], dim=2)
                ck, cv = past[4 * i + 2], past[4 * i + 3]
            else:
                ck = split_heads(ca.k_proj(enc), self.heads)
                cv = split_heads(ca.v_proj(enc), self.heads)
            presents += [k, v] if past is not None else [k, v, ck, cv]
            x = layer.self_attn_layer_norm(x + sa.out_proj(attention(sa.q_proj(x), k, v, self_bias, self.heads)))
            x = layer.encoder_attn_layer_norm(
                x + ca.out_proj(attention(ca.q_proj(x), ck, cv, cross_bias, self.heads))
            )
            x = layer.final_layer_norm(x + layer.fc2(layer.activation_fn(layer.fc1(x))))
        logits = self.model.lm_head(x) + self.model.final_logits_bias
        return (logits, *presents)


def build(tiny: bool, seed: int, name: str):
    from transformers import BartConfig, BartForConditionalGeneration

    if not tiny:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(name)
        model = BartForConditionalGeneration.from_pretrained(name, dtype=torch.float32).eval()
        return model, getattr(tok, "backend_tokenizer", None) or tok._tokenizer
    common.seed_everything(seed)
    tok = common.train_byte_level_bpe(300, ["<s>", "<pad>", "</s>", "<unk>"], qwen_style=False)
    tok.add_special_tokens(["<mask>"])
    config = BartConfig(
        vocab_size=tok.get_vocab_size(),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        # As bart-base: decoding starts with </s>, then <s> is forced, and </s> ends it.
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_bos_token_id=0,
        init_std=1.0,
    )
    model = BartForConditionalGeneration(config).eval()
    gc = model.generation_config
    # bart-base's generation settings, and lengths that the fixture's texts reach.
    gc.forced_bos_token_id, gc.forced_eos_token_id = 0, 2
    gc.num_beams, gc.no_repeat_ngram_size, gc.early_stopping, gc.length_penalty = 4, 3, True, 1.0
    gc.max_length, gc.min_length = 40, 4
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0.0, 0.1)
        model.final_logits_bias[0, config.eos_token_id] = 5.0
    return model, tok


def export(model, out: Path) -> dict:
    cfg = model.config
    layers, heads, d = cfg.decoder_layers, cfg.decoder_attention_heads, cfg.d_model
    hd = d // heads
    b, S, t, p = 2, 5, 3, 4
    ids = torch.randint(4, cfg.vocab_size - 1, (b, S))
    with torch.no_grad():
        torch.onnx.export(
            Encoder(model).eval(),
            (ids, torch.ones(b, S, dtype=torch.int64)),
            str(out / "encoder_model.onnx"),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "encoder_sequence"},
                "attention_mask": {0: "batch", 1: "encoder_sequence"},
                "last_hidden_state": {0: "batch", 1: "encoder_sequence"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
        enc_axes = {"encoder_attention_mask": {0: "batch", 1: "encoder_sequence"}}
        first_present, axes = [], dict(enc_axes)
        for i in range(layers):
            for part, seq in (("decoder", "decoder_sequence"), ("encoder", "encoder_sequence")):
                for kind in ("key", "value"):
                    n = f"present.{i}.{part}.{kind}"
                    first_present.append(n)
                    axes[n] = {0: "batch", 2: seq}
        axes.update(
            {
                "input_ids": {0: "batch", 1: "decoder_sequence"},
                "encoder_hidden_states": {0: "batch", 1: "encoder_sequence"},
                "logits": {0: "batch", 1: "decoder_sequence"},
            }
        )
        torch.onnx.export(
            Decoder(model, with_past=False).eval(),
            (torch.randint(4, 50, (b, t)), torch.ones(b, S, dtype=torch.int64), torch.randn(b, S, d)),
            str(out / "decoder_model.onnx"),
            input_names=["input_ids", "encoder_attention_mask", "encoder_hidden_states"],
            output_names=["logits", *first_present],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
        past, past_names, present_names, axes = [], [], [], dict(enc_axes)
        for i in range(layers):
            for part, seq, length in (("decoder", "past_decoder_sequence", p), ("encoder", "encoder_sequence", S)):
                for kind in ("key", "value"):
                    n = f"past_key_values.{i}.{part}.{kind}"
                    past.append(torch.randn(b, heads, length, hd))
                    past_names.append(n)
                    axes[n] = {0: "batch", 2: seq}
                    if part == "decoder":
                        present_names.append(f"present.{i}.decoder.{kind}")
                        axes[present_names[-1]] = {0: "batch", 2: "past_decoder_sequence + 1"}
        axes.update({"input_ids": {0: "batch"}, "logits": {0: "batch"}})
        torch.onnx.export(
            Decoder(model, with_past=True).eval(),
            (torch.randint(4, 50, (b, 1)), torch.ones(b, S, dtype=torch.int64), *past),
            str(out / "decoder_with_past_model.onnx"),
            input_names=["input_ids", "encoder_attention_mask", *past_names],
            output_names=["logits", *present_names],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    for n in ("encoder_model", "decoder_model", "decoder_with_past_model"):
        common.check_onnx(out / f"{n}.onnx")
    return {"num_layers": layers, "num_heads": heads, "head_dim": hd, "d_model": d, "vocab_size": cfg.vocab_size}


def ort_greedy(out: Path, geometry: dict, input_ids: list[int], start: int, forced_bos, eos: int, max_new: int):
    """Greedy decoding with the exported files and onnxruntime (the loop the Rust side runs)."""
    enc = common.ort_session(out / "encoder_model.onnx")
    first = common.ort_session(out / "decoder_model.onnx")
    step = common.ort_session(out / "decoder_with_past_model.onnx")
    ids = np.array([input_ids], np.int64)
    mask = np.ones_like(ids)
    hidden = enc.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    res = first.run(None, {"input_ids": np.array([[start]], np.int64), "encoder_attention_mask": mask,
                           "encoder_hidden_states": hidden})
    names = [o.name.replace("present", "past_key_values") for o in first.get_outputs()[1:]]
    cache = dict(zip(names, res[1:]))
    out_ids = []
    for k in range(max_new):
        nxt = forced_bos if (k == 0 and forced_bos is not None) else int(res[0][0, -1].argmax())
        if nxt == eos:
            break
        out_ids.append(nxt)
        res = step.run(None, {"input_ids": np.array([[nxt]], np.int64), "encoder_attention_mask": mask, **cache})
        for n, v in zip([o.name.replace("present", "past_key_values") for o in step.get_outputs()[1:]], res[1:]):
            cache[n] = v
    return out_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=common.REPO / "assets/models/bart")
    ap.add_argument("--model", default=REAL, help="a BartForConditionalGeneration checkpoint")
    ap.add_argument("--tiny-random", action="store_true", help="random weights, shrunken config (test fixture)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=10)
    ap.add_argument("--beams", type=int, default=3, help="beam width of the expected beam-search ids")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model, tok = build(args.tiny_random, args.seed, args.model)
    geometry = export(model, out)
    tok.save(str(out / "tokenizer.json"))
    model.config.to_json_file(str(out / "config.json"))
    model.generation_config.to_json_file(str(out / "generation_config.json"))
    gc = model.generation_config
    meta = {
        "model": "tiny-random" if args.tiny_random else args.model,
        "command": common.command_line(),
        "versions": common.versions(),
        "decoder_start_token_id": gc.decoder_start_token_id,
        "forced_bos_token_id": gc.forced_bos_token_id,
        "eos_token_id": gc.eos_token_id if isinstance(gc.eos_token_id, int) else gc.eos_token_id[0],
        "pad_token_id": gc.pad_token_id,
        "max_position_embeddings": model.config.max_position_embeddings,
        "generation": generation_settings(model),
        **geometry,
    }
    common.write_json(out / "export.json", meta)
    if not args.tiny_random:
        return
    write_generation_reference(model, tok, meta, out / "generation.json")

    expected = []
    for text in TEXTS:
        ids = tok.encode(text).ids
        x = torch.tensor([ids])
        common_args = dict(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            forced_eos_token_id=None,
            no_repeat_ngram_size=0,
            min_length=0,
        )
        with torch.no_grad():
            greedy = model.generate(num_beams=1, **common_args)[0].tolist()
            beam = model.generate(num_beams=args.beams, length_penalty=1.0, early_stopping=True, **common_args)[0].tolist()

        def strip(seq):
            seq = seq[1:]  # decoder_start
            return seq[: seq.index(meta["eos_token_id"])] if meta["eos_token_id"] in seq else seq

        greedy, beam = strip(greedy), strip(beam)
        got = ort_greedy(out, geometry, ids, meta["decoder_start_token_id"], meta["forced_bos_token_id"],
                         meta["eos_token_id"], args.max_new_tokens)
        assert got == greedy, f"ONNX loop {got} != PyTorch generate {greedy} for {text!r}"
        expected.append({"text": text, "input_ids": ids, "greedy": greedy, "beam": beam,
                         "greedy_text": tok.decode(greedy, skip_special_tokens=True)})
    common.write_json(
        out / "expected.json",
        {
            "reference": "BartForConditionalGeneration.generate(do_sample=False, forced_eos_token_id=None, "
            "no_repeat_ngram_size=0, min_length=0); beam: num_beams=B, length_penalty=1, early_stopping=True. Ids after "
            "decoder_start, eos excluded. The greedy ids are also checked against the ONNX loop in bart.py.",
            "max_new_tokens": args.max_new_tokens,
            "beams": args.beams,
            "cases": expected,
        },
    )


# Variants of the exported settings in generation.json: each overrides some of them; `max_new_tokens`
# replaces the limit sized from the input (as the `correct` stage's key does).
VARIANTS = [
    {},
    {"num_beams": 1},
    {"num_beams": 3, "no_repeat_ngram_size": 2, "early_stopping": False, "length_penalty": 2.0},
    {"num_beams": 4, "early_stopping": "never", "length_penalty": 0.5, "min_length": 0},
    {"num_beams": 2, "no_repeat_ngram_size": 0, "forced_eos_token_id": None, "max_new_tokens": 7},
]


def write_generation_reference(model, tok, meta: dict, path: Path) -> None:
    """`generate` with the exported settings (and VARIANTS) on GENERATION_TEXTS: the ids Rust must give."""
    gen = meta["generation"]
    cases = []
    for text in GENERATION_TEXTS:
        ids = tok.encode(text).ids
        x = torch.tensor([ids])
        for variant in VARIANTS:
            settings = {k: gen[k] for k in GENERATION_KEYS if k != "max_length"}
            settings.update({k: v for k, v in variant.items() if k != "max_new_tokens"})
            sized = "max_new_tokens" not in variant
            limit = token_limit(len(ids), gen, meta["max_position_embeddings"]) if sized else variant["max_new_tokens"]
            with torch.no_grad():
                seq = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                     max_new_tokens=limit, **settings)[0].tolist()
            seq = seq[1:]  # decoder_start
            eos = meta["eos_token_id"]
            seq = seq[: seq.index(eos)] if eos in seq else seq
            cases.append({"text": text, "input_ids": ids, "settings": settings, "sized_from_input": sized,
                          "max_new_tokens": limit, "ids": seq})
    common.write_json(
        path,
        {
            "reference": "BartForConditionalGeneration.generate(do_sample=False, max_new_tokens=limit, **settings) "
            "on the PyTorch model the ONNX files were exported from. Ids after decoder_start, eos excluded. "
            "limit = min(n + n // 2 + 10, max_position_embeddings - 1, max_length - 1) for n input tokens "
            "when sized_from_input, else the variant's max_new_tokens.",
            "cases": cases,
        },
    )


if __name__ == "__main__":
    main()
