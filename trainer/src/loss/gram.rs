//! DINOv3's Gram anchoring (`loss/gram_loss.py` `GramLoss`, the Gram teacher of
//! `train/ssl_meta_arch.py` and its refreshes in `train/train.py`): the student's
//! patch-to-patch cosine similarities are held to those of an earlier (Gram) teacher, which
//! keeps the dense features — and so the attention maps and segmentations — from degrading in
//! long runs.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// Gram anchoring settings of a `--method dinov3` run (`gram.*` of the official gram-anchor
/// recipe, `dinov3_vit7b16_gram_anchor.yaml`), saved with the run. Step counts left unset
/// take the recipe's proportions of the run's length: anchoring from iteration 1,000,000 of
/// 1,200,000, a weight ramp of one 1,000-iteration epoch, a refresh every 10,000.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GramAnchoring {
    /// The loss weight once ramped up (the recipe's `loss_weight_schedule.end`, 2.0).
    pub weight: f64,
    /// Step at which the EMA teacher is copied into the Gram teacher and the loss starts;
    /// unset: 5/6 of the run.
    pub from_step: Option<u64>,
    /// Steps of the cosine ramp of the weight from 0 (`cosine_epochs`); unset: 1/1200 of the run.
    pub ramp_steps: Option<u64>,
    /// The Gram teacher is refreshed from the EMA teacher every this many steps after
    /// `from_step` (`update_frequency`); unset: 1/120 of the run.
    pub refresh_every: Option<u64>,
    /// Refreshes at most (`max_updates`, 3).
    pub max_refreshes: u64,
    /// Side of the Gram teacher's crops in pixels (`crops.gram_teacher_crops_size`: 512 for
    /// 256-pixel global crops); unset: twice the global crops.
    pub size: Option<u32>,
    /// One Gram matrix per image (`img_level`, true in the recipe) or one per batch.
    pub image_level: bool,
    /// Which negative similarities are dropped (`remove_neg`, `remove_only_teacher_neg`).
    pub negatives: GramNegatives,
}

impl Default for GramAnchoring {
    fn default() -> Self {
        Self {
            weight: 2.0,
            from_step: None,
            ramp_steps: None,
            refresh_every: None,
            max_refreshes: 3,
            size: None,
            image_level: true,
            negatives: GramNegatives::Keep,
        }
    }
}

/// When the Gram teacher is loaded and refreshed and what the loss weighs, in steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GramSchedule {
    /// The step before which the Gram teacher is loaded from the EMA teacher.
    pub from: u64,
    /// Length of the weight's ramp.
    pub ramp: u64,
    /// Steps between refreshes.
    pub every: u64,
    /// Refreshes at most.
    pub max_refreshes: u64,
    /// The weight after the ramp.
    pub weight: f64,
}

impl GramAnchoring {
    /// The schedule of a run of `total` steps.
    pub fn schedule(&self, total: u64) -> GramSchedule {
        GramSchedule {
            from: self.from_step.unwrap_or(total * 5 / 6),
            ramp: self.ramp_steps.unwrap_or(total / 1200).max(1),
            every: self.refresh_every.unwrap_or(total / 120).max(1),
            max_refreshes: self.max_refreshes,
            weight: self.weight,
        }
    }
}

impl GramSchedule {
    /// Whether the Gram teacher exists during `step`.
    pub fn active(&self, step: u64) -> bool {
        step >= self.from
    }

    /// The loss weight of `step`: 0 before `from`, then the official `linear_warmup_cosine_decay`
    /// from 0 to the weight over the ramp (`np.linspace(0, π, ramp)`, so the ramp's first step
    /// weighs 0), then the weight.
    pub fn weight_at(&self, step: u64) -> f64 {
        if step < self.from {
            return 0.0;
        }
        let k = step - self.from;
        if k >= self.ramp {
            return self.weight;
        }
        let angle = if self.ramp > 1 {
            std::f64::consts::PI * k as f64 / (self.ramp - 1) as f64
        } else {
            0.0
        };
        self.weight * (1.0 - (angle.cos() + 1.0) / 2.0)
    }

    /// Whether the Gram teacher is refreshed from the EMA teacher after `step` (as the official
    /// loop after `optimizer.step()` and the EMA update).
    pub fn refresh_after(&self, step: u64) -> bool {
        let done = step + 1;
        done > self.from
            && (done - self.from).is_multiple_of(self.every)
            && (done - self.from) / self.every <= self.max_refreshes
    }
}

/// The Gram teacher's patch features `[B, N·N, D]` on its `N×N` grid resized to the student's
/// `n×n` grid (`F.interpolate(mode="bicubic", align_corners=False, antialias=False)`, the
/// official `global_teacher_resize_*` defaults), as one matrix product per axis.
pub fn resize_patch_grid(patches: Tensor<3>, n: usize, device: &Device) -> Tensor<3> {
    let [b, p, d] = patches.dims();
    let big = (p as f64).sqrt().round() as usize;
    if big == n {
        return patches;
    }
    // `size=` hands PyTorch the scale out / in.
    let m = dino_model::interp::bicubic_matrix(big, n, n as f64 / big as f64);
    let m = Tensor::<2>::from_data(TensorData::new(m, [n, big]), device);
    // Width: [B·N, N, D] → [B·N, n, D]; then height the same way on the transposed grid.
    let x = patches.reshape([b * big, big, d]);
    let x = m.clone().unsqueeze::<3>().repeat_dim(0, b * big).matmul(x);
    let x = x
        .reshape([b, big, n, d])
        .swap_dims(1, 2)
        .reshape([b * n, big, d]);
    let x = m.unsqueeze::<3>().repeat_dim(0, b * n).matmul(x);
    x.reshape([b, n, n, d])
        .swap_dims(1, 2)
        .reshape([b, n * n, d])
}

