//! The DINO loss (`DINOLoss` in `main_dino.py`): teacher centering and sharpening,
//! cross-entropy to every student view except the same one, and the centre's EMA.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Tensor, TensorData};

/// Loss state: the running centre of teacher outputs.
#[derive(Debug, Clone)]
pub struct DinoLoss {
    /// Running mean of teacher outputs, `[1, out_dim]`, as plain values (saved in checkpoints).
    pub center: Vec<f32>,
    /// Student temperature (0.1 official).
    pub student_temp: f64,
    /// Centre EMA momentum (0.9 official).
    pub center_momentum: f64,
}

/// What one loss evaluation measured besides the loss tensor.
#[derive(Debug, Clone, Copy)]
pub struct TeacherStats {
    /// Mean entropy (nats) of the teacher's per-image distributions: `ln(out_dim)` means uniform collapse.
    pub entropy: f64,
    /// Entropy of the batch-mean teacher distribution: near 0 means every image picks the same prototype.
    pub mean_entropy: f64,
}

impl DinoLoss {
    /// A loss with a zero centre.
    pub fn new(out_dim: usize, student_temp: f64, center_momentum: f64) -> Self {
        Self {
            center: vec![0.0; out_dim],
            student_temp,
            center_momentum,
        }
    }

    /// Loss of one step and the teacher statistics; updates the centre (after the loss, as the
    /// official code does).
    ///
    /// # Shapes
    /// `student`: `[ncrops * batch, out_dim]` (global crops first), `teacher`: `[2 * batch, out_dim]`.
    pub fn forward(
        &mut self,
        student: Tensor<2>,
        teacher: Tensor<2>,
        ncrops: usize,
        teacher_temp: f64,
    ) -> (Tensor<2>, TeacherStats) {
        let device = teacher.device();
        let center = self.center_tensor(&device);
        let teacher = teacher.detach();
        let q = softmax((teacher.clone() - center).div_scalar(teacher_temp), 1);
        let out = self.forward_with_targets(student, q, ncrops);
        self.update_center(teacher);
        out
    }

    /// The cross-entropy of every student crop to the teacher targets `q` of each other global
    /// crop, averaged over the pairs; the centre is not touched (Sinkhorn-Knopp targets).
    ///
    /// # Shapes
    /// `student`: `[ncrops * batch, out_dim]` (global crops first), `q`: `[2 * batch, out_dim]`
    /// probabilities.
    pub fn forward_with_targets(
        &self,
        student: Tensor<2>,
        q: Tensor<2>,
        ncrops: usize,
    ) -> (Tensor<2>, TeacherStats) {
        let [rows, out_dim] = q.dims();
        let batch = rows / 2;
        let log_p = log_softmax(student.div_scalar(self.student_temp), 1);
        let mut total: Option<Tensor<2>> = None;
        let mut terms = 0usize;
        for iq in 0..2 {
            let qi = q.clone().narrow(0, iq * batch, batch);
            for v in 0..ncrops {
                if v == iq {
                    continue;
                }
                let lv = log_p.clone().narrow(0, v * batch, batch);
                // sum over prototypes, mean over the batch: [1, 1]
                let term = (qi.clone() * lv).sum_dim(1).mean_dim(0).neg();
                total = Some(match total {
                    Some(t) => t + term,
                    None => term,
                });
                terms += 1;
            }
        }
        let loss = total
            .expect("ncrops >= 2 gives at least one term")
            .div_scalar(terms as f64);
        (loss, teacher_stats(q, out_dim))
    }

    fn center_tensor(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(self.center.clone(), [1, self.center.len()]),
            device,
        )
    }

    fn update_center(&mut self, teacher: Tensor<2>) {
        let mut batch_center: Vec<f32> = teacher
            .mean_dim(0)
            .into_data()
            .try_to_vec()
            .expect("f32 teacher output");
        // `dist.all_reduce(batch_center)` then `/ (len(teacher_output) * world_size)`: every
        // rank has the same rows, so the mean of the ranks' means.
        crate::distributed::all_reduce_mean(&mut batch_center, "the centre update");
        let m = self.center_momentum as f32;
        for (c, b) in self.center.iter_mut().zip(batch_center) {
            *c = *c * m + b * (1.0 - m);
        }
    }
}

fn teacher_stats(q: Tensor<2>, out_dim: usize) -> TeacherStats {
    let [rows, _] = q.dims();
    let values: Vec<f32> = q
        .into_data()
        .try_to_vec()
        .expect("f32 teacher probabilities");
    let entropy_of = |p: &[f32]| -> f64 {
        p.iter()
            .filter(|&&x| x > 0.0)
            .map(|&x| -(x as f64) * (x as f64).ln())
            .sum()
    };
    let mut mean = vec![0.0f32; out_dim];
    let mut entropy = 0.0;
    for row in values.chunks_exact(out_dim) {
        entropy += entropy_of(row);
        for (m, x) in mean.iter_mut().zip(row) {
            *m += x / rows as f32;
        }
    }
    TeacherStats {
        entropy: entropy / rows as f64,
        mean_entropy: entropy_of(&mean),
    }
}

/// The collapse diagnostics of one step, from its DINO loss (the cross-entropy of the student
/// to the teacher), the teacher statistics and the centre: each names a way DINO fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Diagnostics {
    /// Teacher entropy over its maximum, `ln(out_dim)`: 1 is the uniform collapse.
    pub entropy_ratio: f64,
    /// KL(teacher ‖ student) = cross-entropy − H(teacher), averaged over the loss's pairs:
    /// near 0 while the entropy is high means both sit on the same flat output.
    pub kl: f64,
    /// exp(entropy of the batch-mean teacher distribution): how many prototypes the batch
    /// uses; 1 is the one-prototype collapse.
    pub effective_prototypes: f64,
    /// L2 norm of the centre.
    pub center_norm: f64,
}

