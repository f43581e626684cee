//! DINOv3's Gram anchoring loss (`loss/gram_loss.py` `GramLoss`): the student's patch-to-patch
//! cosine similarities are held to those of an earlier (Gram) teacher, which keeps the dense
//! features — and so the attention maps and segmentations — from degrading in long runs.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

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
    let norm = x.clone().square().sum_dim(2).sqrt().clamp_min(EPS);
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
