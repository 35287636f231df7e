"""Stable Diffusion 1.5 + IP-Adapter, with diffusers: the ``reconstruct`` stage of
``graphs/multisc-torch.toml`` (Multi-SC receiver, eq. 8-10).

Takes what ``reconstruct model = "sd_ip_adapter"`` (``actors/src/reconstruct.rs``) takes and adds
what it adds: the corrected texts (``corrected``, a list per tile or one text; else ``texts``
or ``text``) are the text prompt, the received object ``slice`` (its transparent part white)
the image prompt with weight ``ip_scale`` (lambda; a lost slice gives text only), and the
result, resized to the frame's size (``frame_size``, else the incoming ``image``), replaces
``image``. Also adds ``sd_seconds``, ``sd_unet_evals`` (UNet batch rows over all steps) and
``sd_tokens_dropped`` (CLIP tokens past 77 cut from a caption).

``prompt_mode``: ``"concat"`` (default) encodes each caption on its own and concatenates the
states along the sequence, so all tiles reach the UNet; ``"truncate"`` joins them and lets CLIP
cut at 77 tokens. The noise seed comes from ``seed`` and the frame, so a frame's image does
not depend on which replica drew it.

``args``: ``model`` (a Stable Diffusion 1.5 checkpoint: hub id or folder; default
``stable-diffusion-v1-5/stable-diffusion-v1-5``), ``ip_adapter`` (default ``h94/IP-Adapter``),
``ip_subfolder`` (``models``), ``ip_weight_name`` (``ip-adapter_sd15.bin``), ``ip_scale`` (0.6),
``steps`` (30), ``guidance_scale`` (7.5), ``scheduler`` (``ddim`` or ``euler_ancestral``),
``generate_size`` (``[width, height]``, default the checkpoint's, 512x512), ``prompt_mode``,
``seed`` (7), ``device``, ``dtype``, ``threads`` (see ``common.py``).
"""

from __future__ import annotations

import time

import numpy as np

from dataflow_stage import Stage

from common import device_and_dtype, frame_seed, need, to_pil

MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
IP_ADAPTER = "h94/IP-Adapter"
CLIP_TOKENS = 77


class SdIpAdapter(Stage):
    """``image`` = SD 1.5 + IP-Adapter from the corrected texts and the received slice."""

    def setup(self, args):
        super().setup(args)
        self.torch = need("torch")
        diffusers = need("diffusers")
        self.device, self.dtype = device_and_dtype(args)
        self.steps = int(args.get("steps", 30))
        self.guidance = float(args.get("guidance_scale", 7.5))
        self.ip_scale = float(args.get("ip_scale", 0.6))
        self.mode = str(args.get("prompt_mode", "concat"))
        self.seed = int(args.get("seed", 7))
        if self.steps < 1 or self.mode not in ("concat", "truncate"):
            raise ValueError("args.steps must be at least 1 and args.prompt_mode \"concat\" or \"truncate\"")
        name = str(args.get("model", MODEL))
        t0 = time.perf_counter()
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(
            name, dtype=self.dtype, safety_checker=None, requires_safety_checker=False)
        schedulers = {"ddim": diffusers.DDIMScheduler, "euler_ancestral": diffusers.EulerAncestralDiscreteScheduler}
        kind = str(args.get("scheduler", "ddim"))
        if kind not in schedulers:
            raise ValueError(f"args.scheduler = {kind!r}: use one of {', '.join(schedulers)}")
        pipe.scheduler = schedulers[kind].from_config(pipe.scheduler.config)
        pipe.load_ip_adapter(str(args.get("ip_adapter", IP_ADAPTER)), subfolder=str(args.get("ip_subfolder", "models")),
                             weight_name=str(args.get("ip_weight_name", "ip-adapter_sd15.bin")))
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        native = pipe.unet.config.sample_size * pipe.vae_scale_factor
        self.size = tuple(int(v) for v in args.get("generate_size", [native, native]))
        if len(self.size) != 2 or min(self.size) < 8 or any(v % 8 for v in self.size):
            raise ValueError(f"args.generate_size = {self.size}: give [width, height], multiples of 8")
        self.log.info("SD + IP-Adapter %s loaded on %s (%s) in %.1f s; %s, %d steps, %dx%d", name, self.device,
                      self.dtype, time.perf_counter() - t0, kind, self.steps, *self.size)

    def tokens_over(self, text: str) -> int:
        """CLIP tokens of ``text`` past 77."""
        return max(0, len(self.pipe.tokenizer(text).input_ids) - CLIP_TOKENS)

    def prompt_embeds(self, texts: list[str]):
        """Text states (and the unconditional ones) for the captions, and the tokens dropped."""
        cfg = self.guidance > 1.0
        said = [t.strip() for t in texts if t and t.strip()]
        prompts = [" ".join(said)] if self.mode == "truncate" or not said else said
        pos, neg = [], []
        for p in prompts:
            e, n = self.pipe.encode_prompt(p, self.device, 1, cfg, negative_prompt="" if cfg else None)
            pos.append(e)
            neg.append(n)
        cat = self.torch.cat
        return cat(pos, dim=1), (cat(neg, dim=1) if cfg else None), sum(self.tokens_over(p) for p in prompts)

    def process(self, frame):
        f = frame.fields
        texts = f.get("corrected", f.get("texts", f.get("text")))
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        out_w, out_h = self.size
        if isinstance(f.get("frame_size"), tuple):
            out_w, out_h = f["frame_size"][2], f["frame_size"][3]
        elif isinstance(f.get("image"), np.ndarray):
            out_h, out_w = f["image"].shape[:2]
        sl = f.get("slice")
        lost = not isinstance(sl, np.ndarray) or sl.size == 0
        prompt_image = to_pil(np.full((8, 8, 3), 255, np.uint8) if lost else sl)
        self.pipe.set_ip_adapter_scale(0.0 if lost else self.ip_scale)
        t0 = time.perf_counter()
        pe, ne, dropped = self.prompt_embeds(texts)
        if dropped:
            self.log.warning("%d CLIP tokens past 77 dropped from the captions (prompt_mode = %s)", dropped, self.mode)
        rows = [0]

        def count(pipe, step, t, kw):
            rows[0] += 2 if self.guidance > 1.0 else 1
            return kw

        gen = self.torch.Generator("cpu").manual_seed(frame_seed(self.seed, frame))
        with self.torch.inference_mode():
            img = self.pipe(prompt_embeds=pe, negative_prompt_embeds=ne, ip_adapter_image=prompt_image,
                            num_inference_steps=self.steps, guidance_scale=self.guidance, width=self.size[0],
                            height=self.size[1], generator=gen, callback_on_step_end=count).images[0]
        if img.size != (out_w, out_h):
            img = img.resize((max(int(out_w), 1), max(int(out_h), 1)), resample=2)  # bilinear
        frame.set_image("image", np.asarray(img.convert("RGB"), dtype=np.uint8))
        frame.set_number("sd_seconds", time.perf_counter() - t0)
        frame.set_number("sd_unet_evals", rows[0])
        frame.set_number("sd_tokens_dropped", dropped)
        return frame
