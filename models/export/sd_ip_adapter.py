#!/usr/bin/env python3
"""Export Stable Diffusion 1.5 + IP-Adapter (`ip-adapter_sd15`) to ONNX for `reconstruct model = "sd_ip_adapter"`.

The receiver of Multi-SC (§II-B, §III-D, eq. 8-10): the corrected texts are the text prompt, the
received object slice the image prompt; IP-Adapter's decoupled cross-attention adds
λ·Attention(Q, K_ip, V_ip) to the text cross-attention (eq. 10), λ = 0 being plain text-to-image.

- Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", CVPR 2022;
  checkpoint `stable-diffusion-v1-5/stable-diffusion-v1-5` (CreativeML OpenRAIL-M),
  https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5
- Ye et al., "IP-Adapter: Text Compatible Image Prompt Adapter for Text-to-Image Diffusion Models",
  arXiv:2308.06721; `h94/IP-Adapter` (Apache-2.0): `models/ip-adapter_sd15.bin` (projection to 4
  image-prompt tokens, `to_k_ip`/`to_v_ip` of every cross-attention) and `models/image_encoder`
  (OpenCLIP ViT-H/14 with projection, 1024-d), https://huggingface.co/h94/IP-Adapter

    python models/export/sd_ip_adapter.py --out assets/models/sd15_ip                   # fp32 (internet)
    python models/export/sd_ip_adapter.py --fp16 --out assets/models/sd15_ip-fp16       # fp16 weights
    python models/export/sd_ip_adapter.py --tiny-random --out models/fixtures/sd15_ip   # the test fixture
    python models/export/sd_ip_adapter.py --tiny-random --fp16 --external-data --out models/fixtures/sd15_ip-fp16
(or all paper-tier exports at once: `scripts/export-paper-models`).

Files (B batch, D the text width 768, E the image-embedding width 1024, S the image encoder's size 224,
H×W the output size, h = H/8, w = W/8):
- `text_encoder.onnx`: `input_ids` i64[B, 77] -> `last_hidden_state` f32[B, 77, D]
- `image_encoder.onnx`: `pixel_values` f32[B, 3, S, S] (CLIP-normalised) -> `image_embeds` f32[B, E]
- `image_proj.onnx`: `image_embeds` f32[B, E] -> `ip_tokens` f32[B, 4, D]
- `unet.onnx`: `sample` f32[B, 4, h, w], `timestep` f32[1], `encoder_hidden_states` f32[B, L, D]
  (L any length: 77 per prompt chunk, chunks concatenated along the sequence axis, as
  `reconstruct prompt_mode = "concat"` feeds it), `ip_tokens` f32[B, 4, D], `ip_scale` f32[1] (λ)
  -> `noise_pred` f32[B, 4, h, w]
- `vae_encoder.onnx`: `image` f32[B, 3, H, W] in [-1, 1] -> `latent_mean` f32[B, 4, h, w] (unscaled)
- `vae_decoder.onnx`: `latent` f32[B, 4, h, w] (already divided by the scaling factor) -> `image` f32[B, 3, H, W]
- `tokenizer.json` (CLIP BPE), `export.json` (shapes, tokens, pre-processing, scheduler config, versions).
With `--fp16` the weights are half precision and each graph casts its inputs and outputs, so the
tensors above stay f32 and the Rust side is the same.

Output sizes: any multiple of 8 px (`size_multiple` in `export.json`). diffusers' UNet decides in
Python whether each upsampler doubles its input or matches the skip connection's size
(`forward_upsample_size`, true when the latent is not a multiple of 2^upsamplers = 8); a trace at a
64-px multiple records plain doubling, and such a graph fails for e.g. 520×520 (latent 65 -> 33 ->
17 -> 9, doubled to 18 against a skip of 17). The UNet is therefore traced at a latent one pixel
larger than a multiple of 8, which records the skip-sized upsampling; at multiples of 8 both give
the same nearest-neighbour result. The script checks the graph against PyTorch at such a size.

External data: graphs past 2 GiB (fp32 UNet 3.4 GB, ViT-H image encoder 2.5 GB) keep their weights
in one `<name>.onnx.data` beside `<name>.onnx` (never loose per-tensor files shared by the folder);
`--external-data` forces this for every graph (the fp16 fixture is written that way so the Rust
tests load such graphs).

`--tiny-random` builds the same classes from small configs with random weights: diffusers'
`UNet2DConditionModel` with SD 1.5's four down and four up blocks (three cross-attention blocks
each way, so three downsamplers and three upsamplers; width 32, one layer each,
cross-attention width 32) with this script's decoupled cross-attention processor, `AutoencoderKL` (four blocks, so the latent is 1/8 of the image
as in SD), `CLIPTextModel` (2 layers, width 32, 77 positions), `CLIPVisionModelWithProjection` (32 px,
patch 8, projection 24), diffusers' `ImageProjection` (4 tokens), and a CLIP-style BPE tokenizer
trained locally. It writes `expected.json`: diffusers' DDIM and Euler-ancestral timesteps and sigmas
for SD 1.5's scheduler config, the token ids, one guided denoising step of each scheduler from fixed
latents (DDIM with λ = 0.6, Euler with its recorded noise), the text-only UNet (diffusers' own
attention, no adapter) at the same latents, a 3-step DDIM run decoded to `ddim3.png`, the VAE
encoding of `init.png`, and a prompt past 77 tokens cut into 75-token chunks (`chunk_ids`) whose
text states, concatenated along the sequence axis, drive one guided DDIM step (`concat_*`), one
guided step at an 88×72 output (latent 11×9, not a multiple of 8: `odd_size_*`), and
`CLIPImageProcessor`'s pixels of a 52×41 image (`clip_input.png`, `clip_pixel_values`); every ONNX
file is checked against PyTorch inside the script.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import common

OPSET = 17
NUM_IP_TOKENS = 4
MAX_LENGTH = 77
SCALING_FACTOR = 0.18215
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SD_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
IP_REPO = "h94/IP-Adapter"
# SD 1.5's scheduler_config.json (the parts the schedulers use).
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
PROMPT = "a red motorbike is parked on the street beside a wall"
# Past 77 CLIP tokens with the tiny tokenizer (and with SD's): `prompt_mode = "concat"` chunks it.
LONG_PROMPT = " ".join(common.TINY_CORPUS[1:8])


class Holder:
    """λ of the current UNet call, shared by every decoupled processor (set in `IPUNet.forward`)."""

    scale = None


class DecoupledCrossAttn(nn.Module):
    """IP-Adapter's decoupled cross-attention (eq. 10): text attention + λ · image-prompt attention.

    `encoder_hidden_states` holds the text tokens followed by the `NUM_IP_TOKENS` image-prompt tokens;
    `to_k_ip` / `to_v_ip` are the adapter's projections (as diffusers' `IPAdapterAttnProcessor2_0`).
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int, holder: Holder):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.holder = holder

    def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        residual = hidden_states
        b = hidden_states.shape[0]
        text, ip = encoder_hidden_states[:, :-NUM_IP_TOKENS], encoder_hidden_states[:, -NUM_IP_TOKENS:]
        q = attn.to_q(hidden_states)
        heads = attn.heads
        head_dim = q.shape[-1] // heads

        def split(x):
            return x.view(b, -1, heads, head_dim).transpose(1, 2)

        q = split(q)
        out = F.scaled_dot_product_attention(q, split(attn.to_k(text)), split(attn.to_v(text)))
        ip_out = F.scaled_dot_product_attention(q, split(self.to_k_ip(ip)), split(self.to_v_ip(ip)))
        out = out + self.holder.scale.to(out.dtype) * ip_out
        out = out.transpose(1, 2).reshape(b, -1, heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_adapter(unet, ip_state: dict | None):
    """Puts `DecoupledCrossAttn` on every cross-attention (`attn2`) of `unet`; loads the
    `ip_adapter` weights of `ip-adapter_sd15.bin` when given (keys `1.to_k_ip.weight`, `3.…`, as
    diffusers numbers them: one index per attention processor, cross-attentions odd)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    holder = Holder()
    procs = {}
    key_id = 1
    cross = unet.config.cross_attention_dim
    for name in unet.attn_processors.keys():
        if name.endswith("attn1.processor"):
            procs[name] = AttnProcessor2_0()
            continue
        if name.startswith("mid_block"):
            hidden = unet.config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(unet.config.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = unet.config.block_out_channels[int(name[len("down_blocks.")])]
        p = DecoupledCrossAttn(hidden, cross, holder)
        if ip_state is not None:
            p.to_k_ip.weight.data.copy_(ip_state[f"{key_id}.to_k_ip.weight"])
            p.to_v_ip.weight.data.copy_(ip_state[f"{key_id}.to_v_ip.weight"])
        key_id += 2
        procs[name] = p
    unet.set_attn_processor(procs)
    return holder


class IPUNet(nn.Module):
    """The UNet with the adapter baked in: text tokens, image-prompt tokens and λ as inputs."""

    def __init__(self, unet, holder: Holder, dtype=torch.float32):
        super().__init__()
        self.unet, self.holder, self.dtype = unet, holder, dtype

    def forward(self, sample, timestep, encoder_hidden_states, ip_tokens, ip_scale):
        self.holder.scale = ip_scale
        ehs = torch.cat([encoder_hidden_states, ip_tokens], dim=1).to(self.dtype)
        out = self.unet(sample.to(self.dtype), timestep, ehs, return_dict=False)[0]
        return out.float()


class TextEncoder(nn.Module):
    def __init__(self, m, dtype):
        super().__init__()
        self.m, self.dtype = m, dtype

    def forward(self, input_ids):
        return self.m(input_ids=input_ids).last_hidden_state.float()


class ImageEncoder(nn.Module):
    def __init__(self, m, dtype):
        super().__init__()
        self.m, self.dtype = m, dtype

    def forward(self, pixel_values):
        return self.m(pixel_values=pixel_values.to(self.dtype)).image_embeds.float()


class ImageProj(nn.Module):
    def __init__(self, m, dtype):
        super().__init__()
        self.m, self.dtype = m, dtype

    def forward(self, image_embeds):
        return self.m(image_embeds.to(self.dtype)).float()


class VaeEncoder(nn.Module):
    def __init__(self, vae, dtype):
        super().__init__()
        self.vae, self.dtype = vae, dtype

    def forward(self, image):
        return self.vae.encode(image.to(self.dtype)).latent_dist.mean.float()


class VaeDecoder(nn.Module):
    def __init__(self, vae, dtype):
        super().__init__()
        self.vae, self.dtype = vae, dtype

    def forward(self, latent):
        return self.vae.decode(latent.to(self.dtype)).sample.float()


def tiny_tokenizer():
    """A CLIP-style BPE (lower-case, `</w>` word ends, `<|startoftext|> … <|endoftext|>`)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=None))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(common.TINY_CORPUS * 4, trainer)
    bos, eos = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.RobertaProcessing(
        ("<|endoftext|>", eos), ("<|startoftext|>", bos), add_prefix_space=False, trim_offsets=False
    )
    return tok


