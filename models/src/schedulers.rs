//! Diffusion schedulers of the Stable Diffusion receiver, from their published formulas.
//!
//! - DDIM: Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, deterministic
//!   (η = 0), as diffusers' `DDIMScheduler` with SD 1.5's config (`clip_sample = false`,
//!   `set_alpha_to_one = false`, `steps_offset = 1`, ε-prediction).
//! - Euler ancestral: Karras et al., "Elucidating the Design Space of Diffusion-Based
//!   Generative Models", NeurIPS 2022 (Euler step in σ) with ancestral noise as in k-diffusion,
//!   as diffusers' `EulerAncestralDiscreteScheduler`.
//!
//! Both use SD 1.5's `scaled_linear` betas (`β = linspace(√0.00085, √0.012, 1000)²`) and
//! `timestep_spacing = "leading"`: `t_i = (n − 1 − i) · ⌊1000 / n⌋ + steps_offset`. The export
//! script `models/export/sd_ip_adapter.py` writes diffusers' timesteps, sigmas and one step of
//! each for fixed inputs into the fixture's `expected.json`; `models/tests/it/receiver.rs`
//! compares. Schedulers are kept apart from the networks (as in candle's diffusion code).

use serde::Deserialize;

use crate::error::ModelError;

/// Which scheduler drives the denoising loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    /// DDIM with η = 0 (deterministic given the start latents).
    Ddim,
    /// Euler ancestral (fresh noise at each step, drawn from the seed).
    EulerAncestral,
}

/// The training noise schedule (`scheduler_config.json` of SD 1.5).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NoiseSchedule {
    /// Training steps (1000).
    pub num_train_timesteps: usize,
    /// First β (0.00085).
    pub beta_start: f64,
    /// Last β (0.012).
    pub beta_end: f64,
    /// Added to every inference timestep (1).
    pub steps_offset: i64,
    /// DDIM: use ᾱ = 1 after the last step (false for SD 1.5: ᾱ₀ is used).
    #[serde(default)]
    pub set_alpha_to_one: bool,
}

impl Default for NoiseSchedule {
    fn default() -> Self {
        NoiseSchedule {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            steps_offset: 1,
            set_alpha_to_one: false,
        }
    }
}

impl NoiseSchedule {
    /// ᾱ_t = ∏ (1 − β_s) for the `scaled_linear` betas, computed in f32 as PyTorch does.
    pub fn alphas_cumprod(&self) -> Vec<f32> {
        let n = self.num_train_timesteps;
        let (a, b) = (self.beta_start.sqrt() as f32, self.beta_end.sqrt() as f32);
        let mut acc = 1f32;
        (0..n)
            .map(|i| {
                // torch.linspace: start + i·step, with the second half counted from the end.
                let step = (b - a) / (n - 1).max(1) as f32;
                let x = if i < n / 2 {
                    a + step * i as f32
                } else {
                    b - step * (n - 1 - i) as f32
                };
                acc *= 1.0 - x * x;
                acc
            })
            .collect()
    }
}

/// A scheduler set to a number of inference steps.
#[derive(Debug, Clone)]
pub struct Scheduler {
    kind: SchedulerKind,
    alphas_cumprod: Vec<f32>,
    final_alpha: f32,
    step_ratio: i64,
    timesteps: Vec<i64>,
    /// Euler: σ per step plus a final 0.
    sigmas: Vec<f32>,
}

