"""Tiny random checkpoints for the PyTorch stages, built locally: what the tests of
``tests/it/python_torch.rs`` run ``caption.py``, ``correct.py`` and ``reconstruct.py`` on.

Nothing is downloaded. The configurations are the test fixtures' (``models/fixtures/llava``
and ``models/fixtures/bart``: the classes of the paper's checkpoints, shrunken) or, for Stable
Diffusion, built here as ``models/export/sd_ip_adapter.py --tiny-random`` builds them; the
tokenizers are the fixtures' ``tokenizer.json`` (trained locally by the export scripts); the
weights are random (seeded). Each is written with ``save_pretrained`` in the layout of its
hub checkpoint, so the stages load it the way they load the real one::

    python stages/torch/tiny_models.py --out DIR [--only llava,bart,sd]

gives ``DIR/llava`` (``args.model`` of caption.py), ``DIR/bart`` (correct.py), ``DIR/sd`` and
``DIR/ip`` (reconstruct.py: ``model = DIR/sd``, ``ip_adapter = DIR/ip``, ``ip_subfolder = ""``,
``ip_weight_name = "ip-adapter.safetensors"``, ``generate_size = [64, 64]``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[2] / "models" / "fixtures"


def tokenizer(path: Path, **specials):
    """A fast tokenizer from a fixture's ``tokenizer.json``."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(path), **specials)


def llava(out: Path) -> None:
    """LlavaForConditionalGeneration (Qwen2 text, SigLIP vision) and its processor."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, SiglipImageProcessor

    src = FIXTURES / "llava"
    config = LlavaConfig.from_pretrained(src)
    model = LlavaForConditionalGeneration(config).eval()
    tok = tokenizer(src / "tokenizer.json", eos_token="<|im_end|>", pad_token="<|endoftext|>",
                    extra_special_tokens={"image_token": "<image>"})
    images = SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                  resample=3)
    template = (  # the checkpoint's template, shortened as llava.py's TINY_CHAT_TEMPLATE
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
        "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
        "{% endfor %}{{'<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    vis = config.vision_config
    processor = LlavaProcessor(image_processor=images, tokenizer=tok, chat_template=template,
                               patch_size=vis.patch_size, vision_feature_select_strategy="full",
                               num_additional_image_tokens=0, image_token="<image>")
    model.save_pretrained(out)
    processor.save_pretrained(out)


def bart(out: Path) -> None:
    """BartForConditionalGeneration with the fixture's generation settings (4 beams, ...)."""
    from transformers import BartConfig, BartForConditionalGeneration, GenerationConfig

    src = FIXTURES / "bart"
    model = BartForConditionalGeneration(BartConfig.from_pretrained(src)).eval()
    model.generation_config = GenerationConfig.from_pretrained(src)
    tok = tokenizer(src / "tokenizer.json", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                    unk_token="<unk>", mask_token="<mask>")
    model.save_pretrained(out)
    tok.save_pretrained(out)


def stable_diffusion(out: Path, ip: Path) -> None:
    """SD 1.5's classes, narrow (64x64 images, 8x8 latents), and an IP-Adapter for them."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    tok = tokenizer(FIXTURES / "sd15_ip" / "tokenizer.json", bos_token="<|startoftext|>",
                    eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>",
                    model_max_length=77)
    cross, embed = 32, 24
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=cross, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, projection_dim=cross))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32, 32, 32),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=cross, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64, scaling_factor=0.18215)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=CLIPImageProcessor(size=32, crop_size=32),
                                   image_encoder=None, requires_safety_checker=False)
    pipe.save_pretrained(out)
    # The IP-Adapter in the layout of the paper's (`models/ip-adapter_sd15.*` + `models/image_encoder`).
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=embed)).save_pretrained(ip / "image_encoder")
    tokens = 4
    weights = {"image_proj.proj.weight": torch.randn(cross * tokens, embed) * 0.2,
               "image_proj.proj.bias": torch.zeros(cross * tokens),
               "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        for w in ("to_k_ip", "to_v_ip"):
            weights[f"ip_adapter.{key}.{w}.weight"] = torch.randn(32, cross) * 0.3  # hidden = 32 everywhere
        key += 2
    save_file(weights, str(ip / "ip-adapter.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", default="llava,bart,sd", help="comma-separated: llava, bart, sd")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    want = set(a.only.split(","))
    if unknown := want - {"llava", "bart", "sd"}:
        ap.error(f"--only: unknown {', '.join(sorted(unknown))}")
    if "llava" in want:
        llava(a.out / "llava")
    if "bart" in want:
        bart(a.out / "bart")
    if "sd" in want:
        stable_diffusion(a.out / "sd", a.out / "ip")
    print(f"tiny models ({', '.join(sorted(want))}) in {a.out}")


if __name__ == "__main__":
    main()
