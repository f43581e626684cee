//! The DINO training loop (`main_dino.py`): the run's configuration, then step after step
//! of `step::dino_step` on the loader's batches with the official schedules, checkpoints and
//! metrics in the run directory (`run_dir`), and the periodic evaluation (`train_eval`).

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use dino_model::{HeadConfig, ModelConfig, Precision, VitConfig};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::amp::LossScaler;
use crate::augment::AugmentConfig;
use crate::data::{self, Source};
use crate::loss::collapse_indicator;
use crate::masking::{MaskingGenerator, sample_batch_masks};
use crate::objective::StepInputs;
use crate::objective::{Dinov2Objective, Method};
use crate::optim::OptimizerKind;
use crate::pipeline::Loader;
use crate::pipeline::derive_seed;
use crate::run_dir::{
    RunDir, plot_metrics, read_training_checkpoint, remove_stale_temp_files, training_checkpoint,
    truncate_metrics,
};
use crate::schedule::{ScheduleParams, Schedules};
use crate::step::{
    Networks, StepHyper, crops_tensor, drop_path_masks, subset_drop_path_masks, train_step,
};
use crate::train_eval::{EvalSet, evaluate};

/// Everything that defines a run; saved as `config.json` and inside every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Backbone preset (`vit_tiny`, `vit_small`, `vit_base`).
    pub arch: String,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Override of the number of blocks (small demos and tests); `None` keeps the preset's 12.
    pub depth: Option<usize>,
    /// Prototypes of the DINO head.
    pub out_dim: usize,
    /// Hidden width of the head MLP.
    pub head_hidden_dim: usize,
    /// Bottleneck width of the head.
    pub head_bottleneck_dim: usize,
    /// Freeze the last layer's weight-norm gain at 1.
    pub norm_last_layer: bool,
    /// Stochastic depth rate of the student.
    pub drop_path_rate: f64,
    /// Images per step.
    pub batch_size: usize,
    /// Epochs the schedules span.
    pub epochs: usize,
    /// Base learning rate (scaled by batch / 256).
    pub lr: f64,
    /// Final learning rate.
    pub min_lr: f64,
    /// Learning-rate warm-up epochs.
    pub warmup_epochs: usize,
    /// Initial weight decay.
    pub weight_decay: f64,
    /// Final weight decay.
    pub weight_decay_end: f64,
    /// Per-parameter gradient-norm clip (0 = off).
    pub clip_grad: f64,
    /// Epochs during which the head's last layer is frozen.
    pub freeze_last_layer: usize,
    /// Initial teacher EMA momentum.
    pub momentum_teacher: f64,
    /// Teacher temperature at the start of its warm-up.
    pub warmup_teacher_temp: f64,
    /// Teacher temperature after warm-up.
    pub teacher_temp: f64,
    /// Teacher-temperature warm-up epochs.
    pub warmup_teacher_temp_epochs: usize,
    /// Student temperature.
    pub student_temp: f64,
    /// Centre EMA momentum.
    pub center_momentum: f64,
    /// Multi-crop augmentation.
    pub augment: AugmentConfig,
    /// `--data`: `synthetic`, an image folder, CIFAR-10 or STL-10 binaries.
    pub data: String,
    /// Scenes in the synthetic set.
    pub synthetic_count: usize,
    /// Side of synthetic scenes.
    pub synthetic_size: u32,
    /// Seed of initialisation, data order, augmentation and stochastic depth.
    pub seed: u64,
    /// f32, or mixed precision with dynamic loss scaling (`--use_fp16`).
    #[serde(default)]
    pub precision: Precision,
    /// `adamw` (official default), `sgd` or `lars`.
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// Loss scale an f16 run starts from.
    #[serde(default = "default_loss_scale")]
    pub loss_scale: f64,
    /// The training recipe (`--method`).
    #[serde(default)]
    pub method: Method,
    /// DINOv2's objective settings, present exactly when `method` is `dinov2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dinov2: Option<Dinov2Objective>,
    /// The released weights the backbones started from (`--init`), when fine-tuning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<crate::init::InitFrom>,
    /// Processes sharing each step (`mpirun -np N`); `batch_size` is per process, as the
    /// official `--batch_size_per_gpu`.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn default_loss_scale() -> f64 {
    crate::amp::INIT_SCALE
}

