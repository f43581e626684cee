//! The KoLeo regulariser of DINOv2 (`loss/koleo_loss.py` `KoLeoLoss`, Sablayrolles et al. 2018):
//! pushes each pre-head CLS token away from its nearest neighbour in the batch, spreading the
//! features over the sphere. The official loop applies it to each global-crop chunk of the
//! student separately (a crop's nearest neighbour is never its own other view), summed.

use burn::tensor::{Bool, Tensor};

/// `F.normalize`'s and `PairwiseDistance`'s epsilon in the official loss.
const EPS: f64 = 1e-8;

/// KoLeo loss of `x` (`[B, D]`, B ≥ 2), `[1]`: `-mean_i log(‖x̂_i − x̂_nn(i) + ε‖ + ε)` with
/// `x̂` L2-normalised and `nn(i)` the row of largest inner product other than `i`.
pub fn koleo_loss(x: Tensor<2>) -> Tensor<1> {
    let [rows, _] = x.dims();
    let device = x.device();
    // max(‖x‖, eps) as √max(‖x‖², eps²): a zero row then has a finite gradient, as in PyTorch.
    let norm = x.clone().square().sum_dim(1).clamp_min(EPS * EPS).sqrt();
    let unit = x / norm;
    // The neighbour search is not differentiated (`torch.max` indices) and stays on the
    // device: no read-back each step.
    let dots = unit
        .clone()
        .detach()
        .matmul(unit.clone().detach().transpose());
    let diagonal = Tensor::<2, Bool>::diag_mask([rows, rows], 0, &device).bool_not();
    let idx = dots.mask_fill(diagonal, -1.0).argmax(1).reshape([rows]);
    let other = unit.clone().select(0, idx);
    // torch.pairwise_distance adds eps to the difference before the norm.
    let dist = (unit - other).add_scalar(EPS).square().sum_dim(1).sqrt();
    dist.add_scalar(EPS).log().mean().neg().reshape([1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn two_orthogonal_points_are_sqrt2_apart() {
        let device = Device::flex();
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![3.0f32, 0.0, 0.0, 0.5], [2, 2]),
            &device,
        );
        let got = koleo_loss(x).into_data().try_to_vec::<f32>().unwrap()[0] as f64;
        let d = ((1.0 + EPS).powi(2) + (-1.0 + EPS).powi(2)).sqrt();
        assert!((got + (d + EPS).ln()).abs() < 1e-6, "{got}");
    }
}