impl Scheduler {
    /// `kind` over `schedule` with `steps` inference steps ("leading" spacing).
    pub fn new(kind: SchedulerKind, schedule: &NoiseSchedule, steps: usize) -> Result<Self, ModelError> {
        let train = schedule.num_train_timesteps;
        if steps == 0 || steps > train {
            return Err(ModelError::Invalid(format!(
                "the number of steps must be between 1 and {train}, got {steps}"
            )));
        }
        let alphas_cumprod = schedule.alphas_cumprod();
        let step_ratio = (train / steps) as i64;
        let timesteps: Vec<i64> = (0..steps as i64)
            .rev()
            .map(|i| i * step_ratio + schedule.steps_offset)
            .collect();
        let sigmas = match kind {
            SchedulerKind::Ddim => Vec::new(),
            SchedulerKind::EulerAncestral => {
                let mut s: Vec<f32> = timesteps
                    .iter()
                    .map(|&t| {
                        let a = f64::from(alphas_cumprod[t.clamp(0, train as i64 - 1) as usize]);
                        ((1.0 - a) / a).sqrt() as f32
                    })
                    .collect();
                s.push(0.0);
                s
            }
        };
        let final_alpha = if schedule.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Scheduler {
            kind,
            alphas_cumprod,
            final_alpha,
            step_ratio,
            timesteps,
            sigmas,
        })
    }

    /// Which scheduler this is.
    pub fn kind(&self) -> SchedulerKind {
        self.kind
    }

    /// The timesteps, first (noisiest) to last.
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// Euler: σ of each step and a final 0; DDIM: empty.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The standard deviation of the start noise (1 for DDIM, √(σ_max² + 1) for Euler "leading").
    pub fn init_noise_sigma(&self) -> f32 {
        match self.kind {
            SchedulerKind::Ddim => 1.0,
            SchedulerKind::EulerAncestral => {
                let m = self.sigmas.iter().copied().fold(0f32, f32::max);
                (m * m + 1.0).sqrt()
            }
        }
    }

    /// The UNet's input at step `i` (Euler divides by √(σ² + 1); DDIM passes it through).
    pub fn scale_model_input(&self, i: usize, sample: &[f32]) -> Vec<f32> {
        match self.kind {
            SchedulerKind::Ddim => sample.to_vec(),
            SchedulerKind::EulerAncestral => {
                let s = self.sigmas[i.min(self.sigmas.len() - 1)];
                let k = (s * s + 1.0).sqrt();
                sample.iter().map(|x| x / k).collect()
            }
        }
    }

    fn alpha(&self, t: i64) -> f32 {
        if t < 0 {
            self.final_alpha
        } else {
            self.alphas_cumprod[(t as usize).min(self.alphas_cumprod.len() - 1)]
        }
    }

    /// One step from step `i`'s `sample` with the predicted noise `eps`. Euler ancestral adds
    /// `noise` (standard normal, same length) scaled by σ_up; DDIM ignores it.
    pub fn step(&self, i: usize, eps: &[f32], sample: &[f32], noise: &[f32]) -> Vec<f32> {
        match self.kind {
            SchedulerKind::Ddim => {
                let t = self.timesteps[i];
                let a_t = self.alpha(t);
                let a_prev = self.alpha(t - self.step_ratio);
                let (sa, sb) = (a_t.sqrt(), (1.0 - a_t).sqrt());
                let (pa, pb) = (a_prev.sqrt(), (1.0 - a_prev).sqrt());
                sample
                    .iter()
                    .zip(eps)
                    .map(|(&x, &e)| {
                        let x0 = (x - sb * e) / sa;
                        pa * x0 + pb * e
                    })
                    .collect()
            }
            SchedulerKind::EulerAncestral => {
                let (from, to) = (self.sigmas[i], self.sigmas[i + 1]);
                let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
                let down = (to * to - up * up).sqrt();
                let dt = down - from;
                sample
                    .iter()
                    .zip(eps)
                    .zip(noise.iter().chain(std::iter::repeat(&0.0)))
                    .map(|((&x, &e), &z)| {
                        // derivative = (x − x̂₀) / σ = ε for ε-prediction.
                        let x0 = x - from * e;
                        let d = (x - x0) / from;
                        x + d * dt + z * up
                    })
                    .collect()
            }
        }
    }

    /// `x0` noised to the level of step `i` (the img2img start): DDIM √ᾱ·x₀ + √(1−ᾱ)·n,
    /// Euler x₀ + σ·n.
    pub fn add_noise(&self, i: usize, x0: &[f32], noise: &[f32]) -> Vec<f32> {
        match self.kind {
            SchedulerKind::Ddim => {
                let a = self.alpha(self.timesteps[i]);
                let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
                x0.iter().zip(noise).map(|(&x, &n)| sa * x + sb * n).collect()
            }
            SchedulerKind::EulerAncestral => {
                let s = self.sigmas[i];
                x0.iter().zip(noise).map(|(&x, &n)| x + s * n).collect()
            }
        }
    }

    /// The first step of img2img with `strength` in (0, 1], as diffusers'
    /// `get_timesteps`: `steps − min(⌊steps · strength⌋, steps)`.
    pub fn img2img_start(&self, strength: f32) -> usize {
        let n = self.timesteps.len();
        let init = ((n as f32 * strength) as usize).min(n);
        n - init
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_spacing_with_offset() {
        let s = Scheduler::new(SchedulerKind::Ddim, &NoiseSchedule::default(), 4).unwrap();
        assert_eq!(s.timesteps(), &[751, 501, 251, 1]);
        assert!(Scheduler::new(SchedulerKind::Ddim, &NoiseSchedule::default(), 0).is_err());
        let ac = NoiseSchedule::default().alphas_cumprod();
        assert!((ac[0] - (1.0 - 0.00085)).abs() < 1e-7);
        assert_eq!(s.img2img_start(0.5), 2);
        assert_eq!(s.img2img_start(1.0), 0);
    }

    #[test]
    fn euler_last_step_lands_on_the_predicted_clean_sample() {
        let s = Scheduler::new(SchedulerKind::EulerAncestral, &NoiseSchedule::default(), 3).unwrap();
        assert_eq!(s.sigmas().len(), 4);
        // σ_to = 0: σ_up = σ_down = 0, the result is x − σ·ε whatever the noise.
        let out = s.step(2, &[0.5], &[1.0], &[100.0]);
        assert!((out[0] - (1.0 - s.sigmas()[2] * 0.5)).abs() < 1e-6);
    }
}