/// Which negative similarities are dropped before the comparison (`remove_neg`,
/// `remove_only_teacher_neg`; the official default keeps them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GramNegatives {
    /// Compare every similarity (default).
    #[default]
    Keep,
    /// Zero negative similarities in both Gram matrices.
    RemoveNeg,
    /// Zero the teacher's negatives only: the official code means to zero the student's where
    /// both are negative too, but its in-place order never finds such pairs (reproduced).
    RemoveOnlyTeacherNeg,
}

/// `F.normalize`'s default epsilon.
const EPS: f64 = 1e-12;

fn unit(x: Tensor<3>) -> Tensor<3> {
    // max(‖x‖, eps) as √max(‖x‖², eps²): a zero row then has a finite gradient, as in PyTorch.
    let norm = x.clone().square().sum_dim(2).clamp_min(EPS * EPS).sqrt();
    x / norm
}

/// Gram loss, `[1]`: MSE between the Gram matrices of the L2-normalised `student` and
/// `teacher` patch features (`[B, P, D]` each; the teacher is not differentiated). With
/// `image_level` each image has its own `P×P` matrix (the gram-anchor recipe); otherwise all
/// `B·P` patches form one (the config default).
pub fn gram_loss(
    student: Tensor<3>,
    teacher: Tensor<3>,
    image_level: bool,
    negatives: GramNegatives,
) -> Tensor<1> {
    let [b, p, d] = student.dims();
    let (s, t) = (unit(student), unit(teacher.detach()));
    let (s, t) = if image_level {
        (s, t)
    } else {
        (s.reshape([1, b * p, d]), t.reshape([1, b * p, d]))
    };
    let s_sim = s.clone().matmul(s.swap_dims(1, 2));
    let t_sim = t.clone().matmul(t.swap_dims(1, 2));
    let (s_sim, t_sim) = match negatives {
        GramNegatives::Keep => (s_sim, t_sim),
        GramNegatives::RemoveNeg => {
            let s_neg = s_sim.clone().detach().lower_elem(0.0);
            let t_neg = t_sim.clone().lower_elem(0.0);
            (s_sim.mask_fill(s_neg, 0.0), t_sim.mask_fill(t_neg, 0.0))
        }
        GramNegatives::RemoveOnlyTeacherNeg => {
            // The official code zeroes the teacher's negatives in place before it looks for
            // pairs negative in both, so it never finds any: the student stays whole.
            let t_neg = t_sim.clone().lower_elem(0.0);
            (s_sim, t_sim.mask_fill(t_neg, 0.0))
        }
    };
    (s_sim - t_sim).square().mean().reshape([1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_follows_the_recipe_proportions() {
        // 1,200,000 steps: the recipe's own numbers.
        let s = GramAnchoring::default().schedule(1_200_000);
        assert_eq!((s.from, s.ramp, s.every), (1_000_000, 1000, 10_000));
        assert_eq!(s.weight_at(999_999), 0.0);
        assert_eq!(s.weight_at(1_000_000), 0.0);
        let mid = s.weight_at(1_000_000 + 999 / 2);
        assert!((mid - 1.0).abs() < 0.01, "{mid}");
        assert_eq!(s.weight_at(1_000_999), 2.0);
        assert_eq!(s.weight_at(1_100_000), 2.0);
        let refreshes: Vec<u64> = (999_000..1_050_000)
            .filter(|&t| s.refresh_after(t))
            .collect();
        assert_eq!(refreshes, vec![1_009_999, 1_019_999, 1_029_999]);
        assert!(!s.active(999_999) && s.active(1_000_000));
    }

    #[test]
    fn resizing_a_constant_grid_keeps_it_and_a_same_size_grid_is_untouched() {
        let device = Device::flex();
        let x = Tensor::<3>::ones([2, 64, 3], &device).mul_scalar(0.5);
        let y = resize_patch_grid(x.clone(), 4, &device);
        assert_eq!(y.dims(), [2, 16, 3]);
        let v = y.into_data().try_to_vec::<f32>().unwrap();
        assert!(v.iter().all(|&a| (a - 0.5).abs() < 1e-6), "{v:?}");
        let same = resize_patch_grid(x.clone(), 8, &device);
        assert_eq!(
            same.into_data().try_to_vec::<f32>().unwrap(),
            x.into_data().try_to_vec::<f32>().unwrap()
        );
    }

    #[test]
    fn resizing_moves_each_axis_separately() {
        // A ramp along the width stays a ramp along the width.
        let device = Device::flex();
        let big = 8;
        let v: Vec<f32> = (0..big * big).map(|i| (i % big) as f32).collect();
        let x = Tensor::<3>::from_data(TensorData::new(v, [1, big * big, 1]), &device);
        let y = resize_patch_grid(x, 4, &device)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for row in y.chunks(4) {
            assert_eq!(row, &y[..4]);
        }
        assert!(y[..4].windows(2).all(|w| w[1] > w[0]), "{y:?}");
    }
}