impl Diagnostics {
    /// The diagnostics of a step whose DINO cross-entropy was `loss`.
    pub fn of(loss: f64, stats: &TeacherStats, out_dim: usize, center: &[f32]) -> Self {
        Self {
            entropy_ratio: stats.entropy / (out_dim as f64).ln(),
            // Every teacher crop enters the same number of pairs, so the mean of the pairs'
            // H(teacher) is the mean teacher entropy.
            kl: loss - stats.entropy,
            effective_prototypes: stats.mean_entropy.exp(),
            center_norm: center
                .iter()
                .map(|&c| f64::from(c) * f64::from(c))
                .sum::<f64>()
                .sqrt(),
        }
    }
}

/// A collapse verdict from the teacher statistics, as a fraction of the maximum entropy.
pub fn collapse_indicator(stats: &TeacherStats, out_dim: usize) -> &'static str {
    let max = (out_dim as f64).ln();
    if stats.entropy > 0.95 * max {
        "uniform"
    } else if stats.mean_entropy < 0.05 * max {
        "one-hot"
    } else {
        "ok"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_are_kl_effective_prototypes_and_centre_norm() {
        let device = Device::flex();
        // Batch 1: the teacher's two global crops q0 = (0.5, 0.5) and q1 = (0.9, 0.1), three
        // student crops; the loss's CE minus the mean teacher entropy is the mean KL.
        let q = Tensor::<2>::from_data(
            TensorData::new(vec![0.5f32, 0.5, 0.9, 0.1], [2, 2]),
            &device,
        );
        let s = Tensor::<2>::from_data(
            TensorData::new(vec![0.3f32, -0.2, 0.1, 0.4, -0.5, 0.2], [3, 2]),
            &device,
        );
        let loss = DinoLoss::new(2, 0.1, 0.9);
        let (l, stats) = loss.forward_with_targets(s, q, 3);
        let ce = l.into_data().try_to_vec::<f32>().unwrap()[0] as f64;
        let d = Diagnostics::of(ce, &stats, 2, &[3.0, 4.0]);
        let p = |a: f64, b: f64| {
            let (ea, eb) = ((a / 0.1).exp(), (b / 0.1).exp());
            [ea / (ea + eb), eb / (ea + eb)]
        };
        let kl = |q: [f64; 2], p: [f64; 2]| (0..2).map(|i| q[i] * (q[i] / p[i]).ln()).sum::<f64>();
        let (q0, q1) = ([0.5, 0.5], [0.9, 0.1]);
        let (s0, s1, s2) = (p(0.3, -0.2), p(0.1, 0.4), p(-0.5, 0.2));
        // Pairs: teacher crop 0 with student crops 1 and 2, teacher crop 1 with 0 and 2.
        let want = (kl(q0, s1) + kl(q0, s2) + kl(q1, s0) + kl(q1, s2)) / 4.0;
        assert!((d.kl - want).abs() < 1e-5, "{} vs {want}", d.kl);
        let h = |q: [f64; 2]| -(q[0] * q[0].ln() + q[1] * q[1].ln());
        let mean_h = (h(q0) + h(q1)) / 2.0;
        assert!((d.entropy_ratio - mean_h / 2f64.ln()).abs() < 1e-6);
        assert!((d.effective_prototypes - h([0.7, 0.3]).exp()).abs() < 1e-5);
        assert_eq!(d.center_norm, 5.0);
    }

    #[test]
    fn loss_matches_a_hand_computation() {
        let device = Device::flex();
        // batch 1, 3 crops, 2 prototypes.
        let t = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]),
            &device,
        );
        let s = Tensor::<2>::from_data(
            TensorData::new(vec![0.5f32, 0.0, 0.0, 0.5, 0.2, 0.1], [3, 2]),
            &device,
        );
        let mut loss = DinoLoss::new(2, 0.1, 0.9);
        let (l, _) = loss.forward(s, t, 3, 0.04);
        let got = l.into_data().try_to_vec::<f32>().unwrap()[0] as f64;
        let sm = |a: f64, b: f64, temp: f64| {
            let (ea, eb) = ((a / temp).exp(), (b / temp).exp());
            (ea / (ea + eb), eb / (ea + eb))
        };
        let lsm = |a: f64, b: f64| {
            let (a, b) = (a / 0.1, b / 0.1);
            let m = a.max(b);
            let lse = m + ((a - m).exp() + (b - m).exp()).ln();
            (a - lse, b - lse)
        };
        let q = [sm(1.0, 0.0, 0.04), sm(0.0, 1.0, 0.04)];
        let lp = [lsm(0.5, 0.0), lsm(0.0, 0.5), lsm(0.2, 0.1)];
        let ce = |q: (f64, f64), l: (f64, f64)| -(q.0 * l.0 + q.1 * l.1);
        let expected =
            (ce(q[0], lp[1]) + ce(q[0], lp[2]) + ce(q[1], lp[0]) + ce(q[1], lp[2])) / 4.0;
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
        // centre = 0.9 * 0 + 0.1 * mean(teacher) = 0.05 each.
        assert!((loss.center[0] - 0.05).abs() < 1e-7 && (loss.center[1] - 0.05).abs() < 1e-7);
    }
}