impl Default for TrainConfig {
    /// The official `main_dino.py` defaults, on the synthetic set.
    fn default() -> Self {
        Self {
            arch: "vit_small".into(),
            patch_size: 16,
            depth: None,
            out_dim: 65536,
            head_hidden_dim: 2048,
            head_bottleneck_dim: 256,
            norm_last_layer: true,
            drop_path_rate: 0.1,
            batch_size: 64,
            epochs: 100,
            lr: 0.0005,
            min_lr: 1e-6,
            warmup_epochs: 10,
            weight_decay: 0.04,
            weight_decay_end: 0.4,
            clip_grad: 3.0,
            freeze_last_layer: 1,
            momentum_teacher: 0.996,
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.04,
            warmup_teacher_temp_epochs: 0,
            student_temp: 0.1,
            center_momentum: 0.9,
            augment: AugmentConfig::default(),
            data: "synthetic".into(),
            synthetic_count: 2048,
            synthetic_size: 128,
            seed: 0,
            precision: Precision::F32,
            loss_scale: crate::amp::INIT_SCALE,
            optimizer: OptimizerKind::AdamW,
            method: Method::Dino,
            dinov2: None,
            init: None,
            world_size: 1,
        }
    }
}

impl TrainConfig {
    /// The defaults of `--method`: `main_dino.py`'s for DINO; for DINOv2 those of
    /// `ssl_default_config.yaml` (ViT-S/16 here, as DINO's default: learning rate 0.004 for a
    /// batch of 1024 under the square-root rule, drop path 0.3 uniform, teacher momentum 0.992,
    /// teacher temperature 0.04 → 0.07 over 30 epochs, crop scales 0.32 / 0.05–0.32, the
    /// weight-normalised last layer's gain trained, the official blur probabilities).
    pub fn for_method(method: Method) -> Self {
        match method {
            Method::Dino => Self::default(),
            Method::Dinov2 => Self {
                norm_last_layer: false,
                drop_path_rate: 0.3,
                lr: 0.004,
                momentum_teacher: 0.992,
                warmup_teacher_temp: 0.04,
                teacher_temp: 0.07,
                warmup_teacher_temp_epochs: 30,
                augment: AugmentConfig::dinov2(),
                method,
                dinov2: Some(Dinov2Objective::default()),
                ..Self::default()
            },
            // DINOv3's `ssl_default_config.yaml` differs from DINOv2's in its learning rate
            // (0.001), its plain last layers, its objective (`Dinov2Objective::dinov3`) and
            // its augmentation's blur.
            Method::Dinov3 => Self {
                lr: 0.001,
                augment: AugmentConfig::dinov3(),
                method,
                dinov2: Some(Dinov2Objective::dinov3()),
                ..Self::for_method(Method::Dinov2)
            },
        }
    }
}

impl TrainConfig {
    /// The iBOT loss a DINOv2 run starts with (zero centre); `None` for DINO.
    pub fn fresh_ibot_loss(&self) -> Option<crate::ibot::IbotLoss> {
        self.dinov2.as_ref().map(|_| {
            crate::ibot::IbotLoss::new(self.out_dim, self.student_temp, self.center_momentum)
        })
    }

    /// The loss scaler an f16 run starts with (`None` in f32).
    pub fn fresh_loss_scaler(&self) -> Option<LossScaler> {
        (self.precision == Precision::F16).then_some(LossScaler {
            scale: self.loss_scale,
            growth_tracker: 0,
        })
    }

    /// The Gram anchoring of a DINOv3 run.
    pub fn gram(&self) -> Option<&crate::gram::GramAnchoring> {
        self.dinov2.as_ref().and_then(|o| o.gram.as_ref())
    }

