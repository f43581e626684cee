//! The DINO training loop (`main_dino.py`): student on every crop, teacher on the two global
//! crops, DINO loss with centring and sharpening, AdamW (or SGD, LARS) with the official
//! schedules and parameter groups, EMA teacher, optional mixed precision; run directory,
//! checkpoints, metrics, resume, live attention pictures and periodic evaluation.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use dino_model::checkpoint::{KIND_TRAINING, read_checkpoint, write_checkpoint};
use dino_model::{DinoModel, HeadConfig, ModelConfig, Precision, RawTensor, TensorMap, VitConfig};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::amp::LossScaler;
use crate::augment::AugmentConfig;
use crate::data::{self, Source};
use crate::loss::{DinoLoss, collapse_indicator};
use crate::optim::{Optimizer, OptimizerKind, StepParams, ema_update, unscale_gradients};
use crate::pipeline::{Batch, Loader, derive_seed};
use crate::schedule::{ScheduleParams, Schedules};

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
        }
    }
}

impl TrainConfig {
    /// The loss scaler an f16 run starts with (`None` in f32).
    pub fn fresh_loss_scaler(&self) -> Option<LossScaler> {
        (self.precision == Precision::F16).then_some(LossScaler {
            scale: self.loss_scale,
            growth_tracker: 0,
        })
    }

