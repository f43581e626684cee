//! Command-line arguments of `dino train`, `synth`, `knn` and `eval-seg`.
//!
//! Hyperparameters are optional on the command line so that `--resume` can tell a flag the
//! user gave (which must agree with the run) from one left at its default.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use dino_model::Precision;

use crate::device::DeviceChoice;
use crate::objective::{Centering, Method};
use crate::optim::OptimizerKind;
use crate::train::TrainConfig;

/// `dino train` arguments. Defaults are the official `main_dino.py` ones.
#[derive(Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// Run directory (config.json, checkpoints/, metrics.jsonl, attention/, loss.png).
    #[arg(short, long, default_value = "runs/dino", alias = "output_dir")]
    pub output: PathBuf,
    /// Continue the run in this directory exactly where it stopped.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "output")]
    pub resume: Option<PathBuf>,
    /// `synthetic`, an image folder (class subfolders = labels), `cifar-10-batches-bin` or STL-10 binaries [default: synthetic]
    #[arg(long, alias = "data_path")]
    pub data: Option<String>,
    /// vit_tiny, vit_small or vit_base [default: vit_small]
    #[arg(long)]
    pub arch: Option<String>,
    /// Patch size in pixels [default: 16]
    #[arg(long, alias = "patch_size")]
    pub patch_size: Option<usize>,
    /// Number of transformer blocks, to train a shallower ViT than the preset's 12
    #[arg(long)]
    pub depth: Option<usize>,
    /// Prototypes of the DINO head [default: 65536]
    #[arg(long, alias = "out_dim")]
    pub out_dim: Option<usize>,
    /// Hidden width of the head MLP [default: 2048]
    #[arg(long)]
    pub head_hidden_dim: Option<usize>,
    /// Bottleneck width of the head [default: 256]
    #[arg(long)]
    pub head_bottleneck_dim: Option<usize>,
    /// Freeze the last layer's weight-norm gain [default: true]
    #[arg(long, alias = "norm_last_layer", value_parser = parse_bool_flag)]
    pub norm_last_layer: Option<bool>,
    /// Stochastic depth rate of the student [default: 0.1]
    #[arg(long, alias = "drop_path_rate")]
    pub drop_path_rate: Option<f64>,
    /// Images per step [default: 64]
    #[arg(long, alias = "batch_size_per_gpu")]
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
    #[arg(long, alias = "min_lr")]
    pub min_lr: Option<f64>,
    /// Linear learning-rate warm-up epochs [default: 10]
    #[arg(long, alias = "warmup_epochs")]
    pub warmup_epochs: Option<usize>,
    /// Initial weight decay [default: 0.04]
    #[arg(long, alias = "weight_decay")]
    pub weight_decay: Option<f64>,
    /// Final weight decay [default: 0.4]
    #[arg(long, alias = "weight_decay_end")]
    pub weight_decay_end: Option<f64>,
    /// Per-parameter gradient norm clip, 0 disables [default: 3.0]
    #[arg(long, alias = "clip_grad")]
    pub clip_grad: Option<f64>,
    /// Epochs with the head's last layer frozen [default: 1]
    #[arg(long, alias = "freeze_last_layer")]
    pub freeze_last_layer: Option<usize>,
    /// Initial teacher EMA momentum, cosine to 1 [default: 0.996]
    #[arg(long, alias = "momentum_teacher")]
    pub momentum_teacher: Option<f64>,
    /// Teacher temperature at the start of its warm-up [default: 0.04]
    #[arg(long, alias = "warmup_teacher_temp")]
    pub warmup_teacher_temp: Option<f64>,
    /// Teacher temperature after the warm-up [default: 0.04]
    #[arg(long, alias = "teacher_temp")]
    pub teacher_temp: Option<f64>,
    /// Epochs of teacher temperature warm-up [default: 0]
    #[arg(long, alias = "warmup_teacher_temp_epochs")]
    pub warmup_teacher_temp_epochs: Option<usize>,
    /// Number of local crops [default: 8]
    #[arg(long, alias = "local_crops_number")]
    pub local_crops: Option<usize>,
    /// Side of the global crops [default: 224]
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Side of the local crops [default: 96]
    #[arg(long)]
    pub local_size: Option<u32>,
    /// Area range of the global crops: MIN,MAX or MIN MAX [default: 0.4,1.0]
    #[arg(long, num_args = 1..=2, value_delimiter = ',', value_name = "MIN,MAX",
          value_parser = parse_scale, alias = "global_crops_scale")]
    pub global_crops_scale: Option<Vec<f64>>,
    /// Area range of the local crops: MIN,MAX or MIN MAX [default: 0.05,0.4]
    #[arg(long, num_args = 1..=2, value_delimiter = ',', value_name = "MIN,MAX",
          value_parser = parse_scale, alias = "local_crops_scale")]
    pub local_crops_scale: Option<Vec<f64>>,
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
    /// Official flag accepted at its default (false) so pasted commands run; a BatchNorm head
    /// is for ResNets, which we do not train
    #[arg(long, alias = "use_bn_in_head", value_parser = parse_no_bn_in_head, hide = true)]
    pub use_bn_in_head: Option<bool>,
    /// The official spelling of --precision: true = f16, false = f32
    #[arg(long, alias = "use_fp16", value_parser = parse_bool_flag, conflicts_with = "precision", hide = true)]
    pub use_fp16: Option<bool>,
    /// Loss scale a --precision f16 run starts from (PyTorch GradScaler's init_scale); it
    /// adapts from there [default: 65536]
    #[arg(long)]
    pub loss_scale: Option<f64>,
    /// adamw, sgd (momentum 0.9) or lars, as main_dino.py --optimizer [default: adamw]
    #[arg(long, value_parser = parse_optimizer)]
    pub optimizer: Option<OptimizerKind>,
    /// dino (main_dino.py), dinov2 (iBOT masked patches, KoLeo, DINOv2's parameter groups,
    /// clipping and augmentation; the defaults of ssl_default_config.yaml) or dinov3 (DINOv2's
    /// objective with a separate iBOT head, plain last layers, Sinkhorn-Knopp, a RoPE ViT and
    /// Gram anchoring) [default: dino]
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    /// DINOv2: weight of the DINO CLS term [default: 1.0]
    #[arg(long, alias = "dino_loss_weight")]
    pub dino_weight: Option<f64>,
    /// DINOv2: weight of the iBOT masked-patch term [default: 1.0]
    #[arg(long, alias = "ibot_loss_weight")]
    pub ibot_weight: Option<f64>,
    /// DINOv2: weight of the KoLeo regulariser on the global CLS tokens [default: 0.1]
    #[arg(long, alias = "koleo_loss_weight")]
    pub koleo_weight: Option<f64>,
    /// DINOv2: share of the global crops that get masked patches [default: 0.5]
    #[arg(long, alias = "mask_sample_probability")]
    pub mask_probability: Option<f64>,
    /// DINOv2: masked share of a masked crop's patches: MIN,MAX [default: 0.1,0.5]
    #[arg(long, num_args = 1..=2, value_delimiter = ',', value_name = "MIN,MAX",
          value_parser = parse_scale, alias = "mask_ratio_min_max")]
    pub mask_ratio: Option<Vec<f64>>,
    /// DINOv2: teacher targets by a running mean (mean; official: centering) or Sinkhorn-Knopp
    /// (sinkhorn; official: sinkhorn_knopp) [default: mean]
    #[arg(long, value_parser = Centering::parse)]
    pub centering: Option<Centering>,
    /// DINOv2: register tokens between CLS and the patches [default: 0]
    #[arg(long, alias = "num_register_tokens")]
    pub registers: Option<usize>,
    /// DINOv2: LayerScale's initial value on every residual branch; 0 (or false) turns it
    /// off, true is 1e-5 [default: 1e-5]
    #[arg(long, value_parser = parse_layerscale, value_name = "INIT")]
    pub layerscale: Option<f64>,
    /// DINOv2: layer-wise learning-rate decay [default: 0.9]
    #[arg(long, alias = "layerwise_decay")]
    pub layer_decay: Option<f64>,
    /// DINOv2: learning-rate multiplier of the patch embedding [default: 0.2]
    #[arg(long, alias = "patch_embed_lr_mult")]
    pub patch_embed_lr_mult: Option<f64>,
    /// DINOv2: iBOT's masked patches through a head of their own [default: false; dinov3: true]
    #[arg(long, alias = "separate_head", value_parser = parse_bool_flag, value_name = "BOOL")]
    pub ibot_separate_head: Option<bool>,
    /// DINOv3: weight of the Gram anchoring term once ramped up [default: 2.0]
    #[arg(long, alias = "gram_loss_weight")]
    pub gram_weight: Option<f64>,
    /// DINOv3: step at which the teacher is copied into the Gram teacher and anchoring
    /// begins [default: 5/6 of the run, as the recipe's 1,000,000 of 1,200,000]
    #[arg(long, value_name = "STEP")]
    pub gram_from_step: Option<u64>,
    /// DINOv3: steps over which the Gram weight ramps up from 0 [default: 1/1200 of the run]
    #[arg(long, value_name = "STEPS")]
    pub gram_ramp: Option<u64>,
    /// DINOv3: refresh the Gram teacher from the teacher every N steps after anchoring begins
    /// [default: 1/120 of the run]
    #[arg(long, value_name = "N", alias = "gram_update_frequency")]
    pub gram_refresh_every: Option<u64>,
    /// DINOv3: refreshes of the Gram teacher at most [default: 3]
    #[arg(long, value_name = "N", alias = "gram_max_updates")]
    pub gram_max_refreshes: Option<u64>,
    /// DINOv3: side in pixels of the crops the Gram teacher sees [default: twice --image-size]
    #[arg(long, value_name = "PX", alias = "gram_teacher_crops_size")]
    pub gram_size: Option<u32>,
    /// DINOv3: one Gram matrix per image (true) or one per batch (false) [default: true]
    #[arg(long, value_parser = parse_bool_flag, value_name = "BOOL", alias = "gram_img_level")]
    pub gram_image_level: Option<bool>,
    /// Fine-tune: start the student's and teacher's backbones from these released weights
    /// (official DINO / DINOv2 / DINOv3 .pth, Hugging Face safetensors with its config.json,
    /// a dinoscope checkpoint); the backbone's shape comes from the file, the heads start
    /// fresh (official: student.pretrained_weights)
    #[arg(
        long,
        value_name = "FILE",
        alias = "pretrained_weights",
        conflicts_with = "resume"
    )]
    pub init: Option<PathBuf>,
    /// Compute device
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Save checkpoints/last.safetensors every N steps (and at each epoch end)
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Keep the teacher of epochs 0, N, 2N, … as checkpoints/teacher_eEEEE.safetensors for
    /// the viewer (official --saveckp_freq; 0: never)
    #[arg(long, default_value_t = 20, alias = "saveckp_freq")]
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
    #[arg(long, alias = "num_workers")]
    pub workers: Option<usize>,
    /// No progress bar; a log line every 10 steps
    #[arg(long, short)]
    pub quiet: bool,
    /// Under mpirun/srun: seconds a rank waits for the others in a collective before the run
    /// stops, naming the ranks that stopped answering (longer than the slowest evaluation)
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub dist_timeout: u64,
}