    /// Side of the Gram teacher's crops, when it is not the global crops' (which it then sees).
    pub fn gram_crop_size(&self) -> Option<u32> {
        let g = self.gram()?;
        let size = g.size.unwrap_or(2 * self.augment.global_size);
        (size != self.augment.global_size).then_some(size)
    }

    /// The augmentation the loader runs: the saved one, with the Gram teacher's crops.
    pub fn loader_augment(&self) -> AugmentConfig {
        AugmentConfig {
            gram_size: self.gram_crop_size(),
            ..self.augment.clone()
        }
    }

    /// The model this run trains.
    pub fn model_config(&self) -> Result<ModelConfig> {
        let mut vit = match &self.init {
            // A released backbone keeps its position grid: crops of another size interpolate
            // it, as they do at inference.
            Some(init) => init.backbone.clone(),
            None => {
                let mut vit = VitConfig::by_name(&self.arch, self.patch_size)?;
                if let Some(d) = self.depth {
                    vit.depth = d;
                }
                vit.img_size = self.augment.global_size as usize;
                vit
            }
        };
        vit.drop_path_rate = self.drop_path_rate;
        match (self.method, &self.dinov2) {
            (Method::Dino, None) => {}
            (Method::Dinov2 | Method::Dinov3, Some(o)) => {
                // DINOv2's ViT: a mask token for iBOT, LayerScale, registers; its position
                // embedding is resized as DINO's (interpolate_offset 0.1, no antialias).
                // DINOv3's: RoPE (base 100) instead of a position embedding, storage tokens
                // for registers, LayerNorm eps 1e-6 (`norm_layer: layernorm`).
                if self.init.is_none() {
                    vit.family = dino_model::Family::Dinov2;
                    if self.method == Method::Dinov3 {
                        vit.family = dino_model::Family::Dinov3;
                        vit.position = dino_model::Position::Rope { base: 100.0 };
                    }
                }
                vit.layer_scale = o.layer_scale > 0.0;
                vit.num_register_tokens = o.registers;
                if (self.method == Method::Dinov3) != o.gram.is_some() {
                    bail!(
                        "config.json is inconsistent: method {:?} with{} Gram anchoring; start a new run with -o",
                        self.method,
                        if o.gram.is_some() { "" } else { "out" }
                    );
                }
                if let Some(size) = self.gram_crop_size()
                    && !(size as usize).is_multiple_of(self.patch_size)
                {
                    bail!(
                        "--gram-size {size} must be a multiple of --patch-size {}",
                        self.patch_size
                    );
                }
                if self.batch_size < 2 && o.koleo_weight > 0.0 {
                    bail!(
                        "KoLeo needs at least 2 images per global crop; raise --batch-size or set --koleo-weight 0"
                    );
                }
            }
            (method, _) => bail!(
                "config.json is inconsistent: method {method:?} with{} DINOv2 settings; start a new run with -o",
                if self.dinov2.is_some() { "" } else { "out" }
            ),
        }
        if !(self.augment.global_size as usize).is_multiple_of(self.patch_size)
            || !(self.augment.local_size as usize).is_multiple_of(self.patch_size)
        {
            bail!(
                "--image-size {} and --local-size {} must be multiples of --patch-size {}",
                self.augment.global_size,
                self.augment.local_size,
                self.patch_size
            );
        }
        for (flag, (min, max)) in [
            ("--global-crops-scale", self.augment.global_scale),
            ("--local-crops-scale", self.augment.local_scale),
        ] {
            if min > max {
                bail!("{flag} {min},{max}: MIN must not exceed MAX");
            }
        }
        let head = HeadConfig {
            hidden_dim: self.head_hidden_dim,
            bottleneck_dim: self.head_bottleneck_dim,
            norm_last_layer: self.norm_last_layer,
            // DINOv3's `DINOHead` ends in a plain `nn.Linear`.
            weight_norm: self.method != Method::Dinov3,
            ..HeadConfig::dino(vit.embed_dim, self.out_dim)
        };
        // The official separate head has its own `ibot.head_*` sizes, equal to the DINO
        // head's in both default configs.
        let separate = self.dinov2.as_ref().is_some_and(|o| o.separate_ibot_head);
        let c = ModelConfig {
            vit,
            ibot_head: separate.then(|| head.clone()),
            head: Some(head),
        };
        c.validate()?;
        Ok(c)
    }

