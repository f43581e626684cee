//! One training iteration (`train_one_epoch`'s body) on the networks it updates: the method's
//! losses (`objective`), backward, optimiser step, EMA. Every method runs through this step.

use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use dino_model::{DinoModel, ModelConfig, TensorMap, VisionTransformer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use anyhow::{Result, bail};

use crate::amp::LossScaler;
use crate::ibot::IbotLoss;
use crate::loss::DinoLoss;
use crate::objective::{Dinov2Objective, StepInputs, dino_losses, dinov2_losses};
use crate::optim::{Optimizer, StepParams, ema_update, unscale_gradients};
use crate::pipeline::{Batch, derive_seed};
use crate::train::TrainConfig;

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
    /// The iBOT loss with its running centre (DINOv2).
    pub ibot: Option<IbotLoss>,
    /// DINOv3's Gram teacher, a frozen earlier copy of the teacher's backbone, once anchoring
    /// has begun.
    pub gram: Option<VisionTransformer>,
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
        if let Some(value) = cfg.dinov2.as_ref().map(|o| o.layer_scale as f32) {
            // `--layerscale INIT`: the model draws its gammas at DINOv2's 1e-5.
            for (name, t) in map.iter_mut() {
                if name.ends_with(".ls1.gamma") || name.ends_with(".ls2.gamma") {
                    t.data.iter_mut().for_each(|g| *g = value);
                }
            }
        }
        if let Some(from) = &cfg.init {
            crate::init::load_backbone(from, &mut map)?;
        }
        Ok(Self {
            student: mc
                .load(&map, "", &device.clone().autodiff())?
                .with_precision(cfg.precision),
            teacher: mc.load(&map, "", device)?.with_precision(cfg.precision),
            optim: Optimizer::new(cfg.optimizer),
            loss: DinoLoss::new(cfg.out_dim, cfg.student_temp, cfg.center_momentum),
            scaler: cfg.fresh_loss_scaler(),
            ibot: cfg.fresh_ibot_loss(),
            gram: None,
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
    /// Its terms before their weights (`dino_loss`, and for DINOv2 `ibot_loss`, `koleo_loss`).
    pub terms: Vec<(&'static str, f64)>,
    /// Teacher entropy statistics.
    pub stats: crate::loss::TeacherStats,
    /// Whether the optimiser step was skipped because a scaled f16 gradient overflowed.
    pub skipped: bool,
    /// Milliseconds spent averaging the gradients over the ranks (0 alone).
    pub allreduce_ms: f64,
}

/// One DINO iteration (`train_one_epoch`'s body): student on the global crops `[2B, 3, G, G]`
/// and the local crops `[L·B, 3, l, l]` (grouped by resolution as `MultiCropWrapper`),
/// teacher on the global crops, loss, backward, optimiser step, EMA.
pub fn dino_step(
    nets: Networks,
    globals: Tensor<4>,
    locals: Option<Tensor<4>>,
    drop: &[Option<dino_model::DropPathMasks>; 2],
    hyper: &StepHyper,
    device: &Device,
) -> StepOutput {
    let inputs = StepInputs {
        globals,
        locals,
        drop: drop.clone(),
        masks: None,
        gram: None,
    };
    train_step(nets, inputs, hyper, None, device)
}

/// One iteration of any method: its losses (DINO's, or DINOv2's when `dinov2` is given), then
/// the shared backward pass, optimiser step (DINOv2's parameter groups and clipping for
/// DINOv2) and EMA. A non-finite loss returns the networks unchanged (centres included) so
/// the caller can stop with the last good state.
pub fn train_step(
    nets: Networks,
    inputs: StepInputs,
    hyper: &StepHyper,
    dinov2: Option<&Dinov2Objective>,
    device: &Device,
) -> StepOutput {
    let Networks {
        student,
        teacher,
        mut optim,
        mut loss,
        mut scaler,
        mut ibot,
        gram,
    } = nets;
    let center_before = loss.center.clone();
    let ibot_before = ibot.as_ref().map(|i| i.center.clone());
    let losses = match dinov2 {
        None => dino_losses(
            &student,
            &teacher,
            &mut loss,
            inputs,
            hyper.teacher_temp,
            device,
        ),
        Some(objective) => dinov2_losses(
            &student,
            &teacher,
            gram.as_ref(),
            (
                &mut loss,
                ibot.as_mut().expect("DINOv2 networks have an iBOT loss"),
            ),
            objective,
            inputs,
            hyper.teacher_temp,
            device,
        ),
    };
    // One read-back for the total and every term.
    let mut read = vec![losses.total.clone().detach()];
    read.extend(losses.terms.iter().map(|(_, t)| t.clone().detach()));
    let mut values: Vec<f64> = Tensor::cat(read, 0)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap_or_default()
        .into_iter()
        .map(f64::from)
        .collect();
    // Averaged over the ranks (`MetricLogger.synchronize_between_processes`) before the
    // finiteness check, so that every rank takes the same branch.
    values.extend([losses.stats.entropy, losses.stats.mean_entropy]);
    crate::dist::mean_f64(&mut values, "the loss read-back");
    let stats = crate::loss::TeacherStats {
        mean_entropy: values.pop().unwrap_or(f64::NAN),
        entropy: values.pop().unwrap_or(f64::NAN),
    };
    let value = values.first().copied().unwrap_or(f64::NAN);
    let terms: Vec<(&'static str, f64)> = losses
        .terms
        .iter()
        .zip(values.iter().skip(1))
        .map(|((name, _), &v)| (*name, v))
        .collect();
    if !value.is_finite() {
        loss.center = center_before;
        if let (Some(i), Some(c)) = (ibot.as_mut(), ibot_before) {
            i.center = c;
        }
        return StepOutput {
            nets: Networks {
                student,
                teacher,
                optim,
                loss,
                scaler,
                ibot,
                gram,
            },
            loss: value,
            terms,
            stats,
            skipped: true,
            allreduce_ms: 0.0,
        };
    }
    // `fp16_scaler.scale(loss).backward()`, then `unscale_` before clipping; a step whose
    // gradients overflowed is skipped (`fp16_scaler.step`) and the scale backed off.
    let loss_tensor = match &scaler {
        Some(s) => losses.total.mul_scalar(s.scale),
        None => losses.total,
    };
    let mut grads = GradientsParams::from_grads(loss_tensor.backward(), &student);
    // DDP averages the (still scaled) gradients during backward, before anything reads them.
    let allreduce_ms =
        crate::ddp::average_gradients(&student, &mut grads, &device.clone().autodiff())
            .unwrap_or_else(|e| {
                // The ranks disagree on the model: a bug, and no rank can go on alone.
                log::error!("{e:#}");
                eprintln!("error: {e:#}");
                crate::dist::finalize(true);
                std::process::exit(1)
            });
    let finite = scaler.as_ref().is_none_or(|s| {
        // DINOv2 freezes the last layer by learning rate 0, not by dropping its gradient.
        let cancel_first = dinov2.is_none() && hyper.freeze_last_layer && hyper.clip_grad <= 0.0;
        unscale_gradients(&student, &mut grads, s.scale, cancel_first)
    });
    if let Some(s) = &mut scaler {
        s.update(!finite);
    }
    let student = if finite {
        let depth = student.backbone.depth();
        optim.step(
            student,
            &mut grads,
            StepParams {
                lr: hyper.lr,
                weight_decay: hyper.weight_decay,
                clip_grad: hyper.clip_grad,
                freeze_last_layer: hyper.freeze_last_layer,
                dinov2: dinov2.map(|o| o.rules(depth)),
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
            ibot,
            gram,
        },
        loss: value,
        terms,
        stats,
        skipped: !finite,
        allreduce_ms,
    }
}

/// Per-sample stochastic-depth masks for one crop group of a step (`drop_path` of
/// `vision_transformer.py`), drawn from the run's seed so that a resumed step draws the same.
pub fn drop_path_masks(
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
    // Drawn for the global batch and read at this rank's rows, so that the masks do not
    // depend on how many ranks share the batch.
    let shard = crate::pipeline::Shard::of_this_process();
    let mine = shard.global_rows(rows / cfg.batch_size.max(1), cfg.batch_size);
    let masks = (0..model.backbone.depth())
        .map(|b| {
            let keep = 1.0 - model.backbone.drop_path_prob(b);
            [0, 1].map(|_| {
                let all: Vec<f32> = (0..rows * shard.world)
                    .map(|_| {
                        if keep >= 1.0 {
                            1.0
                        } else {
                            ((keep + rng.random::<f64>()).floor() / keep) as f32
                        }
                    })
                    .collect();
                let v: Vec<f32> = mine.iter().map(|&i| all[i]).collect();
                Tensor::<3>::from_data(TensorData::new(v, [rows, 1, 1]), device)
            })
        })
        .collect();
    Some(dino_model::DropPathMasks { masks })
}

/// DINOv2's batch-subset drop path (`drop_add_residual_stochastic_depth`, which the official
/// loop uses at any rate above 0 since the student runs on a list of crops): each residual
/// branch of each block is added to a random subset of `kept = max(⌊rows·(1 − rate)⌋, 1)`
/// samples, scaled by `rows / kept`, and to no other. As masks: `rows / kept` on the subset,
/// 0 elsewhere (the official code skips computing the dropped samples; the sum is the same).
pub fn subset_drop_path_masks(
    depth: usize,
    rate: f64,
    rows: usize,
    rng: &mut impl Rng,
    device: &Device,
) -> dino_model::DropPathMasks {
    let kept = ((rows as f64 * (1.0 - rate)) as usize).max(1);
    let subsets: Vec<[Vec<usize>; 2]> = (0..depth)
        .map(|_| {
            [0, 1].map(|_| {
                // A uniform random `kept`-subset (`torch.randperm(rows)[:kept]`).
                let mut perm: Vec<usize> = (0..rows).collect();
                for i in 0..kept.min(rows) {
                    let j = rng.random_range(i..rows);
                    perm.swap(i, j);
                }
                perm.truncate(kept);
                perm
            })
        })
        .collect();
    subset_masks(&subsets, rows, device)
}

/// Drop-path masks from explicit subsets (one `[attention, mlp]` pair of kept sample indices
/// per block), each kept sample's branch scaled by `rows / kept`.
pub fn subset_masks(
    subsets: &[[Vec<usize>; 2]],
    rows: usize,
    device: &Device,
) -> dino_model::DropPathMasks {
    let masks = subsets
        .iter()
        .map(|pair| {
            pair.clone().map(|subset| {
                let scale = (rows as f64 / subset.len() as f64) as f32;
                let mut v = vec![0.0f32; rows];
                for &i in &subset {
                    v[i] = scale;
                }
                Tensor::<3>::from_data(TensorData::new(v, [rows, 1, 1]), device)
            })
        })
        .collect();
    dino_model::DropPathMasks { masks }
}

/// The crops `range` of every image in `batch`, stacked crop-major as `MultiCropWrapper` feeds them.
pub fn crops_tensor(batch: &Batch, range: std::ops::Range<usize>, device: &Device) -> Tensor<4> {
    let size = batch.crops[range.start].size as usize;
    let rows = batch.labels.len() * range.len();
    let data: Vec<f32> = batch.crops[range]
        .iter()
        .flat_map(|c| c.data.iter().copied())
        .collect();
    Tensor::from_data(TensorData::new(data, [rows, 3, size, size]), device)
}