def token_ids(tok, text: str, pad: int) -> list[int]:
    """CLIPTokenizer(padding="max_length", max_length=77, truncation=True) on a `tokenizers` object."""
    ids = tok.encode(text).ids
    if len(ids) > MAX_LENGTH:
        ids = ids[: MAX_LENGTH - 1] + [ids[-1]]
    return ids + [pad] * (MAX_LENGTH - len(ids))


def chunk_ids(tok, text: str, bos: int, eos: int, pad: int) -> list[list[int]]:
    """`reconstruct prompt_mode = "concat"`: the prompt's tokens (without its own start/end) in
    chunks of 75, each as `<|startoftext|> chunk <|endoftext|>` padded to 77 (one chunk for "")."""
    ids = tok.encode(text).ids
    if ids and ids[0] == bos:
        ids = ids[1:]
    if ids and ids[-1] == eos:
        ids = ids[:-1]
    body = MAX_LENGTH - 2
    chunks = [ids[i:i + body] for i in range(0, len(ids), body)] or [[]]
    return [[bos] + c + [eos] + [pad] * (body - len(c)) for c in chunks]


def build_tiny():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.embeddings import ImageProjection
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    tok = tiny_tokenizer()
    bos, eos = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    text_cfg = CLIPTextConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, bos_token_id=bos, eos_token_id=eos,
        pad_token_id=eos, projection_dim=32,
    )
    text_cfg._attn_implementation = "eager"
    text_encoder = CLIPTextModel(text_cfg)
    vis_cfg = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=24,
    )
    vis_cfg._attn_implementation = "eager"
    image_encoder = CLIPVisionModelWithProjection(vis_cfg)
    # SD 1.5's block layout (three downsamplers, three upsamplers), narrow.
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32, 32, 32),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64, scaling_factor=SCALING_FACTOR,
    )
    proj = ImageProjection(image_embed_dim=24, cross_attention_dim=32, num_image_text_embeds=NUM_IP_TOKENS)
    with torch.no_grad():
        # Wider than the default initialisation, so the adapter's tokens visibly move the output.
        for m in (proj,):
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.2)
    holder = install_adapter(unet, None)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "to_k_ip" in name or "to_v_ip" in name:
                p.normal_(0, 0.3)
    return dict(tok=tok, bos=bos, eos=eos, pad=eos, text_encoder=text_encoder, image_encoder=image_encoder,
                unet=unet, holder=holder, vae=vae, proj=proj, image_size=32, size=[64, 64])