    /// Number of crops per image.
    pub fn ncrops(&self) -> usize {
        2 + self.augment.local_crops
    }
}

/// Options that do not change the result of a run (and may differ on resume).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stop after this many steps in total (across resumes).
    pub max_steps: Option<u64>,
    /// Save `last.safetensors` every N steps (and at each epoch end).
    pub checkpoint_every: u64,
    /// Keep the teacher of every Nth epoch (0, N, 2N, …) as `teacher_eEEEE.safetensors`
    /// (the official `--saveckp_freq`); 0 disables.
    pub saveckp_freq: usize,
    /// Write attention pictures and run evaluations every N steps (0 = each epoch end).
    pub eval_every: u64,
    /// Data of the periodic evaluation (see [`EvalSet`]).
    pub eval_data: Option<String>,
    /// Loader threads.
    pub workers: usize,
    /// No progress bar; one log line per `log_every` steps instead.
    pub quiet: bool,
    /// Human-readable name of the device, for logs.
    pub device_name: String,
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Steps done in total.
    pub steps: u64,
    /// Loss of the first step run in this invocation.
    pub first_loss: f64,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Throughput of this invocation, images per second.
    pub images_per_sec: f64,
    /// Last collapse verdict.
    pub collapse: String,
}

/// Runs DINO training in `run` (fresh, or resumed when `resume` is set).
pub fn train(
    cfg: TrainConfig,
    run: &RunDir,
    resume: bool,
    opts: &RunOptions,
    device: &Device,
) -> Result<Summary> {
    let mc = cfg.model_config()?;
    let world = crate::dist::world();
    if cfg.world_size != world.size {
        bail!(
            "{} was trained by {} process{} and this is one of {}: the data order and the learning rate depend on it; \
             resume it with `mpirun -np {} dino train --resume {}`{}",
            run.root.display(),
            cfg.world_size,
            if cfg.world_size == 1 { "" } else { "es" },
            world.size,
            cfg.world_size,
            run.root.display(),
            if cfg.world_size == 1 {
                " (or without mpirun)"
            } else {
                ""
            }
        );
    }
    if world.size > 1 && cfg.method != Method::Dino {
        bail!(
            "--method {} does not run on several ranks yet (its KoLeo, Sinkhorn-Knopp and iBOT terms need reductions across ranks that are not written); \
             train --method dino under mpirun, or this method in one process",
            format!("{:?}", cfg.method).to_lowercase()
        );
    }
    let shard = crate::pipeline::Shard::of_this_process();
    let source: Arc<dyn Source> = Arc::from(
        data::open(&cfg.data, cfg.synthetic_count, cfg.synthetic_size, cfg.seed)
            .with_context(|| format!("opening --data {}", cfg.data))?,
    );
    if source.len().div_ceil(world.size) < cfg.batch_size {
        bail!(
            "{} has {} images, fewer than one batch of {} per process ({} process{}); lower --batch-size",
            source.describe(),
            source.len(),
            cfg.batch_size,
            world.size,
            if world.size == 1 { "" } else { "es" }
        );
    }
    let eval_set = EvalSet::new(&cfg, opts.eval_data.as_deref(), source.clone())?;
    let iters_per_epoch =
        crate::pipeline::steps_per_epoch(source.len(), cfg.batch_size, world.size);
    let schedules = Schedules::new(&ScheduleParams {
        lr: cfg.lr,
        min_lr: cfg.min_lr,
        warmup_epochs: cfg.warmup_epochs,
        weight_decay: cfg.weight_decay,
        weight_decay_end: cfg.weight_decay_end,
        momentum_teacher: cfg.momentum_teacher,
        warmup_teacher_temp: cfg.warmup_teacher_temp,
        teacher_temp: cfg.teacher_temp,
        warmup_teacher_temp_epochs: cfg.warmup_teacher_temp_epochs,
        epochs: cfg.epochs,
        iters_per_epoch,
        // lr = base × batch_size_per_gpu × world_size / 256.
        batch_size: cfg.batch_size * world.size,
        dinov2: cfg.method != Method::Dino,
    });
    let total_steps = (cfg.epochs * iters_per_epoch) as u64;
    let end_step = opts.max_steps.map_or(total_steps, |m| m.min(total_steps));
    let ad_device = device.clone().autodiff();
    if cfg.precision == Precision::F16 && !device.supports_dtype(burn::tensor::DType::F16) {
        bail!(
            "--precision f16 needs f16 arithmetic, which {} does not offer (on wgpu: an adapter with shader-f16); train with --precision f32",
            opts.device_name
        );
    }

    if world.is_main() {
        remove_stale_temp_files(&run.root.join("checkpoints"));
    }
    if resume && !run.last().exists() {
        log::warn!(
            "{} has no checkpoint yet (the run stopped before its first save); starting it from step 0",
            run.root.display()
        );
    }
    let (mut nets, start_step) = if resume && run.last().exists() {
        read_training_checkpoint(&cfg, &mc, run, device)?
    } else {
        (Networks::fresh(&cfg, &mc, device)?, 0)
    };
    // `init_distributed_mode` and `fix_random_seeds` give every rank the same weights;
    // checked here rather than trusted (a rank built from other sources, another checkpoint).
    if world.size > 1 {
        crate::dist::ensure_agree(
            crate::ddp::weights_digest(&nets.student)
                ^ crate::ddp::weights_digest(&nets.teacher).rotate_left(1),
            "the initial weights",
        )?;
    }
    if world.is_main() {
        std::fs::create_dir_all(run.root.join("checkpoints"))
            .with_context(|| format!("creating {}", run.root.display()))?;
        crate::io::write_atomic(
            &run.config(),
            serde_json::to_string_pretty(&cfg)?.as_bytes(),
        )?;
    }
    if start_step >= end_step {
        log::info!("nothing to do: the run is at step {start_step} of {end_step}");
        return Ok(Summary {
            steps: start_step,
            first_loss: f64::NAN,
            last_loss: f64::NAN,
            images_per_sec: 0.0,
            collapse: "n/a".into(),
        });
    }
    log::info!(
        "training {} /{} ({} blocks) on {} with {}: steps {start_step}..{end_step} of {total_steps} ({iters_per_epoch} per epoch), batch {}, {} crops",
        cfg.arch,
        cfg.patch_size,
        mc.vit.depth,
        source.describe(),
        opts.device_name,
        if world.size > 1 {
            format!(
                "{} ({} per process × {} processes)",
                cfg.batch_size * world.size,
                cfg.batch_size,
                world.size
            )
        } else {
            cfg.batch_size.to_string()
        },
        cfg.ncrops()
    );
    // Only rank 0 writes the run's files; the others' metrics go nowhere.
    let mut metrics = if world.is_main() {
        if start_step > 0 {
            truncate_metrics(&run.metrics(), start_step)?;
        } else if resume {
            // A run killed before its first checkpoint starts over: its partial metrics go too.
            crate::io::write_atomic(&run.metrics(), b"")?;
        }
        Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(run.metrics())
                .with_context(|| format!("opening {}", run.metrics().display()))?,
        )
    } else {
        None
    };
    let mut loader = Loader::start(
        source.clone(),
        cfg.loader_augment(),
        cfg.seed,
        cfg.batch_size,
        shard,
        (start_step, end_step),
        opts.workers,
        2,
    );
    let bar = if opts.quiet || !world.is_main() {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(end_step);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} ETA {eta}",
            )
            .expect("valid template"),
        );
        b.set_position(start_step);
        b
    };
    if start_step == 0
        && let Some(metrics) = metrics.as_mut()
    {
        // The random-init model on the same held-out scenes: the baseline every later
        // evaluation (and the paper's 2x claim) is read against, and the "before" picture.
        evaluate(&nets.teacher, &cfg, &eval_set, run, 0, device, metrics)?;
    }
    let started = Instant::now();
    let mut first_loss = f64::NAN;
    let mut last_loss = f64::NAN;
    let mut collapse = String::from("ok");
    let mut last_saved = start_step;
    let mut skipped = 0u64;
    let masking = cfg.dinov2.as_ref().map(|_| {
        MaskingGenerator::for_crops(cfg.augment.global_size as usize, cfg.patch_size, false)
    });
    let gram = cfg.gram().map(|g| g.schedule(total_steps));
    if let Some(g) = &gram {
        if start_step > g.from && nets.gram.is_none() {
            bail!(
                "{} is at step {start_step}, past the start of Gram anchoring (step {}), but holds no Gram teacher; it was not written by this run",
                run.last().display(),
                g.from
            );
        }
        log::info!(
            "Gram anchoring from step {} (weight ramping to {} over {} steps), the Gram teacher refreshed every {} steps at most {} times, on {} px crops",
            g.from,
            g.weight,
            g.ramp,
            g.every,
            g.max_refreshes,
            cfg.gram_crop_size().unwrap_or(cfg.augment.global_size)
        );
        if g.from >= end_step {
            // The default start is 5/6 of the epochs' schedule, which --max-steps cuts short.
            log::warn!(
                "Gram anchoring starts at step {} of the {total_steps}-step schedule, but this run stops at step {end_step} (--max-steps): it trains no Gram term; set --gram-from-step below {end_step} to anchor",
                g.from
            );
        }
    }
    for step in start_step..end_step {
        if let Some(g) = &gram
            && g.active(step)
            && nets.gram.is_none()
        {
            // `gram_load_ema_teacher` before iteration `it_load_ema_teacher`.
            nets.gram = Some(nets.teacher.backbone.clone());
        }
        crate::dist::set_step(step);
        let t0 = Instant::now();
        let batch = loader.next_batch().expect("loader covers the step range")?;
        let epoch = (step / iters_per_epoch as u64) as usize;
        let it = step as usize;
        let temp = schedules.teacher_temp_at(it, epoch);
        let hyper = StepHyper {
            lr: schedules.lr[it],
            weight_decay: schedules.wd[it],
            momentum: schedules.momentum[it],
            teacher_temp: temp,
            clip_grad: cfg.clip_grad,
            freeze_last_layer: epoch < cfg.freeze_last_layer,
        };
        let gram_weight = gram.filter(|g| g.active(step)).map(|g| g.weight_at(step));
        let mut inputs = step_inputs(&cfg, &nets, &batch, masking.as_ref(), step, &ad_device);
        if let Some(w) = gram_weight {
            let crops = cfg
                .gram_crop_size()
                .map(|_| crops_tensor(&batch, cfg.ncrops()..cfg.ncrops() + 2, device));
            inputs.gram = Some((crops, w));
        }
        let out = train_step(nets, inputs, &hyper, cfg.dinov2.as_ref(), device);
        nets = out.nets;
        if let Some(g) = &gram
            && g.refresh_after(step)
        {
            // `update_gram` after the optimiser step and the EMA update.
            nets.gram = Some(nets.teacher.backbone.clone());
            log::info!(
                "the Gram teacher now copies the teacher of step {}",
                step + 1
            );
        }
        let (loss_value, stats) = (out.loss, out.stats);
        skipped += u64::from(out.skipped && loss_value.is_finite());
        if !loss_value.is_finite() {
            bar.abandon();
            bail!(
                "the loss became {loss_value} at step {step}; training stopped. The last good checkpoint is {} (step {last_saved}). \
                 Lower --lr, raise --warmup-epochs or --clip-grad, then resume with `dino train --resume {}`",
                run.last().display(),
                run.root.display()
            );
        }
        let secs = t0.elapsed().as_secs_f64();
        let img_per_sec = (cfg.batch_size * world.size) as f64 / secs;
        collapse = collapse_indicator(&stats, cfg.out_dim).to_string();
        if first_loss.is_nan() {
            first_loss = loss_value;
        }
        last_loss = loss_value;
        let mut record = serde_json::json!({
            "step": step, "epoch": epoch, "loss": loss_value, "lr": schedules.lr[it], "wd": schedules.wd[it],
            "momentum": schedules.momentum[it], "teacher_temp": temp, "img_per_sec": img_per_sec,
            "teacher_entropy": stats.entropy, "teacher_batch_entropy": stats.mean_entropy, "collapse": collapse,
        });
        if cfg.dinov2.is_some() {
            for (name, v) in &out.terms {
                record[*name] = (*v).into();
            }
            if let Some(w) = gram_weight {
                record["gram_weight"] = w.into();
            }
        }
        if let Some(scaler) = &nets.scaler {
            // The scale after this step's update, and whether the update was skipped.
            record["loss_scale"] = scaler.scale.into();
            record["skipped"] = out.skipped.into();
        }
        if world.size > 1 {
            record["world_size"] = world.size.into();
            record["allreduce_ms"] = out.allreduce_ms.into();
        }
        if let Some(metrics) = metrics.as_mut() {
            writeln!(metrics, "{record}")
                .with_context(|| format!("writing {}", run.metrics().display()))?;
        }
        bar.set_position(step + 1);
        bar.set_message(format!(
            "epoch {epoch} loss {loss_value:.4} lr {:.2e} {img_per_sec:.1} img/s",
            schedules.lr[it]
        ));
        if opts.quiet && (step % 10 == 0 || step + 1 == end_step) {
            log::info!(
                "step {step} epoch {epoch} loss {loss_value:.4} lr {:.2e} {img_per_sec:.1} img/s teacher {collapse}",
                schedules.lr[it]
            );
        }
        let done = step + 1;
        let epoch_end = done % iters_per_epoch as u64 == 0;
        // Before last.safetensors moves past this epoch, so that a kill in between replays
        // the epoch's end and writes the snapshot again. At an epoch's end `done` is a
        // positive multiple of the epoch length.
        let finished_epoch = (done / iters_per_epoch as u64) as usize;
        let saving = done % opts.checkpoint_every.max(1) == 0 || epoch_end || done == end_step;
        if saving && world.size > 1 {
            // The EMA is the same on every rank exactly when the averaged gradients were;
            // checked before the one copy on disk stands for all of them.
            crate::dist::ensure_agree(
                crate::ddp::weights_digest(&nets.student)
                    ^ crate::ddp::weights_digest(&nets.teacher).rotate_left(1),
                &format!("the weights after step {done}"),
            )?;
        }
        if !world.is_main() {
            continue;
        }
        if epoch_end
            && opts.saveckp_freq > 0
            && (finished_epoch - 1).is_multiple_of(opts.saveckp_freq)
        {
            let path = run.epoch_teacher(finished_epoch - 1);
            let bytes = dino_model::checkpoint::model_checkpoint_bytes(&mc, &nets.teacher)?;
            crate::io::write_atomic(&path, &bytes).with_context(|| {
                bar.abandon();
                format!(
                    "saving the teacher of epoch {} at step {done} ({}) failed; {} still holds step {last_saved}. \
                     Free some disk space, then continue with `dino train --resume {}`",
                    finished_epoch - 1,
                    path.display(),
                    run.last().display(),
                    run.root.display()
                )
            })?;
        }
        if saving {
            let bytes = training_checkpoint(&cfg, &mc, &nets, done)?;
            crate::io::write_atomic(&run.last(), &bytes).with_context(|| {
                bar.abandon();
                format!(
                    "saving the checkpoint of step {done} failed; {} still holds step {last_saved}. \
                     Free some disk space, then continue with `dino train --resume {}`",
                    run.last().display(),
                    run.root.display()
                )
            })?;
            last_saved = done;
        }
        let eval_due = if opts.eval_every == 0 {
            epoch_end
        } else {
            done % opts.eval_every == 0
        };
        if (eval_due || done == end_step)
            && let Some(metrics) = metrics.as_mut()
        {
            evaluate(&nets.teacher, &cfg, &eval_set, run, done, device, metrics)?;
        }
    }
    bar.finish();
    let images = (end_step - start_step) as f64 * (cfg.batch_size * world.size) as f64;
    if world.is_main() {
        let model_bytes = dino_model::checkpoint::model_checkpoint_bytes(&mc, &nets.teacher)?;
        crate::io::write_atomic(&run.teacher(), &model_bytes)?;
        plot_metrics(run)?;
    }
    if skipped > 0 {
        log::info!(
            "{skipped} of {} steps were skipped because an f16 gradient overflowed (the loss scale is now {}); a few early on are normal",
            end_step - start_step,
            nets.scaler.map_or(f64::NAN, |s| s.scale)
        );
    }
    let unreadable = loader.unreadable.load(std::sync::atomic::Ordering::Relaxed);
    if unreadable > 0 {
        log::warn!(
            "{unreadable} samples could not be read and were replaced by the next readable ones (see the warnings above for which)"
        );
    }
    drop(loader);
    Ok(Summary {
        steps: end_step,
        first_loss,
        last_loss,
        images_per_sec: images / started.elapsed().as_secs_f64(),
        collapse,
    })
}

