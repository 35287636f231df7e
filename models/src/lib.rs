//! Model runtime and model families for `dataflow`: a leaf crate with no engine dependency.
//!
//! ONNX Runtime is loaded at run time (`ort` with `load-dynamic`) from the library that
//! `scripts/setup-assets` unpacks into `assets/`; nothing is downloaded at run time.
//!
//! # Layout
//!
//! - [`error`]: [`ModelError`](error::ModelError), the one error type of the crate.
//! - [`runtime`]: finds and loads the ONNX Runtime library once per process ([`runtime::runtime`]).
//! - [`provider`]: execution providers and per-session options ([`provider::SessionOptions`]).
//! - [`session`]: loading a model with its inputs/outputs checked ([`session::load_session`]).
//! - [`assets`]: where `assets/` is and whether its files match the manifest.
//! - [`detect`]: COCO-80 object detection (CenterNet, the `detect` stage).
//! - [`esrgan`]: ESRGAN-slim super-resolution (the `thumbnail_sr` reconstructor).
//! - [`isnet`]: ISNet salient-object segmentation (offline tier of `segment`).
//! - [`fcn`]: FCN-ResNet50 VOC segmentation (paper tier of `segment`).
//! - [`llava`]: LLaVA-Interleave-Qwen-0.5B captions with a KV cache (paper tier of `caption`).
//! - [`bart`]: BART spelling correction, greedy or beam search (paper tier of `correct`).
//! - [`textgen`]: tokenizer, next-token choice and export folders shared by `llava`, `bart`, `fcn`.
//! - [`attributes`]: deterministic captioner from mask and colour statistics (offline `caption`).
//! - [`colors`]: colour and brightness vocabulary shared by the captioner.
//! - [`symspell`]: SymSpell spelling corrector (offline `correct`).
//! - [`ngram`]: word bigram language model from count files (for `noisy_channel`).
//! - [`noisy_channel`]: channel-aware corrector over bit flips (`correct model = "noisy_channel"`).
//! - [`text_metrics`]: WER, CER and object recall of texts for `evaluate`.
//! - [`composite`]: object slice on a background made from the text (offline `reconstruct`).
//! - [`quality`]: image and text quality measures for `evaluate`.
//! - [`lpips`]: LPIPS v0.1 AlexNet perceptual distance (paper-tier `evaluate`).
//! - [`sd`]: Stable Diffusion 1.5 + IP-Adapter reconstruction (paper tier of `reconstruct`).
//! - [`schedulers`]: DDIM and Euler-ancestral schedulers of the diffusion loop.
//! - [`clip`]: CLIP image embeddings for the cosine metric (paper-tier `evaluate`).
//! - [`channel`]: digital channel maths (modulation, AWGN).
//! - [`codec`]: image codecs of the digital baseline, quality bisected to a byte budget.
//! - [`jscc`]: deep JSCC encoder/decoder around an AWGN channel (analog baseline).
//! - [`ldpc`]: 5G NR LDPC coding of a transport block (BPG-LDPC baseline).

pub mod assets;
pub mod attributes;
pub mod bart;
pub mod batchdim;
pub mod channel;
pub mod clip;
pub mod codec;
pub mod colors;
pub mod composite;
pub mod detect;
pub mod error;
pub mod esrgan;
pub mod fcn;
pub mod isnet;
pub mod jscc;
pub mod ldpc;
pub mod llava;
pub mod lpips;
pub mod ngram;
pub mod noisy_channel;
pub mod provider;
pub mod quality;
pub mod runtime;
pub mod schedulers;
pub mod sd;
pub mod session;
pub mod symspell;
pub mod text_metrics;
pub mod textgen;