def build_real(dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.embeddings import ImageProjection
    from huggingface_hub import hf_hub_download
    from transformers import AutoTokenizer, CLIPTextModel, CLIPVisionModelWithProjection

    tokz = AutoTokenizer.from_pretrained(SD_REPO, subfolder="tokenizer")  # the fast (tokenizers) backend
    text_encoder = CLIPTextModel.from_pretrained(SD_REPO, subfolder="text_encoder", attn_implementation="eager")
    unet = UNet2DConditionModel.from_pretrained(SD_REPO, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(SD_REPO, subfolder="vae")
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(
        IP_REPO, subfolder="models/image_encoder", attn_implementation="eager"
    )
    state = torch.load(hf_hub_download(IP_REPO, "models/ip-adapter_sd15.bin"), map_location="cpu")
    proj = ImageProjection(
        image_embed_dim=image_encoder.config.projection_dim, cross_attention_dim=unet.config.cross_attention_dim,
        num_image_text_embeds=NUM_IP_TOKENS,
    )
    ps = state["image_proj"]
    proj.load_state_dict({"image_embeds.weight": ps["proj.weight"], "image_embeds.bias": ps["proj.bias"],
                          "norm.weight": ps["norm.weight"], "norm.bias": ps["norm.bias"]})
    holder = install_adapter(unet, state["ip_adapter"])
    tok = getattr(tokz, "backend_tokenizer", None) or tokz._tokenizer
    return dict(tok=tok, bos=tokz.bos_token_id, eos=tokz.eos_token_id, pad=tokz.pad_token_id,
                text_encoder=text_encoder, image_encoder=image_encoder, unet=unet, holder=holder, vae=vae,
                proj=proj, image_size=image_encoder.config.image_size, size=[512, 512])


def export(module, args, path: Path, inputs, outputs, dynamic, external: bool = False):
    with common.onnx_target(path, external) as target, torch.no_grad():
        torch.onnx.export(module, args, str(target), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    common.check_onnx(path)


def trace_latent(unet, h: int, w: int) -> tuple[int, int]:
    """A latent size near `h × w` that is not a multiple of 2^upsamplers, so that diffusers
    traces the upsamplers to the skip connections' sizes (module docs, "Output sizes")."""
    m = 2 ** unet.num_upsamplers
    return (h + 1 if h % m == 0 else h), (w + 1 if w % m == 0 else w)


def check_sizes(m, out: Path, unet, holder, dtype) -> None:
    """The exported UNet and VAE decoder against PyTorch at the export's size and at a latent
    that is not a multiple of 8 (the case the upsamplers' trace decides), tolerances printed."""
    W, H = m["size"]
    d_model = unet.config.cross_attention_dim
    tol = 2e-2 if dtype == torch.float16 else 1e-4
    ipunet, vae = IPUNet(unet, holder, dtype), m["vae"] if dtype == torch.float32 else copy.deepcopy(m["vae"]).half()
    sess_unet = common.ort_session(out / "unet.onnx")
    sess_vae = common.ort_session(out / "vae_decoder.onnx")
    g = torch.Generator().manual_seed(3)
    for h, w in ((H // 8, W // 8), (H // 8 + 3, W // 8 + 1)):
        x = torch.randn(2, 4, h, w, generator=g)
        text = torch.randn(2, MAX_LENGTH, d_model, generator=g)
        ip = torch.randn(2, NUM_IP_TOKENS, d_model, generator=g)
        feeds = {"sample": x, "timestep": torch.tensor([500.0]), "encoder_hidden_states": text, "ip_tokens": ip,
                 "ip_scale": torch.tensor([0.6])}
        with torch.no_grad():
            want = ipunet(*feeds.values())
            img = VaeDecoder(vae, dtype)(x[:1])
        got = sess_unet.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
        close(got, want, f"unet at a {w * 8}x{h * 8} output (latent {w}x{h})", tol)
        got = sess_vae.run(None, {"latent": x[:1].numpy()})[0]
        assert got.shape == (1, 3, h * 8, w * 8), f"vae decoder at latent {w}x{h}: shape {got.shape}"
        close(got, img, f"vae decoder at latent {w}x{h}", tol)


def close(a, b, what: str, tol: float = 1e-4):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    err = float(np.max(np.abs(a - b)))
    scale = max(1.0, float(np.max(np.abs(b))))
    assert err <= tol * scale, f"{what}: max abs difference {err} (scale {scale})"
    print(f"{what}: onnxruntime = torch (max abs difference {err:.2e})")


def clip_pixels(img: np.ndarray) -> torch.Tensor:
    """uint8 HWC at the encoder's size -> CLIP-normalised f32 [1, 3, S, S]."""
    x = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    return x[None]


def fixture_images(size: int, image_size: int):
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:image_size, 0:image_size] / image_size
    obj = np.stack([200 * xx + 30, 80 + 100 * yy, 60 + 120 * xx * yy], -1) + rng.uniform(0, 40, (image_size, image_size, 3))
    yy, xx = np.mgrid[0:size, 0:size] / size
    init = np.stack([60 + 150 * yy, 90 + 60 * xx, 200 - 100 * yy], -1) + rng.uniform(0, 30, (size, size, 3))
    return np.clip(obj, 0, 255).astype(np.uint8), np.clip(init, 0, 255).astype(np.uint8)


def references(m, args, out: Path, sessions) -> dict:
    """The values `models/tests/it/receiver.rs` compares with (tiny fixture)."""
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler
    from PIL import Image

    exp: dict = {"prompt": PROMPT, "schedulers": {}}
    for steps in (4, 10, 50):
        d = DDIMScheduler.from_config(SCHEDULER_CONFIG)
        d.set_timesteps(steps)
        e = EulerAncestralDiscreteScheduler.from_config(SCHEDULER_CONFIG)
        e.set_timesteps(steps)
        exp["schedulers"][str(steps)] = {
            "ddim_timesteps": d.timesteps.tolist(),
            "euler_timesteps": [float(t) for t in e.timesteps.tolist()],
            "euler_sigmas": e.sigmas.tolist(),
            "euler_init_noise_sigma": float(e.init_noise_sigma),
        }
    tok, pad = m["tok"], m["pad"]
    cond_ids, uncond_ids = token_ids(tok, PROMPT, pad), token_ids(tok, "", pad)
    exp["prompt_ids"], exp["empty_ids"] = cond_ids, uncond_ids
    obj, init = fixture_images(m["size"][0], m["image_size"])
    Image.fromarray(obj).save(out / "object.png")
    Image.fromarray(init).save(out / "init.png")

    te, ie, proj, unet, vae = m["text_encoder"], m["image_encoder"], m["proj"], m["unet"], m["vae"]
    ipunet = IPUNet(unet, m["holder"])
    plain = copy.deepcopy(unet)
    from diffusers.models.attention_processor import AttnProcessor2_0

    plain.set_attn_processor(AttnProcessor2_0())  # diffusers' own attention, no adapter: text-to-image
    g_scale, lam = 7.5, 0.6
    with torch.no_grad():
        text = te(input_ids=torch.tensor([uncond_ids, cond_ids])).last_hidden_state
        embeds = ie(pixel_values=clip_pixels(obj)).image_embeds
        ip = proj(torch.cat([torch.zeros_like(embeds), embeds]))
        exp["image_embeds"] = embeds[0].tolist()
        exp["ip_tokens"] = ip[1].flatten().tolist()
        h, w = m["size"][1] // 8, m["size"][0] // 8
        lat0 = torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(42))
        exp["latents0"] = lat0.flatten().tolist()

        def guided(model_out):
            u, c = model_out.chunk(2)
            return u + g_scale * (c - u)

        # DDIM, 4 steps: one step at t_0.
        d = DDIMScheduler.from_config(SCHEDULER_CONFIG)
        d.set_timesteps(4)
        t0 = d.timesteps[0]
        x = torch.cat([lat0] * 2)
        tt = torch.tensor([float(t0)])
        eps = guided(ipunet(x, tt, text, ip, torch.tensor([lam])))
        exp["ddim_eps"] = eps.flatten().tolist()
        exp["ddim_step1"] = d.step(eps, t0, lat0).prev_sample.flatten().tolist()
        onnx_eps = sessions["unet"].run(None, {"sample": x.numpy(), "timestep": tt.numpy(),
                                               "encoder_hidden_states": text.numpy(), "ip_tokens": ip.numpy(),
                                               "ip_scale": np.array([lam], np.float32)})[0]
        close(guided(torch.from_numpy(onnx_eps)), eps, "unet, one guided step")
        # λ = 0 is text-to-image: the UNet with diffusers' plain attention on the text alone.
        eps_text = guided(plain(x, tt, text, return_dict=False)[0])
        exp["text_only_eps"] = eps_text.flatten().tolist()
        zero = guided(ipunet(x, tt, text, ip, torch.tensor([0.0])))
        assert torch.equal(zero, eps_text) or torch.allclose(zero, eps_text, atol=1e-6), "λ = 0 is not text-only"
        # Euler ancestral, 4 steps: one step with a recorded noise draw.
        e = EulerAncestralDiscreteScheduler.from_config(SCHEDULER_CONFIG)
        e.set_timesteps(4)
        xe = lat0 * e.init_noise_sigma
        xin = e.scale_model_input(torch.cat([xe] * 2), e.timesteps[0])
        eps_e = guided(ipunet(xin, e.timesteps[0].reshape(1).float(), text, ip, torch.tensor([lam])))
        noise = torch.randn(lat0.shape, generator=torch.Generator().manual_seed(7))
        exp["euler_noise"] = noise.flatten().tolist()
        exp["euler_eps"] = eps_e.flatten().tolist()
        exp["euler_step1"] = e.step(eps_e, e.timesteps[0], xe, generator=torch.Generator().manual_seed(7)).prev_sample.flatten().tolist()
        # Three DDIM steps, decoded.
        d = DDIMScheduler.from_config(SCHEDULER_CONFIG)
        d.set_timesteps(3)
        lat = lat0
        for t in d.timesteps:
            eps = guided(ipunet(torch.cat([lat] * 2), torch.tensor([float(t)]), text, ip, torch.tensor([lam])))
            lat = d.step(eps, t, lat).prev_sample
        exp["ddim3_latents"] = lat.flatten().tolist()
        img = vae.decode(lat / SCALING_FACTOR).sample
        pix = ((img[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(pix).save(out / "ddim3.png")
        # The img2img start: the VAE's latent mean of `init.png`, times the scaling factor.
        xi = torch.from_numpy(init.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        exp["init_latents"] = (vae.encode(xi).latent_dist.mean * SCALING_FACTOR).flatten().tolist()
        exp.update(concat_reference(m, ipunet, sessions, x, tt, ip, lam, guided))
        # One guided DDIM step at 88×72 px: latent 11×9, not a multiple of 8.
        ow, oh = 88, 72
        lat_odd = torch.randn(1, 4, oh // 8, ow // 8, generator=torch.Generator().manual_seed(5))
        eps_odd = guided(ipunet(torch.cat([lat_odd] * 2), tt, text, ip, torch.tensor([lam])))
        exp["odd_size"], exp["odd_size_latents"] = [ow, oh], lat_odd.flatten().tolist()
        exp["odd_size_eps"] = eps_odd.flatten().tolist()
    exp.update(clip_reference(m, out))
    exp["guidance_scale"], exp["ip_scale"] = g_scale, lam
    return exp


def clip_reference(m, out: Path) -> dict:
    """The image prompt's pre-processing by transformers' `CLIPImageProcessor` (SD 1.5's
    `feature_extractor`: shortest edge to S with bicubic + antialias, the long side truncated
    with `int()`, centre crop S×S, CLIP mean/std) on a 52×41 image, `clip_input.png`."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    s = m["image_size"]
    rng = np.random.default_rng(19)
    yy, xx = np.mgrid[0:41, 0:52]
    img = np.stack([3 * xx + 40, 5 * yy + 20, 120 + 60 * np.sin(xx / 4.0) * np.cos(yy / 5.0)], -1)
    img = np.clip(img + rng.uniform(0, 25, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(out / "clip_input.png")
    proc = CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                              image_mean=CLIP_MEAN, image_std=CLIP_STD)
    px = proc(Image.open(out / "clip_input.png").convert("RGB"), return_tensors="pt").pixel_values
    assert tuple(px.shape) == (1, 3, s, s), px.shape
    return {"clip_pixel_values": px.flatten().tolist(), "clip_processor": type(proc).__name__}


def concat_reference(m, ipunet, sessions, x, tt, ip, lam, guided) -> dict:
    """`prompt_mode = "concat"` on `LONG_PROMPT`: each 77-token chunk encoded on its own, the
    states concatenated along the sequence axis; the empty prompt repeated to the same length."""
    tok, te = m["tok"], m["text_encoder"]
    chunks = chunk_ids(tok, LONG_PROMPT, m["bos"], m["eos"], m["pad"])
    assert len(chunks) >= 2, f"LONG_PROMPT is only {len(chunks)} chunk(s)"
    k = len(chunks)
    cond = te(input_ids=torch.tensor(chunks)).last_hidden_state.reshape(1, k * MAX_LENGTH, -1)
    empty = te(input_ids=torch.tensor([token_ids(tok, "", m["pad"])])).last_hidden_state
    text = torch.cat([empty.repeat(1, k, 1), cond])
    eps = guided(ipunet(x, tt, text, ip, torch.tensor([lam])))
    onnx_eps = sessions["unet"].run(None, {"sample": x.numpy(), "timestep": tt.numpy(),
                                           "encoder_hidden_states": text.numpy(), "ip_tokens": ip.numpy(),
                                           "ip_scale": np.array([lam], np.float32)})[0]
    close(guided(torch.from_numpy(onnx_eps)), eps, f"unet, {k * MAX_LENGTH} text tokens")
    return {"long_prompt": LONG_PROMPT, "concat_chunk_ids": chunks, "concat_eps": eps.flatten().tolist()}


def bench(out: Path, steps: int, threads: int, runs: int) -> None:
    """Seconds per guided denoising step (UNet batch 2 + DDIM update) with onnxruntime's Python API."""
    import json

    from diffusers import DDIMScheduler

    info = json.loads((out / "export.json").read_text())
    sess = common.ort_session(out / "unet.onnx", threads)
    h, w = info["size"][1] // 8, info["size"][0] // 8
    d_model = info["cross_attention_dim"]
    rng = np.random.default_rng(0)
    text = rng.standard_normal((2, MAX_LENGTH, d_model)).astype(np.float32)
    ip = rng.standard_normal((2, NUM_IP_TOKENS, d_model)).astype(np.float32)
    best = []
    for run in range(runs + 1):  # the first is a warm-up
        d = DDIMScheduler.from_config(SCHEDULER_CONFIG)
        d.set_timesteps(steps)
        lat = rng.standard_normal((1, 4, h, w)).astype(np.float32)
        t0 = time.perf_counter()
        for t in d.timesteps:
            eps = sess.run(["noise_pred"], {"sample": np.concatenate([lat, lat]), "timestep": np.array([float(t)], np.float32),
                                            "encoder_hidden_states": text, "ip_tokens": ip,
                                            "ip_scale": np.array([0.6], np.float32)})[0]
            e = eps[0:1] + 7.5 * (eps[1:2] - eps[0:1])
            lat = d.step(torch.from_numpy(e), t, torch.from_numpy(lat)).prev_sample.numpy()
        if run > 0:
            best.append((time.perf_counter() - t0) / steps)
    best.sort()
    print(f"python onnxruntime: {best[len(best) // 2]:.6f} s per step (median of {runs} runs of {steps} steps, "
          f"min {best[0]:.6f}, max {best[-1]:.6f}, {threads} thread(s))")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tiny-random", action="store_true", help="small random models (test fixture)")
    p.add_argument("--fp16", action="store_true", help="half-precision weights (f32 tensors at the boundary)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bench-only", action="store_true", help="only time the denoising loop of an existing export")
    p.add_argument("--bench-steps", type=int, default=20)
    p.add_argument("--bench-runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    common.add_external_data_flag(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.bench_only:
        bench(args.out, args.bench_steps, args.threads, args.bench_runs)
        return
    common.seed_everything(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if args.fp16 else torch.float32
    m = build_tiny() if args.tiny_random else build_real(dtype)
    for k in ("text_encoder", "image_encoder", "unet", "vae", "proj"):
        m[k] = m[k].eval()
    tok = m["tok"]
    tok.save(str(args.out / "tokenizer.json"))

    d_model = m["unet"].config.cross_attention_dim
    e_dim = m["image_encoder"].config.projection_dim
    s = m["image_size"]
    W, H = m["size"]
    ids = torch.tensor([token_ids(tok, PROMPT, m["pad"])] * 2)
    batch = {0: "batch"}
    out = args.out
    # Export copies in the target precision; the f32 modules stay for the references.
    half = (lambda mod: copy.deepcopy(mod).half()) if args.fp16 else (lambda mod: mod)
    ext = args.external_data
    export(TextEncoder(half(m["text_encoder"]), dtype), (ids,), out / "text_encoder.onnx", ["input_ids"],
           ["last_hidden_state"], {"input_ids": batch, "last_hidden_state": batch}, ext)
    export(ImageEncoder(half(m["image_encoder"]), dtype), (torch.randn(1, 3, s, s),), out / "image_encoder.onnx",
           ["pixel_values"], ["image_embeds"], {"pixel_values": batch, "image_embeds": batch}, ext)
    export(ImageProj(half(m["proj"]), dtype), (torch.randn(2, e_dim),), out / "image_proj.onnx", ["image_embeds"],
           ["ip_tokens"], {"image_embeds": batch, "ip_tokens": batch}, ext)
    unet_h = half(m["unet"])
    # A copy (fp16) has its own processors and so its own holder of λ.
    holder = next(p.holder for p in unet_h.attn_processors.values() if isinstance(p, DecoupledCrossAttn))
    spatial = {0: "batch", 2: "h", 3: "w"}
    th, tw = trace_latent(unet_h, H // 8, W // 8)
    export(IPUNet(unet_h, holder, dtype),
           (torch.randn(2, 4, th, tw), torch.tensor([999.0]), torch.randn(2, MAX_LENGTH, d_model),
            torch.randn(2, NUM_IP_TOKENS, d_model), torch.tensor([0.6])),
           out / "unet.onnx", ["sample", "timestep", "encoder_hidden_states", "ip_tokens", "ip_scale"], ["noise_pred"],
           {"sample": spatial, "encoder_hidden_states": {0: "batch", 1: "text_len"}, "ip_tokens": batch,
            "noise_pred": spatial}, ext)
    vae_h = half(m["vae"])
    export(VaeEncoder(vae_h, dtype), (torch.randn(1, 3, H, W),), out / "vae_encoder.onnx", ["image"], ["latent_mean"],
           {"image": spatial, "latent_mean": spatial}, ext)
    export(VaeDecoder(vae_h, dtype), (torch.randn(1, 4, H // 8, W // 8),), out / "vae_decoder.onnx", ["latent"], ["image"],
           {"latent": spatial, "image": spatial}, ext)
    check_sizes(m, out, unet_h, holder, dtype)

    info = {
        "model": "sd15-ip-adapter",
        "checkpoints": {"sd": SD_REPO, "ip_adapter": f"{IP_REPO} models/ip-adapter_sd15.bin",
                        "image_encoder": f"{IP_REPO} models/image_encoder"},
        "tiny_random": args.tiny_random,
        "dtype": "float16" if args.fp16 else "float32",
        "max_length": MAX_LENGTH,
        "bos_token_id": m["bos"], "eos_token_id": m["eos"], "pad_token_id": m["pad"],
        "cross_attention_dim": d_model,
        "image_embed_dim": e_dim,
        "num_ip_tokens": NUM_IP_TOKENS,
        "image_size": s,
        "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "latent_channels": 4,
        "vae_scale_factor": 8,
        "scaling_factor": SCALING_FACTOR,
        "size": [W, H],
        # Every multiple of 8 px works (the UNet's upsamplers follow the skip connections' sizes).
        "size_multiple": 8,
        "scheduler": SCHEDULER_CONFIG,
        "command": common.command_line(),
        "versions": {**common.versions(), "diffusers": __import__("diffusers").__version__},
    }
    common.write_json(out / "export.json", info)
    if args.tiny_random and not args.fp16:
        sessions = {"unet": common.ort_session(out / "unet.onnx")}
        common.write_json(out / "expected.json", references(m, args, out, sessions))


if __name__ == "__main__":
    main()