/// RNG streams of the per-step draws (besides the loader's permutation and augmentation).
const STREAM_SUBSET_DROP_PATH: u64 = 4;
const STREAM_MASKS: u64 = 5;

/// The crops of `batch` as the step takes them, with the method's per-step randomness drawn
/// from the run's seed and the step (so a resumed step draws the same): DINO's per-sample
/// drop path; DINOv2's batch-subset drop path at the uniform rate and iBOT's masks.
pub fn step_inputs(
    cfg: &TrainConfig,
    nets: &Networks,
    batch: &crate::pipeline::Batch,
    masking: Option<&MaskingGenerator>,
    step: u64,
    ad_device: &Device,
) -> StepInputs {
    let ncrops = cfg.ncrops();
    let rows = [2 * cfg.batch_size, (ncrops - 2) * cfg.batch_size];
    let globals = crops_tensor(batch, 0..2, ad_device);
    let locals = (ncrops > 2).then(|| crops_tensor(batch, 2..ncrops, ad_device));
    let Some(objective) = &cfg.dinov2 else {
        let drop =
            [0, 1].map(|g| drop_path_masks(&nets.student, cfg, step, g as u64, rows[g], ad_device));
        return StepInputs {
            globals,
            locals,
            drop,
            masks: None,
            gram: None,
        };
    };
    let depth = nets.student.backbone.depth();
    let drop = [0, 1].map(|g| {
        (cfg.drop_path_rate > 0.0 && rows[g] > 0).then(|| {
            let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(
                cfg.seed,
                STREAM_SUBSET_DROP_PATH,
                step,
                g as u64,
            ));
            subset_drop_path_masks(depth, cfg.drop_path_rate, rows[g], &mut rng, ad_device)
        })
    });
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, STREAM_MASKS, step, 0));
    let masks = sample_batch_masks(
        masking.expect("DINOv2 runs have a masking generator"),
        rows[0],
        &objective.mask,
        &mut rng,
    );
    StepInputs {
        globals,
        locals,
        drop,
        masks: Some(masks),
        gram: None,
    }
}