/// `utils.bool_flag`: on/true/1 and off/false/0.
fn parse_bool_flag(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(format!(
            "`{s}` is not a boolean; expected true/false, on/off or 1/0"
        )),
    }
}

/// `student.layerscale`: an initial value (0 = off); the booleans of the older flag too.
fn parse_layerscale(s: &str) -> Result<f64, String> {
    if let Ok(on) = parse_bool_flag(s)
        && !s.starts_with(['0', '1'])
    {
        return Ok(if on { 1e-5 } else { 0.0 });
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "`{s}` is not a LayerScale initial value; give a number such as 1e-5, or 0 to turn it off"
        )),
    }
}

fn parse_no_bn_in_head(s: &str) -> Result<bool, String> {
    match parse_bool_flag(s)? {
        false => Ok(false),
        true => Err(
            "BatchNorm in the DINO head (the official option for ResNets) is not supported; ViTs train without it (false)".into(),
        ),
    }
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

/// One end of a crop-scale range: a fraction of the image area in (0, 1].
fn parse_scale(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("`{s}`: {e}"))?;
    if !(0.0 < v && v <= 1.0) {
        return Err(format!("{v} is not an area fraction in (0, 1]"));
    }
    Ok(v)
}

macro_rules! apply {
    ($args:ident, $cfg:ident, $given:ident, $($field:ident),*) => {
        $(if let Some(v) = $args.$field.clone() {
            $given.push((stringify!($field), format!("{:?}", v), format!("{:?}", $cfg.$field.clone())));
            $cfg.$field = v;
        })*
    };
}

