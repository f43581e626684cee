//! Sinkhorn-Knopp centering of the teacher (`dino_clstoken_loss.py` / `ibot_patch_loss.py`
//! `sinkhorn_knopp_teacher`): instead of subtracting a running centre, the teacher's scores are
//! turned into a balanced assignment of samples to prototypes by alternate row and column
//! normalisation. DINOv2 uses it for ViT-L/g, DINOv3 always; the CLS (DINO) and masked-patch
//! (iBOT) variants differ only in what counts as a sample, which is the rows given here.

use burn::tensor::{Tensor, TensorData};

use crate::distributed;

/// Iterations of the official code.
pub const SINKHORN_ITERATIONS: usize = 3;

/// Balanced teacher targets for `scores` (`[samples, prototypes]`, no gradient): each row sums
/// to 1, each prototype receives `samples / prototypes` in total (after `iterations`).
///
/// The official code exponentiates `scores / temp` directly; the largest value is subtracted
/// first here, which the normalisation cancels exactly and which keeps a head without weight
/// normalisation (DINOv3) from overflowing f32.
pub fn sinkhorn_knopp(scores: Tensor<2>, temp: f64, iterations: usize) -> Tensor<2> {
    let [samples, prototypes] = scores.dims();
    let logits = scores.detach().div_scalar(temp);
    let top = logits.clone().max().reshape([1, 1]);
    let mut q = (logits - top).exp();
    q = q.clone() / q.clone().sum().reshape([1, 1]);
    for _ in 0..iterations {
        // Per prototype (the official K×B matrix's rows), then per sample (its columns).
        q = (q.clone() / q.clone().sum_dim(0)).div_scalar(prototypes as f64);
        q = (q.clone() / q.clone().sum_dim(1)).div_scalar(samples as f64);
    }
    q.mul_scalar(samples as f64)
}

/// [`sinkhorn_knopp`] over every rank's samples, as the official code runs it under
/// `torch.distributed`: the total and the per-prototype sums are all-reduced, the per-sample
/// normalisation stays local, and the sample count is the world's. `scores` is `None` on a
/// rank with no samples this step (no masked patch for iBOT): it still takes part in every
/// reduction, so that no rank waits for it. One process gives exactly [`sinkhorn_knopp`].
pub fn sinkhorn_knopp_world(
    scores: Option<Tensor<2>>,
    prototypes: usize,
    temp: f64,
    iterations: usize,
) -> Option<Tensor<2>> {
    if distributed::world().size == 1 {
        return scores.map(|s| sinkhorn_knopp(s, temp, iterations));
    }
    let local = scores.as_ref().map_or(0, |s| s.dims()[0]);
    let logits = scores.map(|s| s.detach().div_scalar(temp));
    let host = |t: Tensor<2>| -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 after conversion")
    };
    // Counts and the shift against overflow (a common one: the normalisation cancels it).
    let mut samples = [local as f32];
    distributed::all_reduce_sum(&mut samples, "the Sinkhorn-Knopp sample count");
    let mut top = [logits.as_ref().map_or(f32::NEG_INFINITY, |l| {
        host(l.clone().max().reshape([1, 1]))[0]
    })];
    distributed::all_reduce_max(&mut top, "the Sinkhorn-Knopp maximum");
    let mut q = logits.map(|l| (l.sub_scalar(top[0])).exp());
    let mut total = [q
        .as_ref()
        .map_or(0.0, |q| host(q.clone().sum().reshape([1, 1]))[0])];
    distributed::all_reduce_sum(&mut total, "the Sinkhorn-Knopp total");
    q = q.map(|q| q.div_scalar(total[0]));
    for _ in 0..iterations {
        // Per prototype over the world's samples, then per sample (local).
        let mut rows = q
            .as_ref()
            .map_or_else(|| vec![0.0; prototypes], |q| host(q.clone().sum_dim(0)));
        distributed::all_reduce_sum(&mut rows, "the Sinkhorn-Knopp prototype sums");
        q = q.map(|q| {
            let sums = Tensor::<2>::from_data(TensorData::new(rows, [1, prototypes]), &q.device());
            let q = (q / sums).div_scalar(prototypes as f64);
            (q.clone() / q.sum_dim(1)).div_scalar(samples[0] as f64)
        });
    }
    q.map(|q| q.mul_scalar(samples[0] as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn rows_sum_to_one_and_prototypes_are_balanced() {
        let device = Device::flex();
        let v: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32) * 0.1).collect();
        let q = sinkhorn_knopp(
            Tensor::from_data(TensorData::new(v, [6, 4]), &device),
            0.1,
            30,
        );
        let q: Vec<f32> = q.into_data().try_to_vec::<f32>().unwrap();
        for row in q.chunks(4) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        for k in 0..4 {
            let col: f32 = q.iter().skip(k).step_by(4).sum();
            assert!((col - 1.5).abs() < 1e-3, "{col}");
        }
    }
}
