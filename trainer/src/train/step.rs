//! One training iteration (`train_one_epoch`'s body) on the networks it updates: the method's
//! losses (`objective`), backward, optimiser step, EMA. Every method runs through this step.

use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use crate::loss::dino::TeacherStats;
use crate::loss::objective::{Dinov2Objective, Losses, StepInputs, dino_losses, dinov2_losses};
use crate::optim::optimizer::{
    Dinov2Groups, StepParams, ema_update, gradients_finite, unscale_gradients,
};

use super::networks::Networks;

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

/// DINOv2's (and DINOv3's) part of a step: its loss terms and its optimiser's parameter
/// groups; a DINO step has neither.
#[derive(Debug, Clone, Copy)]
pub struct Dinov2Step<'a> {
    /// iBOT, KoLeo, the DINO term's weight, Gram anchoring.
    pub objective: &'a Dinov2Objective,
    /// Layer decay and the patch embedding's multiplier.
    pub groups: Dinov2Groups,
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
    pub stats: TeacherStats,
    /// Whether the optimiser step was skipped because a scaled f16 gradient overflowed.
    pub skipped: bool,
    /// Whether an f32 step's gradients were NaN or infinite: the update was not applied (and
    /// the centres are as before), and training cannot go on at this learning rate.
    pub diverged: bool,
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
    dinov2: Option<Dinov2Step>,
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
        Some(Dinov2Step { objective, .. }) => dinov2_losses(
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
    let (value, terms, stats) = read_back(&losses);
    // A step that must not be applied gives back the networks as they were, centres included.
    let unapplied = |mut nets: Networks, diverged: bool, allreduce_ms: f64, terms, stats| {
        nets.loss.center = center_before;
        if let (Some(i), Some(c)) = (nets.ibot.as_mut(), ibot_before) {
            i.center = c;
        }
        StepOutput {
            nets,
            loss: value,
            terms,
            stats,
            skipped: true,
            diverged,
            allreduce_ms,
        }
    };
    if !value.is_finite() {
        let nets = Networks {
            student,
            teacher,
            optim,
            loss,
            scaler,
            ibot,
            gram,
        };
        return unapplied(nets, false, 0.0, terms, stats);
    }
    // `fp16_scaler.scale(loss).backward()`, then `unscale_` before clipping; a step whose
    // gradients overflowed is skipped (`fp16_scaler.step`) and the scale backed off.
    let loss_tensor = match &scaler {
        Some(s) => losses.total.mul_scalar(s.scale),
        None => losses.total,
    };
    let mut grads = GradientsParams::from_grads(loss_tensor.backward(), &student);
    // DDP averages the (still scaled) gradients during backward, before anything reads them.
    let allreduce_ms = crate::distributed::ddp::average_gradients(
        &student,
        &mut grads,
        &device.clone().autodiff(),
    )
    .unwrap_or_else(|e| {
        // The ranks disagree on the model: a bug, and no rank can go on alone.
        log::error!("{e:#}");
        eprintln!("error: {e:#}");
        crate::distributed::finalize(true);
        std::process::exit(1)
    });
    let finite = match &scaler {
        Some(s) => {
            // DINOv2 freezes the last layer by learning rate 0, not by dropping its gradient.
            let cancel_first =
                dinov2.is_none() && hyper.freeze_last_layer && hyper.clip_grad <= 0.0;
            unscale_gradients(&student, &mut grads, s.scale, cancel_first)
        }
        None => gradients_finite(&student, &mut grads),
    };
    if let Some(s) = &mut scaler {
        s.update(!finite);
    }
    if !finite && scaler.is_none() {
        let nets = Networks {
            student,
            teacher,
            optim,
            loss,
            scaler,
            ibot,
            gram,
        };
        return unapplied(nets, true, allreduce_ms, terms, stats);
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
                dinov2: dinov2.map(|d| d.groups.rules(depth)),
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
        diverged: false,
        allreduce_ms,
    }
}

/// The loss, its terms and the teacher statistics on the host, in one read-back, averaged
/// over the ranks (`MetricLogger.synchronize_between_processes`) before the finiteness check
/// so that every rank takes the same branch.
fn read_back(losses: &Losses) -> (f64, Vec<(&'static str, f64)>, TeacherStats) {
    let mut read = vec![losses.total.clone().detach()];
    read.extend(losses.terms.iter().map(|(_, t)| t.clone().detach()));
    let mut values: Vec<f64> = Tensor::cat(read, 0)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap_or_default()
        .into_iter()
        .map(f64::from)
        .collect();
    values.extend([losses.stats.entropy, losses.stats.mean_entropy]);
    crate::distributed::mean_f64(&mut values, "the loss read-back");
    let stats = TeacherStats {
        mean_entropy: values.pop().unwrap_or(f64::NAN),
        entropy: values.pop().unwrap_or(f64::NAN),
    };
    let value = values.first().copied().unwrap_or(f64::NAN);
    let terms = losses
        .terms
        .iter()
        .zip(values.iter().skip(1))
        .map(|((name, _), &v)| (*name, v))
        .collect();
    (value, terms, stats)
}
