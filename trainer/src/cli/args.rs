//! Command-line arguments of `dino train`, `synth`, `knn` and `eval-seg`.
//!
//! Hyperparameters are optional on the command line so that `--resume` can tell a flag the
//! user gave (which must agree with the run) from one left at its default.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;

use dino_model::Precision;

use crate::cli::config_file;
use crate::cli::device::DeviceChoice;
use crate::data::augment::AugmentConfig;
use crate::loss::objective::{Centering, Method};
use crate::optim::optimizer::OptimizerKind;
use crate::train::config::{GivenFlag, TrainConfig};

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
    /// Momentum of the EMA of the teacher's centre; 1 keeps it at zero (no centering)
    /// [default: 0.9]
    #[arg(long, alias = "center_momentum")]
    pub center_momentum: Option<f64>,
    /// Student temperature [default: 0.1]
    #[arg(long, alias = "student_temp")]
    pub student_temp: Option<f64>,
    /// Stop (with a checkpoint, exit code 1) when the teacher stays collapsed for 20 steps,
    /// instead of only warning
    #[arg(long)]
    pub stop_on_collapse: bool,
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
    /// Settings from a file: a run's config.json, or YAML/TOML with config.json's sections
    /// (`schedule: {lr: 0.001}`) or the official DINOv2/DINOv3 keys (`optim.base_lr`,
    /// `ibot.loss_weight`, `crops.global_crops_scale`, …); flags given beside it win
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    /// Settings as KEY=VALUE after the flags, applied after --config and before the flags, as
    /// DINOv2's train.py takes them: schedule.lr=0.001 data.crops.local_crops=4
    #[arg(value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
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
    /// --resume a run although its training data changed (files added, removed or renamed):
    /// it continues on the data as it is now, no longer bit-exact
    #[arg(long, requires = "resume")]
    pub allow_data_change: bool,
    /// Start a new run although its estimated time exceeds an hour (without it, such a run
    /// prints its plan and asks first, or stops when nobody can answer)
    #[arg(long, short = 'y')]
    pub yes: bool,
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

/// Settings `--resume` may change (what a run that diverged needs: a lower or slower-rising
/// learning rate, tighter clipping, another weight decay).
pub const CHANGEABLE_ON_RESUME: [&str; 6] = [
    "lr",
    "min_lr",
    "warmup_epochs",
    "clip_grad",
    "weight_decay",
    "weight_decay_end",
];

/// Sets `$field` to the flag's value when the flag was given, noting (name, given, replaced).
macro_rules! set {
    ($given:ident, $name:literal, $flag:expr, $field:expr) => {
        if let Some(v) = $flag.clone() {
            $given.push(($name, format!("{:?}", v), format!("{:?}", $field)));
            $field = v;
        }
    };
}

impl TrainArgs {
    /// The config of a new run: the method's defaults (or a complete `--config` file), then
    /// the settings of a `--config` file, then `KEY=VALUE`, then the flags. Returns the config
    /// and every backbone setting and flag the user gave. [`check`] it once it is complete
    /// (after `--init` has set the backbone).
    pub fn new_run(&self) -> Result<(TrainConfig, Vec<GivenFlag>)> {
        let settings = config_file::read(self.config.as_deref(), &self.overrides)?;
        let method = config_file::method(self.method, &settings)?;
        let base = match &settings.complete {
            Some(saved) if saved.method() != method => bail!(
                "--method {} contradicts {}, which configures a {} run; drop one",
                format!("{method:?}").to_lowercase(),
                self.config.as_deref().unwrap_or(Path::new("")).display(),
                format!("{:?}", saved.method()).to_lowercase()
            ),
            Some(saved) => saved.clone(),
            None => TrainConfig::for_method(method),
        };
        let (base, mut given) = config_file::apply(base, &settings.settings)?;
        let (cfg, flags) = self.apply(base)?;
        given.extend(flags);
        Ok((cfg, given))
    }

