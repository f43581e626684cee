//! The iBOT masked-patch loss of DINOv2 / DINOv3 (`loss/ibot_patch_loss.py` `iBOTPatchLoss`):
//! for every patch masked in the student's global crops, the cross-entropy between the
//! teacher's (unmasked) patch distribution and the student's, each masked patch weighted by
//! one over its crop's masked count, summed and divided by the number of global crops.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Tensor, TensorData};

/// iBOT loss state: the running centre of the teacher's masked-patch outputs.
#[derive(Debug, Clone)]
pub struct IbotLoss {
    /// Running mean of teacher patch outputs, `[patch_out_dim]` (saved in checkpoints).
    pub center: Vec<f32>,
    /// Student temperature (0.1 official).
    pub student_temp: f64,
    /// Centre EMA momentum (0.9 official).
    pub center_momentum: f64,
}

impl IbotLoss {
    /// A loss with a zero centre.
    pub fn new(out_dim: usize, student_temp: f64, center_momentum: f64) -> Self {
        Self {
            center: vec![0.0; out_dim],
            student_temp,
            center_momentum,
        }
    }

    /// Teacher targets by centering and sharpening (`softmax_center_teacher`): `[M, K]` scores
    /// of the masked patches to probabilities.
    pub fn softmax_center_teacher(&self, teacher: Tensor<2>, temp: f64) -> Tensor<2> {
        let center = self.center_tensor(&teacher.device());
        softmax((teacher.detach() - center).div_scalar(temp), 1)
    }

    /// Moves the centre towards the mean of this step's masked teacher scores (`update_center`
    /// then `apply_center_update`, which the official loop runs before the next step's targets).
    /// Over several ranks the mean is the world's: the sums and the counts are all-reduced
    /// (the official code divides the summed scores by its own rank's count times the world
    /// size, which is the same when every rank masks as many patches). `teacher` is `None` on
    /// a rank without masked patches, which still takes part.
    pub fn update_center(&mut self, teacher: Option<Tensor<2>>) {
        let k = self.center.len();
        let mut sums = match &teacher {
            Some(t) => {
                let mut v: Vec<f32> = t
                    .clone()
                    .detach()
                    .sum_dim(0)
                    .into_data()
                    .try_to_vec::<f32>()
                    .expect("f32 teacher output");
                v.push(t.dims()[0] as f32);
                v
            }
            None => vec![0.0; k + 1],
        };
        crate::distributed::all_reduce_sum(&mut sums, "the iBOT centre update");
        let count = sums.pop().unwrap_or(0.0);
        if count == 0.0 {
            return;
        }
        let m = self.center_momentum as f32;
        for (c, b) in self.center.iter_mut().zip(sums) {
            *c = *c * m + b / count * (1.0 - m);
        }
    }

    /// The loss (`forward_masked`), `[1]`: `student` `[M, K]` head outputs of the masked
    /// patches, `targets` `[M, K]` teacher probabilities, `weights` the per-patch
    /// `1 / n_masked(crop)`, `crops` the number of global crops (masked or not).
    pub fn forward_masked(
        &self,
        student: Tensor<2>,
        targets: Tensor<2>,
        weights: &[f32],
        crops: usize,
    ) -> Tensor<1> {
        let [rows, _] = student.dims();
        let device = student.device();
        let w = Tensor::<2>::from_data(TensorData::new(weights.to_vec(), [rows, 1]), &device);
        let ce = (targets * log_softmax(student.div_scalar(self.student_temp), 1)).sum_dim(1);
        (ce * w).sum().div_scalar(crops as f64).neg().reshape([1])
    }

    fn center_tensor(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(self.center.clone(), [1, self.center.len()]),
            device,
        )
    }
}