    /// The model this run trains.
    pub fn model_config(&self) -> Result<ModelConfig> {
        let mut vit = VitConfig::by_name(&self.arch, self.patch_size)?;
        if let Some(d) = self.depth {
            vit.depth = d;
        }
        vit.img_size = self.augment.global_size as usize;
        vit.drop_path_rate = self.drop_path_rate;
        if vit.img_size % self.patch_size != 0
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
            ..HeadConfig::dino(vit.embed_dim, self.out_dim)
        };
        let c = ModelConfig {
            vit,
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

/// Where a run stands; saved in every training checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// The next step to run (= steps done).
    pub step: u64,
    /// AdamW step count per parameter.
    pub optimizer_steps: BTreeMap<String, u64>,
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

/// Paths inside a run directory.
pub struct RunDir {
    /// The root.
    pub root: PathBuf,
}

impl RunDir {
    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    /// `checkpoints/last.safetensors`, always resumable.
    pub fn last(&self) -> PathBuf {
        self.root.join("checkpoints").join("last.safetensors")
    }
    /// `checkpoints/teacher.safetensors`, the model the viewer opens.
    pub fn teacher(&self) -> PathBuf {
        self.root.join("checkpoints").join("teacher.safetensors")
    }
    /// `checkpoints/teacher_e<epoch>.safetensors`, the teacher kept at the end of `epoch`
    /// (0-based, as the official `checkpoint{epoch:04}.pth`).
    pub fn epoch_teacher(&self, epoch: usize) -> PathBuf {
        self.root
            .join("checkpoints")
            .join(format!("teacher_e{epoch:04}.safetensors"))
    }
    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    /// `attention/`.
    pub fn attention(&self) -> PathBuf {
        self.root.join("attention")
    }
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

/// The student's, teacher's and optimiser's full state as a training checkpoint.
fn training_checkpoint(
    cfg: &TrainConfig,
    mc: &ModelConfig,
    nets: &Networks,
    step: u64,
) -> Result<Vec<u8>> {
    let mut map = TensorMap::new();
    nets.teacher.save_tensors(&mut map, "");
    nets.student.save_tensors(&mut map, "student.");
    let (moments, steps) = nets.optim.export();
    let loss = &nets.loss;
    for (k, v) in moments {
        map.insert(format!("optim.{k}"), v);
    }
    map.insert(
        "dino_loss.center".into(),
        RawTensor::new(vec![1, loss.center.len()], loss.center.clone()),
    );
    let mut meta = BTreeMap::new();
    meta.insert(
        "dino.train_state".into(),
        serde_json::to_string(&TrainState {
            step,
            optimizer_steps: steps,
        })?,
    );
    meta.insert("dino.train_config".into(), serde_json::to_string(cfg)?);
    if let Some(scaler) = &nets.scaler {
        meta.insert("dino.loss_scaler".into(), serde_json::to_string(scaler)?);
    }
    Ok(write_checkpoint(mc, KIND_TRAINING, &map, &meta)?)
}

/// The state one DINO step updates.
pub struct Networks {
    /// The student, on the autodiff device.
    pub student: DinoModel,
    /// The EMA teacher, on the plain device.
    pub teacher: DinoModel,
    /// Optimiser state of the student.
    pub optim: Optimizer,
    /// The loss with its running centre.
    pub loss: DinoLoss,
    /// Dynamic loss scaling, present with `--precision f16`.
    pub scaler: Option<LossScaler>,
}

impl Networks {
    /// A fresh run's networks: the student initialised from `cfg.seed`, the teacher an exact
    /// copy (`teacher.load_state_dict(student.state_dict())`), both computing in
    /// `cfg.precision`.
    pub fn fresh(cfg: &TrainConfig, mc: &ModelConfig, device: &Device) -> Result<Self> {
        if !(cfg.loss_scale >= 1.0 && cfg.loss_scale.is_finite()) {
            bail!(
                "--loss-scale {} is not a usable loss scale; give a power of two of at least 1 (default 65536)",
                cfg.loss_scale
            );
        }
        // Initialise on the CPU backend whatever the device: the same seed then gives the
        // same weights on every backend, so runs compare across machines.
        let cpu = Device::flex();
        cpu.seed(cfg.seed);
        let init = mc.init(&cpu)?;
        let mut map = TensorMap::new();
        init.save_tensors(&mut map, "");
        Ok(Self {
            student: mc
                .load(&map, "", &device.clone().autodiff())?
                .with_precision(cfg.precision),
            teacher: mc.load(&map, "", device)?.with_precision(cfg.precision),
            optim: Optimizer::new(cfg.optimizer),
            loss: DinoLoss::new(cfg.out_dim, cfg.student_temp, cfg.center_momentum),
            scaler: cfg.fresh_loss_scaler(),
        })
    }
}

/// The schedule values of one step.
#[derive(Debug, Clone, Copy)]
pub struct StepHyper {
    /// Learning rate.
    pub lr: f64,
    /// Weight decay of the regularised group.
    pub weight_decay: f64,
    /// Teacher EMA momentum.
    pub momentum: f64,
    /// Teacher temperature.
    pub teacher_temp: f64,
    /// Per-parameter gradient clip (0 = off).
    pub clip_grad: f64,
    /// Whether the last layer is frozen this epoch.
    pub freeze_last_layer: bool,
}

/// What one step produced.
pub struct StepOutput {
    /// The updated networks.
    pub nets: Networks,
    /// The loss before the update.
    pub loss: f64,
    /// Teacher entropy statistics.
    pub stats: crate::loss::TeacherStats,
    /// Whether the optimiser step was skipped because a scaled f16 gradient overflowed.
    pub skipped: bool,
}

/// One DINO iteration (`train_one_epoch`'s body): student on the global crops `[2B, 3, G, G]`
/// and the local crops `[L·B, 3, l, l]` (grouped by resolution as `MultiCropWrapper`),
/// teacher on the global crops, loss, backward, optimiser step, EMA. A non-finite loss returns the
/// networks unchanged so the caller can stop with the last good state.
pub fn dino_step(
    nets: Networks,
    globals: Tensor<4>,
    locals: Option<Tensor<4>>,
    drop: &[Option<dino_model::DropPathMasks>; 2],
    hyper: &StepHyper,
    device: &Device,
) -> StepOutput {
    let Networks {
        student,
        teacher,
        mut optim,
        mut loss,
        mut scaler,
    } = nets;
    let [rows_g, ..] = globals.dims();
    let ncrops = 2 + locals.as_ref().map_or(0, |l| l.dims()[0] / (rows_g / 2));
    let teacher_in = globals.clone().inner();
    let mut feats = vec![student.backbone.forward_train(globals, drop[0].as_ref())];
    if let Some(locals) = locals {
        feats.push(student.backbone.forward_train(locals, drop[1].as_ref()));
    }
    let student_out = student
        .head
        .as_ref()
        .expect("training models have a head")
        .forward(Tensor::cat(feats, 0));
    let teacher_out = teacher
        .head
        .as_ref()
        .expect("training models have a head")
        .forward(teacher.backbone.forward(teacher_in.to_device(device)));
    let center_before = loss.center.clone();
    let (loss_tensor, stats) = loss.forward(
        student_out,
        Tensor::from_inner(teacher_out),
        ncrops,
        hyper.teacher_temp,
    );
    let value = loss_tensor
        .clone()
        .into_data()
        .try_to_vec::<f32>()
        .map_or(f64::NAN, |v| v[0] as f64);
    if !value.is_finite() {
        loss.center = center_before;
        return StepOutput {
            nets: Networks {
                student,
                teacher,
                optim,
                loss,
                scaler,
            },
            loss: value,
            stats,
            skipped: true,
        };
    }
    // `fp16_scaler.scale(loss).backward()`, then `unscale_` before clipping; a step whose
    // gradients overflowed is skipped (`fp16_scaler.step`) and the scale backed off.
    let loss_tensor = match &scaler {
        Some(s) => loss_tensor.mul_scalar(s.scale),
        None => loss_tensor,
    };
    let mut grads = GradientsParams::from_grads(loss_tensor.backward(), &student);
    let finite = scaler.as_ref().is_none_or(|s| {
        let cancel_first = hyper.freeze_last_layer && hyper.clip_grad <= 0.0;
        unscale_gradients(&student, &mut grads, s.scale, cancel_first)
    });
    if let Some(s) = &mut scaler {
        s.update(!finite);
    }
    let student = if finite {
        optim.step(
            student,
            &mut grads,
            StepParams {
                lr: hyper.lr,
                weight_decay: hyper.weight_decay,
                clip_grad: hyper.clip_grad,
                freeze_last_layer: hyper.freeze_last_layer,
            },
        )
    } else {
        student
    };
    // The official loop updates the teacher after every iteration, skipped steps included.
    let teacher = ema_update(teacher, &student, hyper.momentum);
    StepOutput {
        nets: Networks {
            student,
            teacher,
            optim,
            loss,
            scaler,
        },
        loss: value,
        stats,
        skipped: !finite,
    }
}

fn drop_path_masks(
    model: &DinoModel,
    cfg: &TrainConfig,
    step: u64,
    group: u64,
    rows: usize,
    device: &Device,
) -> Option<dino_model::DropPathMasks> {
    if cfg.drop_path_rate <= 0.0 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, 3, step, group));
    let masks = (0..model.backbone.depth())
        .map(|b| {
            let keep = 1.0 - model.backbone.drop_path_prob(b);
            [0, 1].map(|_| {
                let v: Vec<f32> = (0..rows)
                    .map(|_| {
                        if keep >= 1.0 {
                            1.0
                        } else {
                            ((keep + rng.random::<f64>()).floor() / keep) as f32
                        }
                    })
                    .collect();
                Tensor::<3>::from_data(TensorData::new(v, [rows, 1, 1]), device)
            })
        })
        .collect();
    Some(dino_model::DropPathMasks { masks })
}

fn crops_tensor(batch: &Batch, range: std::ops::Range<usize>, device: &Device) -> Tensor<4> {
    let size = batch.crops[range.start].size as usize;
    let rows = batch.labels.len() * range.len();
    let data: Vec<f32> = batch.crops[range]
        .iter()
        .flat_map(|c| c.data.iter().copied())
        .collect();
    Tensor::from_data(TensorData::new(data, [rows, 3, size, size]), device)
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
    let source: Arc<dyn Source> = Arc::from(
        data::open(&cfg.data, cfg.synthetic_count, cfg.synthetic_size, cfg.seed)
            .with_context(|| format!("opening --data {}", cfg.data))?,
    );
    if source.len() < cfg.batch_size {
        bail!(
            "{} has {} images, fewer than one batch of {}; lower --batch-size",
            source.describe(),
            source.len(),
            cfg.batch_size
        );
    }
    let eval_set = EvalSet::new(&cfg, opts.eval_data.as_deref(), source.clone())?;
    let iters_per_epoch = source.len() / cfg.batch_size;
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
        batch_size: cfg.batch_size,
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

    remove_stale_temp_files(&run.root.join("checkpoints"));
    if resume && !run.last().exists() {
        log::warn!(
            "{} has no checkpoint yet (the run stopped before its first save); starting it from step 0",
            run.root.display()
        );
    }
    let (mut nets, start_step) = if resume && run.last().exists() {
        let path = run.last();
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "--resume {}: no checkpoint at {} (was the run ever started?)",
                run.root.display(),
                path.display()
            )
        })?;
        let ckpt =
            read_checkpoint(&bytes).with_context(|| format!("reading {}", path.display()))?;
        let state: TrainState = serde_json::from_str(
            ckpt.metadata
                .get("dino.train_state")
                .context("checkpoint has no training state")?,
        )?;
        let student = mc
            .load(&ckpt.tensors, "student.", &ad_device)
            .with_context(|| format!("student weights in {}", path.display()))?;
        let teacher = mc
            .load(&ckpt.tensors, "", device)
            .with_context(|| format!("teacher weights in {}", path.display()))?;
        let moments: BTreeMap<String, RawTensor> = ckpt
            .tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("optim.").map(|s| (s.to_string(), v.clone())))
            .collect();
        let optim = Optimizer::import(cfg.optimizer, &moments, &state.optimizer_steps, device)
            .with_context(|| format!("optimizer state in {}", path.display()))?;
        let center = ckpt
            .tensors
            .get("dino_loss.center")
            .context("checkpoint has no DINO centre")?;
        let mut loss = DinoLoss::new(cfg.out_dim, cfg.student_temp, cfg.center_momentum);
        loss.center = center.data.clone();
        let scaler = match ckpt.metadata.get("dino.loss_scaler") {
            Some(json) => {
                Some(serde_json::from_str::<LossScaler>(json).with_context(|| {
                    format!("reading the loss scaler state in {}", path.display())
                })?)
            }
            None => cfg.fresh_loss_scaler(),
        };
        (
            Networks {
                student: student.with_precision(cfg.precision),
                teacher: teacher.with_precision(cfg.precision),
                optim,
                loss,
                scaler,
            },
            state.step,
        )
    } else {
        (Networks::fresh(&cfg, &mc, device)?, 0)
    };
    std::fs::create_dir_all(run.root.join("checkpoints"))
        .with_context(|| format!("creating {}", run.root.display()))?;
    crate::io::write_atomic(
        &run.config(),
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )?;
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
        cfg.batch_size,
        cfg.ncrops()
    );
    if start_step > 0 {
        truncate_metrics(&run.metrics(), start_step)?;
    } else if resume {
        // A run killed before its first checkpoint starts over: its partial metrics go too.
        crate::io::write_atomic(&run.metrics(), b"")?;
    }
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.metrics())
        .with_context(|| format!("opening {}", run.metrics().display()))?;
    let mut loader = Loader::start(
        source.clone(),
        cfg.augment.clone(),
        cfg.seed,
        cfg.batch_size,
        (start_step, end_step),
        opts.workers,
        2,
    );
    let bar = if opts.quiet {
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
    if start_step == 0 {
        // The random-init model on the same held-out scenes: the baseline every later
        // evaluation (and the paper's 2x claim) is read against, and the "before" picture.
        evaluate(&nets.teacher, &cfg, &eval_set, run, 0, device, &mut metrics)?;
    }
    let started = Instant::now();
    let mut first_loss = f64::NAN;
    let mut last_loss = f64::NAN;
    let mut collapse = String::from("ok");
    let mut last_saved = start_step;
    let mut skipped = 0u64;
    let ncrops = cfg.ncrops();
    for step in start_step..end_step {
        let t0 = Instant::now();
        let batch = loader.next_batch().expect("loader covers the step range")?;
        let epoch = (step / iters_per_epoch as u64) as usize;
        let it = step as usize;
        let temp = schedules.teacher_temp[epoch.min(schedules.teacher_temp.len() - 1)];
        let hyper = StepHyper {
            lr: schedules.lr[it],
            weight_decay: schedules.wd[it],
            momentum: schedules.momentum[it],
            teacher_temp: temp,
            clip_grad: cfg.clip_grad,
            freeze_last_layer: epoch < cfg.freeze_last_layer,
        };
        let globals = crops_tensor(&batch, 0..2, &ad_device);
        let locals = (ncrops > 2).then(|| crops_tensor(&batch, 2..ncrops, &ad_device));
        let drop = [
            drop_path_masks(&nets.student, &cfg, step, 0, 2 * cfg.batch_size, &ad_device),
            drop_path_masks(
                &nets.student,
                &cfg,
                step,
                1,
                (ncrops - 2) * cfg.batch_size,
                &ad_device,
            ),
        ];
        let out = dino_step(nets, globals, locals, &drop, &hyper, device);
        nets = out.nets;
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
        let img_per_sec = cfg.batch_size as f64 / secs;
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
        if let Some(scaler) = &nets.scaler {
            // The scale after this step's update, and whether the update was skipped.
            record["loss_scale"] = scaler.scale.into();
            record["skipped"] = out.skipped.into();
        }
        writeln!(metrics, "{record}")
            .with_context(|| format!("writing {}", run.metrics().display()))?;
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
        if done % opts.checkpoint_every.max(1) == 0 || epoch_end || done == end_step {
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
        if eval_due || done == end_step {
            evaluate(
                &nets.teacher,
                &cfg,
                &eval_set,
                run,
                done,
                device,
                &mut metrics,
            )?;
        }
    }
    bar.finish();
    let images = (end_step - start_step) as f64 * cfg.batch_size as f64;
    let model_bytes = dino_model::checkpoint::model_checkpoint_bytes(&mc, &nets.teacher)?;
    crate::io::write_atomic(&run.teacher(), &model_bytes)?;
    plot_metrics(run)?;
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

/// Images with their class labels.
type Labelled = (Vec<image::RgbImage>, Vec<usize>);

/// The images of the periodic evaluation: held-out synthetic scenes (and a second set for
/// the k-NN memory bank) when training on the synthetic set, else `--eval-data` or the
/// training data itself, split into a k-NN bank and queries.
pub struct EvalSet {
    /// Where the pictures, masks and queries come from.
    source: Arc<dyn Source>,
    /// k-NN memory bank: a separate set, or every sample of `source` not used as a query.
    bank: Option<Arc<dyn Source>>,
}

impl EvalSet {
    /// Chooses the evaluation data of a run.
    pub fn new(
        cfg: &TrainConfig,
        eval_data: Option<&str>,
        training: Arc<dyn Source>,
    ) -> Result<Self> {
        let held_out = |seed: u64, count: usize| -> Arc<dyn Source> {
            Arc::new(data::Synthetic {
                seed,
                count,
                size: cfg.synthetic_size,
            })
        };
        Ok(match eval_data {
            Some(spec) => Self {
                source: Arc::from(
                    data::open(spec, 64, cfg.synthetic_size, cfg.seed ^ 0x5EED_0FF5E7)
                        .with_context(|| format!("opening --eval-data {spec}"))?,
                ),
                bank: None,
            },
            // A seed no training set uses.
            None if cfg.data == "synthetic" => Self {
                source: held_out(cfg.seed ^ 0x5EED_0FF5E7, 64),
                bank: Some(held_out(cfg.seed ^ 0xA11CE, 240)),
            },
            None => Self {
                source: training,
                bank: None,
            },
        })
    }

    /// Up to `n` evenly spread indices of the source.
    fn spread(&self, n: usize) -> Vec<usize> {
        let len = self.source.len();
        let n = n.min(len);
        (0..n).map(|i| i * len / n.max(1)).collect()
    }

    /// The k-NN memory bank and queries, when the data is labelled.
    fn knn_sets(&self) -> Option<(Labelled, Labelled)> {
        // Unreadable samples are left out (training skips them too); unlabelled data has
        // no k-NN.
        let labelled = |src: &dyn Source, idx: &[usize]| -> Option<Labelled> {
            let mut out = (Vec::new(), Vec::new());
            for &i in idx {
                let Ok(s) = src.get(i) else { continue };
                out.0.push(s.image);
                out.1.push(s.label?);
            }
            (!out.0.is_empty()).then_some(out)
        };
        match &self.bank {
            Some(bank) => {
                let all: Vec<usize> = (0..bank.len()).collect();
                Some((
                    labelled(bank.as_ref(), &all)?,
                    labelled(self.source.as_ref(), &self.spread(64))?,
                ))
            }
            None => {
                // One sample in five is a query, the rest the memory bank.
                let idx = self.spread(320);
                let queries: Vec<usize> = idx.iter().step_by(5).copied().collect();
                let bank: Vec<usize> = idx
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| k % 5 != 0)
                    .map(|(_, &i)| i)
                    .collect();
                Some((
                    labelled(self.source.as_ref(), &bank)?,
                    labelled(self.source.as_ref(), &queries)?,
                ))
            }
        }
    }
}

/// Attention pictures of four fixed evaluation images, plus segmentation (where masks exist)
/// and k-NN (where labels exist) numbers, appended to `metrics.jsonl` as an `eval` record.
fn evaluate(
    teacher: &DinoModel,
    cfg: &TrainConfig,
    eval: &EvalSet,
    run: &RunDir,
    step: u64,
    device: &Device,
    metrics: &mut std::fs::File,
) -> Result<()> {
    let size = cfg.augment.global_size;
    let patch = cfg.patch_size;
    let mut tiles = Vec::new();
    for i in eval.spread(4) {
        let Ok(sample) = eval.source.get(i) else {
            continue;
        };
        let prepared = dino_model::preprocess::prepare(
            &sample.image,
            dino_model::preprocess::Resize::Square(size),
            patch,
        )?;
        let maps = crate::render::compute_maps(
            &teacher.backbone,
            &prepared,
            teacher.backbone.depth() - 1,
            0.6,
            device,
        )?;
        let mean = dino_model::attention::mean_map(&maps.heads);
        tiles.push(prepared.display.clone());
        tiles.push(crate::render::overlay(
            &prepared.display,
            &mean,
            maps.grid_h,
            maps.grid_w,
            patch,
            0.6,
            false,
        ));
        for h in &maps.heads {
            tiles.push(crate::render::heatmap(h, maps.grid_h, maps.grid_w, patch));
        }
    }
    let cols = 2 + teacher.backbone.num_heads();
    let picture = crate::render::grid(&tiles, cols);
    crate::render::save_png(
        &picture,
        &run.attention().join(format!("step_{step:06}.png")),
    )?;
    crate::render::save_png(&picture, &run.attention().join("latest.png"))?;
    let mut record = serde_json::json!({ "eval": step });
    let mut said = format!("eval at step {step}:");
    // Sources without masks give no segmentation numbers, unlabelled ones no k-NN.
    if let Ok(seg) = crate::eval::segmentation(
        &teacher.backbone,
        eval.source.as_ref(),
        64,
        size,
        0.6,
        device,
    ) {
        record["jaccard_best_head"] = seg.best_head.into();
        record["jaccard_mean_heads"] = seg.mean_heads.into();
        record["jaccard_head_mean_map"] = seg.head_mean_map.into();
        said += &format!(
            " Jaccard best head {:.3}, mean {:.3} ({} images);",
            seg.best_head, seg.mean_heads, seg.images
        );
    }
    if let Some(((bank, bank_labels), (queries, query_labels))) = eval.knn_sets() {
        let classes = eval.source.classes().len().max(1);
        let quiet = indicatif::ProgressBar::hidden();
        let fb = crate::eval::features(&teacher.backbone, &bank, size, device, &quiet)?;
        let fq = crate::eval::features(&teacher.backbone, &queries, size, device, &quiet)?;
        let knn = crate::eval::knn(&fb, &bank_labels, &fq, &query_labels, 20, 0.07, classes);
        record["knn_top1"] = knn.top1.into();
        record["knn_chance"] = knn.chance.into();
        said += &format!(" k-NN top-1 {:.1}% (chance {:.1}%)", knn.top1, knn.chance);
    }
    writeln!(metrics, "{record}")?;
    log::info!("{said}");
    Ok(())
}

/// Draws `loss.png` (loss per step) and, when evaluations ran, `eval.png` (Jaccard and k-NN).
pub fn plot_metrics(run: &RunDir) -> Result<()> {
    let text = std::fs::read_to_string(run.metrics())
        .with_context(|| format!("reading {}", run.metrics().display()))?;
    let mut loss = Vec::new();
    let (mut best, mut mean_map, mut knn) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(s), Some(l)) = (v["step"].as_f64(), v["loss"].as_f64()) {
            loss.push((s, l));
        }
        if let Some(s) = v["eval"].as_f64() {
            for (key, series, scale) in [
                ("jaccard_best_head", &mut best, 1.0),
                ("jaccard_head_mean_map", &mut mean_map, 1.0),
                ("knn_top1", &mut knn, 0.01),
            ] {
                if let Some(y) = v[key].as_f64() {
                    series.push((s, y * scale));
                }
            }
        }
    }
    let mut png = crate::plot::line_plot(&[(&loss, [30, 90, 200])], 640, 360);
    crate::plot::legend(&mut png, &[("DINO loss", [30, 90, 200])]);
    crate::render::save_png(&png, &run.root.join("loss.png"))?;
    if !best.is_empty() || !knn.is_empty() {
        // The paper's yardstick: twice the random-init model's Jaccard (the step-0 evaluation).
        let goal: Vec<(f64, f64)> = best
            .first()
            .filter(|p| p.0 == 0.0)
            .map(|p| vec![(0.0, 2.0 * p.1), (best.last().unwrap().0, 2.0 * p.1)])
            .unwrap_or_default();
        let (red, orange, green, grey) = (
            [200, 40, 30],
            [230, 150, 20],
            [30, 150, 60],
            [150, 150, 150],
        );
        let mut png = crate::plot::line_plot_in(
            &[
                (&goal, grey),
                (&mean_map, orange),
                (&knn, green),
                (&best, red),
            ],
            640,
            360,
            Some((0.0, 1.0)),
        );
        let mut entries = vec![
            ("Jaccard best head", red),
            ("Jaccard head-mean mask", orange),
            ("kNN top-1 / 100", green),
        ];
        if !goal.is_empty() {
            entries.push(("2x random init", grey));
        }
        crate::plot::legend(&mut png, &entries);
        crate::render::save_png(&png, &run.root.join("eval.png"))?;
    }
    Ok(())
}

/// Keeps only the metrics of steps before `step` (those after the last checkpoint will be
/// run again), and drops a line cut short by a kill.
fn truncate_metrics(path: &std::path::Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v) => {
                v["step"].as_u64().is_none_or(|s| s < step)
                    && v["eval"].as_u64().is_none_or(|s| s <= step)
            }
            Err(_) => false,
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    crate::io::write_atomic(path, out.as_bytes())
}

/// Deletes temporary files that a killed process left behind while writing a checkpoint;
/// they are never read, but they should not pile up.
fn remove_stale_temp_files(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Reads the config of an existing run (for `--resume`).
pub fn load_run_config(run: &RunDir) -> Result<TrainConfig> {
    let path = run.config();
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "--resume {}: no {} (is this a run directory?)",
            run.root.display(),
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}