/// A flag the user gave: (name, given value, value it replaced).
pub type GivenFlag = (&'static str, String, String);

impl TrainArgs {
    /// Applies the flags the user gave on top of `base`; returns the config and, for each
    /// given flag, (name, given value, previous value).
    pub fn apply(&self, base: TrainConfig) -> Result<(TrainConfig, Vec<GivenFlag>)> {
        let mut cfg = base;
        let mut given = Vec::new();
        // --use_fp16 is --precision under its official name.
        let mut args = self.clone();
        if let Some(fp16) = self.use_fp16 {
            args.precision = Some(if fp16 { Precision::F16 } else { Precision::F32 });
        }
        let args = &args;
        if let Some(m) = self.method {
            given.push(("method", format!("{m:?}"), format!("{:?}", cfg.method)));
            if m != cfg.method {
                cfg = TrainConfig::for_method(m);
            }
        }
        let depth = self.depth.map(Some);
        if let Some(d) = depth {
            given.push(("depth", format!("{d:?}"), format!("{:?}", cfg.depth)));
            cfg.depth = d;
        }
        apply!(
            args,
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
                self.global_crops_scale.as_deref(),
                &mut a.global_scale,
            ),
            (
                "local_crops_scale",
                self.local_crops_scale.as_deref(),
                &mut a.local_scale,
            ),
        ] {
            if let Some(v) = flag {
                let &[min, max] = v else {
                    bail!(
                        "--{} takes two numbers, MIN,MAX or MIN MAX",
                        name.replace('_', "-")
                    );
                };
                let v = (min, max);
                given.push((name, format!("{v:?}"), format!("{field:?}")));
                *field = v;
            }
        }
        self.apply_dinov2(&mut cfg, &mut given)?;
        Ok((cfg, given))
    }

    /// The DINOv2 flags: applied to a DINOv2 run, an error on a DINO one.
    fn apply_dinov2(&self, cfg: &mut TrainConfig, given: &mut Vec<GivenFlag>) -> Result<()> {
        let named = [
            ("dino_weight", self.dino_weight.map(|v| v.to_string())),
            ("ibot_weight", self.ibot_weight.map(|v| v.to_string())),
            ("koleo_weight", self.koleo_weight.map(|v| v.to_string())),
            (
                "mask_probability",
                self.mask_probability.map(|v| v.to_string()),
            ),
            (
                "mask_ratio",
                self.mask_ratio.as_ref().map(|v| format!("{v:?}")),
            ),
            ("centering", self.centering.map(|v| format!("{v:?}"))),
            ("registers", self.registers.map(|v| v.to_string())),
            ("layerscale", self.layerscale.map(|v| v.to_string())),
            ("layer_decay", self.layer_decay.map(|v| v.to_string())),
            (
                "patch_embed_lr_mult",
                self.patch_embed_lr_mult.map(|v| v.to_string()),
            ),
            (
                "ibot_separate_head",
                self.ibot_separate_head.map(|v| v.to_string()),
            ),
            ("gram_weight", self.gram_weight.map(|v| v.to_string())),
            ("gram_from_step", self.gram_from_step.map(|v| v.to_string())),
            ("gram_ramp", self.gram_ramp.map(|v| v.to_string())),
            (
                "gram_refresh_every",
                self.gram_refresh_every.map(|v| v.to_string()),
            ),
            (
                "gram_max_refreshes",
                self.gram_max_refreshes.map(|v| v.to_string()),
            ),
            ("gram_size", self.gram_size.map(|v| v.to_string())),
            (
                "gram_image_level",
                self.gram_image_level.map(|v| v.to_string()),
            ),
        ];
        // The flags given, as typed; `gram_only` keeps those of Gram anchoring.
        let given_of = |gram_only: bool| -> Vec<String> {
            named
                .iter()
                .filter(|(n, _)| !gram_only || n.starts_with("gram_"))
                .filter_map(|(n, v)| v.as_ref().map(|v| format!("--{} {v}", n.replace('_', "-"))))
                .collect()
        };
        let Some(o) = cfg.dinov2.as_mut() else {
            let flags = given_of(false);
            if !flags.is_empty() {
                let gram = flags.iter().any(|f| f.starts_with("--gram"));
                bail!(
                    "{} only apply to --method {}; this is a --method {} run. Add --method {} or drop them",
                    flags.join(", "),
                    if gram { "dinov3" } else { "dinov2 or dinov3" },
                    format!("{:?}", cfg.method).to_lowercase(),
                    if gram { "dinov3" } else { "dinov2" }
                );
            }
            return Ok(());
        };
        macro_rules! set {
            ($flag:expr, $name:literal, $field:expr) => {
                if let Some(v) = $flag {
                    given.push(($name, format!("{:?}", v), format!("{:?}", $field)));
                    $field = v;
                }
            };
        }
        set!(self.dino_weight, "dino_weight", o.dino_weight);
        set!(self.ibot_weight, "ibot_weight", o.ibot_weight);
        set!(self.koleo_weight, "koleo_weight", o.koleo_weight);
        set!(self.centering, "centering", o.centering);
        set!(self.registers, "registers", o.registers);
        set!(self.layerscale, "layerscale", o.layer_scale);
        set!(self.layer_decay, "layer_decay", o.layer_decay);
        set!(
            self.patch_embed_lr_mult,
            "patch_embed_lr_mult",
            o.patch_embed_lr_mult
        );
        set!(
            self.ibot_separate_head,
            "ibot_separate_head",
            o.separate_ibot_head
        );
        if let Some(g) = o.gram.as_mut() {
            set!(self.gram_weight, "gram_weight", g.weight);
            set!(
                self.gram_max_refreshes,
                "gram_max_refreshes",
                g.max_refreshes
            );
            set!(self.gram_image_level, "gram_image_level", g.image_level);
            for (name, flag, field) in [
                ("gram_from_step", self.gram_from_step, &mut g.from_step),
                ("gram_ramp", self.gram_ramp, &mut g.ramp_steps),
                (
                    "gram_refresh_every",
                    self.gram_refresh_every,
                    &mut g.refresh_every,
                ),
            ] {
                if let Some(v) = flag {
                    given.push((name, format!("{:?}", Some(v)), format!("{field:?}")));
                    *field = Some(v);
                }
            }
            if let Some(v) = self.gram_size {
                given.push((
                    "gram_size",
                    format!("{:?}", Some(v)),
                    format!("{:?}", g.size),
                ));
                g.size = Some(v);
            }
            if self.gram_refresh_every == Some(0) {
                bail!(
                    "--gram-refresh-every 0: give a positive number of steps (or --gram-max-refreshes 0 for none)"
                );
            }
        } else {
            let flags = given_of(true);
            if !flags.is_empty() {
                bail!(
                    "{} only apply to --method dinov3 (Gram anchoring); this is a --method dinov2 run. Add --method dinov3 or drop them",
                    flags.join(", ")
                );
            }
        }
        if let Some(p) = self.mask_probability {
            if !(0.0..=1.0).contains(&p) {
                bail!(
                    "--mask-probability {p} is not a probability; give a value in [0, 1] (official 0.5)"
                );
            }
            given.push((
                "mask_probability",
                format!("{p:?}"),
                format!("{:?}", o.mask.probability),
            ));
            o.mask.probability = p;
        }
        if let Some(v) = &self.mask_ratio {
            let &[min, max] = v.as_slice() else {
                bail!("--mask-ratio takes two numbers, MIN,MAX or MIN MAX");
            };
            if min > max {
                bail!("--mask-ratio {min},{max}: MIN must not exceed MAX");
            }
            given.push((
                "mask_ratio",
                format!("{:?}", (min, max)),
                format!("{:?}", o.mask.ratio),
            ));
            o.mask.ratio = (min, max);
        }
        Ok(())
    }

    /// The config of a resumed run: flags given now must agree with the saved run.
    pub fn for_resume(&self, saved: TrainConfig) -> Result<TrainConfig> {
        let (cfg, given) = self.apply(saved.clone())?;
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

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    /// A `main_dino.py` command line pastes in as it is (bar the crop scales, which take
    /// MIN,MAX): the official flag names, `utils.bool_flag` values and --use_fp16.
    #[test]
    fn official_flag_names_are_accepted() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "dino",
            "--arch",
            "vit_tiny",
            "--patch_size",
            "8",
            "--out_dim",
            "4096",
            "--norm_last_layer",
            "off",
            "--batch_size_per_gpu",
            "32",
            "--local_crops_number",
            "6",
            "--warmup_teacher_temp_epochs",
            "30",
            "--use_fp16",
            "true",
            "--output_dir",
            "out",
            "--data_path",
            "imgs",
            "--saveckp_freq",
            "5",
            "--num_workers",
            "3",
            "--momentum_teacher",
            "0.99",
            "--local_crops_scale",
            "0.05,0.3",
        ])
        .unwrap();
        let (cfg, _) = cli.train.apply(TrainConfig::default()).unwrap();
        assert_eq!(cfg.arch, "vit_tiny");
        assert_eq!((cfg.patch_size, cfg.out_dim, cfg.batch_size), (8, 4096, 32));
        assert!(!cfg.norm_last_layer);
        assert_eq!(cfg.augment.local_crops, 6);
        assert_eq!(cfg.augment.local_scale, (0.05, 0.3));
        assert_eq!(cfg.warmup_teacher_temp_epochs, 30);
        assert_eq!(cfg.momentum_teacher, 0.99);
        assert_eq!(cfg.precision, Precision::F16);
        assert_eq!(cfg.data, "imgs");
        assert_eq!(cli.train.output, PathBuf::from("out"));
        assert_eq!((cli.train.saveckp_freq, cli.train.workers), (5, Some(3)));
        let off = Cli::try_parse_from(["dino", "--use_fp16", "0"]).unwrap();
        assert_eq!(
            off.train.apply(TrainConfig::default()).unwrap().0.precision,
            Precision::F32
        );
        assert!(Cli::try_parse_from(["dino", "--use_fp16", "true", "--precision", "f32"]).is_err());
        assert!(Cli::try_parse_from(["dino", "--norm_last_layer", "maybe"]).is_err());
        assert!(Cli::try_parse_from(["dino", "--use_bn_in_head", "false"]).is_ok());
        let err = Cli::try_parse_from(["dino", "--use_bn_in_head", "true"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not supported"), "{err}");
    }

    #[test]
    fn layerscale_takes_an_initial_value_or_a_boolean() {
        assert_eq!(parse_layerscale("1e-4"), Ok(1e-4));
        assert_eq!(parse_layerscale("1"), Ok(1.0));
        assert_eq!(parse_layerscale("0"), Ok(0.0));
        assert_eq!(parse_layerscale("true"), Ok(1e-5));
        assert_eq!(parse_layerscale("off"), Ok(0.0));
        assert!(parse_layerscale("-1").is_err());
        assert!(parse_layerscale("nan").is_err());
        assert!(parse_layerscale("big").is_err());
    }

    #[test]
    fn crop_scales_parse_in_both_spellings() {
        use clap::Parser;
        let scale = |args: &[&str]| {
            let mut argv = vec!["dino"];
            argv.extend_from_slice(args);
            let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
            cli.train
                .apply(TrainConfig::default())
                .map(|(c, _)| c.augment.global_scale)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            scale(&["--global-crops-scale", "0.3,1"]).unwrap(),
            (0.3, 1.0)
        );
        assert_eq!(
            scale(&["--global_crops_scale", "0.3", "1."]).unwrap(),
            (0.3, 1.0)
        );
        assert!(scale(&["--global-crops-scale", "0.3"]).is_err());
        assert!(scale(&["--global-crops-scale", "0,1"]).is_err());
        assert!(scale(&["--global-crops-scale", "x,1"]).is_err());
        let reversed = Cli::try_parse_from(["dino", "--local-crops-scale", "0.4,0.05"]).unwrap();
        let err = reversed
            .train
            .apply(TrainConfig::default())
            .unwrap()
            .0
            .model_config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("MIN must not exceed MAX"), "{err}");
    }
}