    /// Applies the flags the user gave on top of `base`; returns the config and, for each
    /// given flag, (name, given value, previous value).
    pub fn apply(&self, base: TrainConfig) -> Result<(TrainConfig, Vec<GivenFlag>)> {
        let mut cfg = base;
        let mut given = Vec::new();
        // --use_fp16 is --precision under its official name.
        let precision = match self.use_fp16 {
            Some(fp16) => Some(if fp16 { Precision::F16 } else { Precision::F32 }),
            None => self.precision,
        };
        if let Some(m) = self.method {
            given.push(("method", format!("{m:?}"), format!("{:?}", cfg.method())));
            if m != cfg.method() {
                cfg = TrainConfig::for_method(m);
            }
        }
        let g = &mut given;
        let c = &mut cfg;
        set!(g, "depth", self.depth.map(Some), c.model.depth);
        set!(g, "data", self.data, c.data.source);
        set!(g, "arch", self.arch, c.model.arch);
        set!(g, "patch_size", self.patch_size, c.model.patch_size);
        set!(g, "out_dim", self.out_dim, c.model.out_dim);
        set!(
            g,
            "head_hidden_dim",
            self.head_hidden_dim,
            c.model.head_hidden_dim
        );
        set!(
            g,
            "head_bottleneck_dim",
            self.head_bottleneck_dim,
            c.model.head_bottleneck_dim
        );
        set!(
            g,
            "norm_last_layer",
            self.norm_last_layer,
            c.model.norm_last_layer
        );
        set!(
            g,
            "drop_path_rate",
            self.drop_path_rate,
            c.model.drop_path_rate
        );
        set!(g, "batch_size", self.batch_size, c.data.batch_size);
        set!(g, "epochs", self.epochs, c.schedule.epochs);
        set!(g, "lr", self.lr, c.schedule.lr);
        set!(g, "min_lr", self.min_lr, c.schedule.min_lr);
        set!(
            g,
            "warmup_epochs",
            self.warmup_epochs,
            c.schedule.warmup_epochs
        );
        set!(
            g,
            "weight_decay",
            self.weight_decay,
            c.schedule.weight_decay
        );
        set!(
            g,
            "weight_decay_end",
            self.weight_decay_end,
            c.schedule.weight_decay_end
        );
        set!(g, "clip_grad", self.clip_grad, c.optim.clip_grad);
        set!(
            g,
            "freeze_last_layer",
            self.freeze_last_layer,
            c.schedule.freeze_last_layer
        );
        set!(
            g,
            "momentum_teacher",
            self.momentum_teacher,
            c.schedule.momentum_teacher
        );
        set!(
            g,
            "warmup_teacher_temp",
            self.warmup_teacher_temp,
            c.schedule.warmup_teacher_temp
        );
        set!(
            g,
            "teacher_temp",
            self.teacher_temp,
            c.schedule.teacher_temp
        );
        set!(
            g,
            "warmup_teacher_temp_epochs",
            self.warmup_teacher_temp_epochs,
            c.schedule.warmup_teacher_temp_epochs
        );
        set!(
            g,
            "center_momentum",
            self.center_momentum,
            c.objective.center_momentum
        );
        set!(
            g,
            "student_temp",
            self.student_temp,
            c.objective.student_temp
        );
        set!(
            g,
            "synthetic_count",
            self.synthetic_count,
            c.data.synthetic_count
        );
        set!(
            g,
            "synthetic_size",
            self.synthetic_size,
            c.data.synthetic_size
        );
        set!(g, "seed", self.seed, c.run.seed);
        set!(g, "precision", precision, c.optim.precision);
        set!(g, "loss_scale", self.loss_scale, c.optim.loss_scale);
        set!(g, "optimizer", self.optimizer, c.optim.optimizer);
        self.apply_crops(&mut c.data.crops, g)?;
        self.apply_dinov2(&mut cfg, &mut given)?;
        Ok((cfg, given))
    }

    /// The crop flags: sizes, number of local crops, scale ranges.
    fn apply_crops(&self, crops: &mut AugmentConfig, g: &mut Vec<GivenFlag>) -> Result<()> {
        for (name, flag, field) in [
            ("image_size", self.image_size, &mut crops.global_size),
            ("local_size", self.local_size, &mut crops.local_size),
        ] {
            if let Some(v) = flag {
                g.push((name, v.to_string(), field.to_string()));
                *field = v;
            }
        }
        if let Some(n) = self.local_crops {
            g.push(("local_crops", n.to_string(), crops.local_crops.to_string()));
            crops.local_crops = n;
        }
        for (name, flag, field) in [
            (
                "global_crops_scale",
                self.global_crops_scale.as_deref(),
                &mut crops.global_scale,
            ),
            (
                "local_crops_scale",
                self.local_crops_scale.as_deref(),
                &mut crops.local_scale,
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
                g.push((name, format!("{v:?}"), format!("{field:?}")));
                *field = v;
            }
        }
        Ok(())
    }

    /// The DINOv2 and DINOv3 flags, as typed: `--name value` for each one given; with
    /// `gram_only`, those of Gram anchoring.
    fn dinov2_flags_given(&self, gram_only: bool) -> Vec<String> {
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
        named
            .iter()
            .filter(|(n, _)| !gram_only || n.starts_with("gram_"))
            .filter_map(|(n, v)| v.as_ref().map(|v| format!("--{} {v}", n.replace('_', "-"))))
            .collect()
    }

