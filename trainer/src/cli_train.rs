//! Command-line arguments of `dino train`, `synth`, `knn` and `eval-seg`.
//!
//! Hyperparameters are optional on the command line so that `--resume` can tell a flag the
//! user gave (which must agree with the run) from one left at its default.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use dino_model::Precision;

use crate::device::DeviceChoice;
use crate::optim::OptimizerKind;
use crate::train::TrainConfig;

/// `dino train` arguments. Defaults are the official `main_dino.py` ones.
#[derive(Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// Run directory (config.json, checkpoints/, metrics.jsonl, attention/, loss.png).
    #[arg(short, long, default_value = "runs/dino")]
    pub output: PathBuf,
    /// Continue the run in this directory exactly where it stopped.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "output")]
    pub resume: Option<PathBuf>,
    /// `synthetic`, an image folder (class subfolders = labels), `cifar-10-batches-bin` or STL-10 binaries [default: synthetic]
    #[arg(long)]
    pub data: Option<String>,
    /// vit_tiny, vit_small or vit_base [default: vit_small]
    #[arg(long)]
    pub arch: Option<String>,
    /// Patch size in pixels [default: 16]
    #[arg(long)]
    pub patch_size: Option<usize>,
    /// Number of transformer blocks, to train a shallower ViT than the preset's 12
    #[arg(long)]
    pub depth: Option<usize>,
    /// Prototypes of the DINO head [default: 65536]
    #[arg(long)]
    pub out_dim: Option<usize>,
    /// Hidden width of the head MLP [default: 2048]
    #[arg(long)]
    pub head_hidden_dim: Option<usize>,
    /// Bottleneck width of the head [default: 256]
    #[arg(long)]
    pub head_bottleneck_dim: Option<usize>,
    /// Freeze the last layer's weight-norm gain [default: true]
    #[arg(long)]
    pub norm_last_layer: Option<bool>,
    /// Stochastic depth rate of the student [default: 0.1]
    #[arg(long)]
    pub drop_path_rate: Option<f64>,
    /// Images per step [default: 64]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Epochs the schedules span [default: 100]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Stop after this many steps in total (smoke runs and demos); the schedules still span --epochs
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Base learning rate, scaled by batch/256 [default: 0.0005]
    #[arg(long)]
    pub lr: Option<f64>,
    /// Final learning rate of the cosine schedule [default: 1e-6]
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Linear learning-rate warm-up epochs [default: 10]
    #[arg(long)]
    pub warmup_epochs: Option<usize>,
    /// Initial weight decay [default: 0.04]
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Final weight decay [default: 0.4]
    #[arg(long)]
    pub weight_decay_end: Option<f64>,
    /// Per-parameter gradient norm clip, 0 disables [default: 3.0]
    #[arg(long)]
    pub clip_grad: Option<f64>,
    /// Epochs with the head's last layer frozen [default: 1]
    #[arg(long)]
    pub freeze_last_layer: Option<usize>,
    /// Initial teacher EMA momentum, cosine to 1 [default: 0.996]
    #[arg(long)]
    pub momentum_teacher: Option<f64>,
    /// Teacher temperature at the start of its warm-up [default: 0.04]
    #[arg(long)]
    pub warmup_teacher_temp: Option<f64>,
    /// Teacher temperature after the warm-up [default: 0.04]
    #[arg(long)]
    pub teacher_temp: Option<f64>,
    /// Epochs of teacher temperature warm-up [default: 0]
    #[arg(long)]
    pub warmup_teacher_temp_epochs: Option<usize>,
    /// Number of local crops [default: 8]
    #[arg(long)]
    pub local_crops: Option<usize>,
    /// Side of the global crops [default: 224]
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Side of the local crops [default: 96]
    #[arg(long)]
    pub local_size: Option<u32>,
    /// Area range of the global crops, e.g. 0.4,1.0 [default: 0.4,1.0]
    #[arg(long, value_parser = parse_range)]
    pub global_crops_scale: Option<(f64, f64)>,
    /// Area range of the local crops [default: 0.05,0.4]
    #[arg(long, value_parser = parse_range)]
    pub local_crops_scale: Option<(f64, f64)>,
    /// Scenes in the synthetic set [default: 2048]
    #[arg(long)]
    pub synthetic_count: Option<usize>,
    /// Side of synthetic scenes in pixels [default: 128]
    #[arg(long)]
    pub synthetic_size: Option<u32>,
    /// Seed of initialisation, data order and augmentation [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// f32, or f16: mixed precision as the official --use_fp16 (f16 matrix products, f32
    /// master weights, dynamic loss scaling); for GPUs with shader-f16 [default: f32]
    #[arg(long, value_parser = parse_precision)]
    pub precision: Option<Precision>,
    /// Loss scale a --precision f16 run starts from (PyTorch GradScaler's init_scale); it
    /// adapts from there [default: 65536]
    #[arg(long)]
    pub loss_scale: Option<f64>,
    /// adamw, sgd (momentum 0.9) or lars, as main_dino.py --optimizer [default: adamw]
    #[arg(long, value_parser = parse_optimizer)]
    pub optimizer: Option<OptimizerKind>,
    /// Compute device
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Save checkpoints/last.safetensors every N steps (and at each epoch end)
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Keep the teacher of epochs 0, N, 2N, … as checkpoints/teacher_eEEEE.safetensors for
    /// the viewer (official --saveckp_freq; 0: never)
    #[arg(long, default_value_t = 20)]
    pub saveckp_freq: usize,
    /// Attention pictures and evaluation every N steps (0: at each epoch end)
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Labelled images and/or images with <name>_mask.png for the periodic k-NN and
    /// segmentation evaluation (default: held-out synthetic scenes when training on the
    /// synthetic set, else the training data itself)
    #[arg(long)]
    pub eval_data: Option<String>,
    /// Data loader threads (default: available cores)
    #[arg(long)]
    pub workers: Option<usize>,
    /// No progress bar; a log line every 10 steps
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_optimizer(s: &str) -> Result<OptimizerKind, String> {
    match s {
        "adamw" => Ok(OptimizerKind::AdamW),
        "sgd" => Ok(OptimizerKind::Sgd),
        "lars" => Ok(OptimizerKind::Lars),
        other => Err(format!(
            "`{other}` is not an optimizer; expected adamw, sgd or lars"
        )),
    }
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    match s {
        "f32" => Ok(Precision::F32),
        "f16" => Ok(Precision::F16),
        other => Err(format!("`{other}` is not a precision; expected f32 or f16")),
    }
}