    /// The DINOv2 flags: applied to a DINOv2 run, an error on a DINO one.
    fn apply_dinov2(&self, cfg: &mut TrainConfig, given: &mut Vec<GivenFlag>) -> Result<()> {
        let method = cfg.method();
        let (Some(o), Some(groups)) = (cfg.objective.dinov2.as_mut(), cfg.optim.dinov2.as_mut())
        else {
            let flags = self.dinov2_flags_given(false);
            if !flags.is_empty() {
                let gram = flags.iter().any(|f| f.starts_with("--gram"));
                bail!(
                    "{} only apply to --method {}; this is a --method {} run. Add --method {} or drop them",
                    flags.join(", "),
                    if gram { "dinov3" } else { "dinov2 or dinov3" },
                    format!("{method:?}").to_lowercase(),
                    if gram { "dinov3" } else { "dinov2" }
                );
            }
            return Ok(());
        };
        let g = given;
        let m = &mut cfg.model;
        set!(g, "dino_weight", self.dino_weight, o.dino_weight);
        set!(g, "ibot_weight", self.ibot_weight, o.ibot_weight);
        set!(g, "koleo_weight", self.koleo_weight, o.koleo_weight);
        set!(g, "centering", self.centering, o.centering);
        set!(g, "registers", self.registers, m.registers);
        set!(g, "layerscale", self.layerscale, m.layer_scale);
        set!(g, "layer_decay", self.layer_decay, groups.layer_decay);
        set!(
            g,
            "patch_embed_lr_mult",
            self.patch_embed_lr_mult,
            groups.patch_embed_lr_mult
        );
        set!(
            g,
            "ibot_separate_head",
            self.ibot_separate_head,
            m.ibot_separate_head
        );
        if let Some(gram) = o.gram.as_mut() {
            set!(g, "gram_weight", self.gram_weight, gram.weight);
            set!(
                g,
                "gram_max_refreshes",
                self.gram_max_refreshes,
                gram.max_refreshes
            );
            set!(
                g,
                "gram_image_level",
                self.gram_image_level,
                gram.image_level
            );
            set!(
                g,
                "gram_from_step",
                self.gram_from_step.map(Some),
                gram.from_step
            );
            set!(g, "gram_ramp", self.gram_ramp.map(Some), gram.ramp_steps);
            set!(
                g,
                "gram_refresh_every",
                self.gram_refresh_every.map(Some),
                gram.refresh_every
            );
            set!(g, "gram_size", self.gram_size.map(Some), gram.size);
            if self.gram_refresh_every == Some(0) {
                bail!(
                    "--gram-refresh-every 0: give a positive number of steps (or --gram-max-refreshes 0 for none)"
                );
            }
        } else {
            let flags = self.dinov2_flags_given(true);
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
            g.push((
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
            g.push((
                "mask_ratio",
                format!("{:?}", (min, max)),
                format!("{:?}", o.mask.ratio),
            ));
            o.mask.ratio = (min, max);
        }
        Ok(())
    }

    /// The config of a resumed run: flags given now must agree with the saved run, but for
    /// the few a diverging run needs changed ([`CHANGEABLE_ON_RESUME`]), which
    /// `main_dino.py` re-reads on every restart too; those are applied with a warning.
    pub fn for_resume(&self, saved: TrainConfig) -> Result<TrainConfig> {
        if !self.overrides.is_empty() {
            bail!(
                "{} cannot change a run being resumed; drop them, or start a new run with -o",
                self.overrides.join(" ")
            );
        }
        let (cfg, given) = self.apply(saved.clone())?;
        let changed = |(_, new, old): &&GivenFlag| new != old;
        for (n, new, old) in given
            .iter()
            .filter(changed)
            .filter(|(n, ..)| CHANGEABLE_ON_RESUME.contains(n))
        {
            log::warn!(
                "--{} {new} (the run had {old}): the run continues with the new value from its last checkpoint, and is no longer the run an uninterrupted training would give",
                n.replace('_', "-")
            );
        }
        let conflicts: Vec<String> = given
            .iter()
            .filter(changed)
            .filter(|(n, ..)| !CHANGEABLE_ON_RESUME.contains(n))
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

/// Refuses settings that no run can train with, naming the flag and the config key: sizes
/// that are not whole patches, empty crop ranges, KoLeo without a second image, a loss scale
/// below 1. Flags and config files both end here, after they are applied.
pub fn check(cfg: &TrainConfig) -> Result<()> {
    let (patch, crops) = (cfg.model.patch_size, &cfg.data.crops);
    let o = &cfg.objective;
    if !(o.student_temp > 0.0 && o.student_temp.is_finite()) {
        bail!(
            "--student-temp {} must be a positive number (objective.student_temp; 0.1 official)",
            o.student_temp
        );
    }
    if !(0.0..=1.0).contains(&o.center_momentum) {
        bail!(
            "--center-momentum {} must be between 0 and 1 (objective.center_momentum; 0.9 official)",
            o.center_momentum
        );
    }
    if let Some(size) = cfg.gram_crop_size()
        && !(size as usize).is_multiple_of(patch)
    {
        bail!(
            "--gram-size {size} must be a multiple of --patch-size {patch} (objective.dinov2.gram.size, model.patch_size)"
        );
    }
    if let Some(o) = &cfg.objective.dinov2
        && cfg.data.batch_size < 2
        && o.koleo_weight > 0.0
    {
        bail!(
            "KoLeo needs at least 2 images per global crop; raise --batch-size or set --koleo-weight 0 (data.batch_size, objective.dinov2.koleo_weight)"
        );
    }
    if !(crops.global_size as usize).is_multiple_of(patch)
        || !(crops.local_size as usize).is_multiple_of(patch)
    {
        bail!(
            "--image-size {} and --local-size {} must be multiples of --patch-size {patch} (data.crops.global_size, data.crops.local_size, model.patch_size)",
            crops.global_size,
            crops.local_size,
        );
    }
    for (flag, key, (min, max)) in [
        (
            "--global-crops-scale",
            "data.crops.global_scale",
            crops.global_scale,
        ),
        (
            "--local-crops-scale",
            "data.crops.local_scale",
            crops.local_scale,
        ),
    ] {
        if min > max {
            bail!("{flag} {min},{max}: MIN must not exceed MAX ({key})");
        }
    }
    let scale = cfg.optim.loss_scale;
    if !(scale >= 1.0 && scale.is_finite()) {
        bail!(
            "--loss-scale {scale} is not a usable loss scale; give a power of two of at least 1 (default 65536; optim.loss_scale)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_accepts_equal_flags_and_rejects_different_ones() {
        let mut saved = TrainConfig::default();
        saved.model.arch = "vit_tiny".into();
        let args = TrainArgs {
            arch: Some("vit_tiny".into()),
            ..Default::default()
        };
        assert!(args.for_resume(saved.clone()).is_ok());
        let args = TrainArgs {
            arch: Some("vit_small".into()),
            seed: Some(3),
            lr: Some(0.1),
            ..Default::default()
        };
        let err = args.for_resume(saved.clone()).unwrap_err().to_string();
        assert!(err.contains("--arch") && err.contains("--seed"), "{err}");
        // The learning rate may change (with a warning), as a diverged run needs.
        assert!(!err.contains("--lr"), "{err}");
        let args = TrainArgs {
            lr: Some(0.1),
            clip_grad: Some(1.0),
            ..Default::default()
        };
        let cfg = args.for_resume(saved).unwrap();
        assert_eq!((cfg.schedule.lr, cfg.optim.clip_grad), (0.1, 1.0));
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
        assert_eq!(cfg.model.arch, "vit_tiny");
        assert_eq!(
            (cfg.model.patch_size, cfg.model.out_dim, cfg.data.batch_size),
            (8, 4096, 32)
        );
        assert!(!cfg.model.norm_last_layer);
        assert_eq!(cfg.data.crops.local_crops, 6);
        assert_eq!(cfg.data.crops.local_scale, (0.05, 0.3));
        assert_eq!(cfg.schedule.warmup_teacher_temp_epochs, 30);
        assert_eq!(cfg.schedule.momentum_teacher, 0.99);
        assert_eq!(cfg.optim.precision, Precision::F16);
        assert_eq!(cfg.data.source, "imgs");
        assert_eq!(cli.train.output, PathBuf::from("out"));
        assert_eq!((cli.train.saveckp_freq, cli.train.workers), (5, Some(3)));
        let off = Cli::try_parse_from(["dino", "--use_fp16", "0"]).unwrap();
        assert_eq!(
            off.train
                .apply(TrainConfig::default())
                .unwrap()
                .0
                .optim
                .precision,
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
                .map(|(c, _)| c.data.crops.global_scale)
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
        let err = check(&reversed.train.apply(TrainConfig::default()).unwrap().0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("MIN must not exceed MAX"), "{err}");
    }
}