fn parse_range(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s.split_once(',').ok_or("expected two numbers as MIN,MAX")?;
    let (a, b): (f64, f64) = (
        a.trim().parse().map_err(|e| format!("{e}"))?,
        b.trim().parse().map_err(|e| format!("{e}"))?,
    );
    if !(0.0 < a && a <= b && b <= 1.0) {
        return Err("expected 0 < MIN <= MAX <= 1".into());
    }
    Ok((a, b))
}

macro_rules! apply {
    ($args:ident, $cfg:ident, $given:ident, $($field:ident),*) => {
        $(if let Some(v) = $args.$field.clone() {
            $given.push((stringify!($field), format!("{:?}", v), format!("{:?}", $cfg.$field.clone())));
            $cfg.$field = v;
        })*
    };
}

impl TrainArgs {
    /// Applies the flags the user gave on top of `base`; returns the config and, for each
    /// given flag, (name, given value, previous value).
    pub fn apply(&self, base: TrainConfig) -> (TrainConfig, Vec<(&'static str, String, String)>) {
        let mut cfg = base;
        let mut given = Vec::new();
        let depth = self.depth.map(Some);
        if let Some(d) = depth {
            given.push(("depth", format!("{d:?}"), format!("{:?}", cfg.depth)));
            cfg.depth = d;
        }
        apply!(
            self,
            cfg,
            given,
            data,
            arch,
            patch_size,
            out_dim,
            head_hidden_dim,
            head_bottleneck_dim,
            norm_last_layer,
            drop_path_rate,
            batch_size,
            epochs,
            lr,
            min_lr,
            warmup_epochs,
            weight_decay,
            weight_decay_end,
            clip_grad,
            freeze_last_layer,
            momentum_teacher,
            warmup_teacher_temp,
            teacher_temp,
            warmup_teacher_temp_epochs,
            synthetic_count,
            synthetic_size,
            seed,
            precision,
            loss_scale,
            optimizer
        );
        let a = &mut cfg.augment;
        for (name, flag, field) in [
            ("image_size", self.image_size, &mut a.global_size),
            ("local_size", self.local_size, &mut a.local_size),
        ] {
            if let Some(v) = flag {
                given.push((name, v.to_string(), field.to_string()));
                *field = v;
            }
        }
        if let Some(n) = self.local_crops {
            given.push(("local_crops", n.to_string(), a.local_crops.to_string()));
            a.local_crops = n;
        }
        for (name, flag, field) in [
            (
                "global_crops_scale",
                self.global_crops_scale,
                &mut a.global_scale,
            ),
            (
                "local_crops_scale",
                self.local_crops_scale,
                &mut a.local_scale,
            ),
        ] {
            if let Some(v) = flag {
                given.push((name, format!("{v:?}"), format!("{field:?}")));
                *field = v;
            }
        }
        (cfg, given)
    }

    /// The config of a resumed run: flags given now must agree with the saved run.
    pub fn for_resume(&self, saved: TrainConfig) -> Result<TrainConfig> {
        let (cfg, given) = self.apply(saved.clone());
        let conflicts: Vec<String> = given
            .iter()
            .filter(|(_, new, old)| new != old)
            .map(|(n, new, old)| format!("--{} {new} (run has {old})", n.replace('_', "-")))
            .collect();
        if !conflicts.is_empty() {
            bail!(
                "the run was started with a different configuration: {}; drop these flags to resume, or start a new run with -o",
                conflicts.join(", ")
            );
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_accepts_equal_flags_and_rejects_different_ones() {
        let saved = TrainConfig {
            arch: "vit_tiny".into(),
            ..Default::default()
        };
        let args = TrainArgs {
            arch: Some("vit_tiny".into()),
            ..Default::default()
        };
        assert!(args.for_resume(saved.clone()).is_ok());
        let args = TrainArgs {
            arch: Some("vit_small".into()),
            lr: Some(0.1),
            ..Default::default()
        };
        let err = args.for_resume(saved).unwrap_err().to_string();
        assert!(err.contains("--arch") && err.contains("--lr"), "{err}");
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("0.4,1").unwrap(), (0.4, 1.0));
        assert!(parse_range("0.5,0.1").is_err());
        assert!(parse_range("x").is_err());
    }
}
