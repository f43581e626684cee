//! The exact GELU and LayerNorm on the CPU, forward and backward, over every core.
//!
//! burn's CPU backend runs GELU as a scalar `erff` call per element on one thread, and under
//! autodiff LayerNorm is written as eight tracked element-wise ops (mean, subtract, square,
//! mean, add, sqrt, divide, scale), each single-threaded with a fresh buffer. These loops do
//! each in one pass per row block on the rayon pool, with a vectorisable `erf`.

use rayon::prelude::*;

use super::fastmath;

/// Elements per rayon task for element-wise loops: large enough to amortise scheduling.
const CHUNK: usize = 16 * 1024;

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `1 / √(2π)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `x · Φ(x)` (the exact GELU, `nn.GELU()` of the official code) of every element.
pub fn gelu(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                let (erf, _) = fastmath::erf_and_gauss(x * FRAC_1_SQRT_2);
                *y = 0.5 * x * (1.0 + erf);
            }
        });
    y
}

/// `grad · (Φ(x) + x φ(x))`, GELU's input gradient.
///
/// # Panics
/// When the two slices differ in length.
pub fn gelu_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    assert_eq!(
        x.len(),
        grad.len(),
        "GELU input and gradient lengths differ"
    );
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK)))
        .for_each(|(dx, (x, g))| {
            for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                // e^{-(x/√2)²} = e^{-x²/2}: erf's own Gaussian is φ's.
                let (erf, gauss) = fastmath::erf_and_gauss(x * FRAC_1_SQRT_2);
                *dx = g * (0.5 * (1.0 + erf) + x * FRAC_1_SQRT_2PI * gauss);
            }
        });
    dx
}

/// Rows per rayon task for a row width: about [`CHUNK`] elements.
fn rows_per_task(width: usize) -> usize {
    (CHUNK / width.max(1)).max(1)
}

/// Output of [`layer_norm`].
#[derive(Debug, Clone)]
pub struct LayerNormForward {
    /// `(x − mean) / √(var + eps) · gamma + beta`, same layout as the input.
    pub out: Vec<f32>,
    /// Per row, `1 / √(var + eps)` (the backward's only saved statistic besides the input).
    pub rstd: Vec<f32>,
}

/// LayerNorm over the last dim (`width`) of row-major `x`, with the biased variance as
/// `nn.LayerNorm`.
///
/// # Panics
/// When `x` is not whole rows or `gamma`/`beta` are not `width` long.
pub fn layer_norm(
    x: &[f32],
    width: usize,
    gamma: &[f32],
    beta: Option<&[f32]>,
    eps: f32,
) -> LayerNormForward {
    assert!(
        width > 0 && x.len().is_multiple_of(width),
        "LayerNorm input is not whole rows"
    );
    assert_eq!(gamma.len(), width, "LayerNorm gamma width");
    if let Some(b) = beta {
        assert_eq!(b.len(), width, "LayerNorm beta width");
    }
    let rows = x.len() / width;
    let mut out = vec![0.0f32; x.len()];
    let mut rstd = vec![0.0f32; rows];
    let per = rows_per_task(width);
    out.par_chunks_mut(per * width)
        .zip(rstd.par_chunks_mut(per))
        .zip(x.par_chunks(per * width))
        .for_each(|((out, rstd), x)| {
            for ((y, r), x) in out
                .chunks_exact_mut(width)
                .zip(rstd.iter_mut())
                .zip(x.chunks_exact(width))
            {
                let mean = fastmath::sum(x) / width as f32;
                let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
                *r = 1.0 / (var + eps).sqrt();
                match beta {
                    Some(beta) => {
                        for (((y, &v), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
                            *y = (v - mean) * *r * g + b;
                        }
                    }
                    None => {
                        for ((y, &v), &g) in y.iter_mut().zip(x).zip(gamma) {
                            *y = (v - mean) * *r * g;
                        }
                    }
                }
            }
        });
    LayerNormForward { out, rstd }
}

/// Gradients of [`layer_norm`]: `(d_x, d_gamma, d_beta)`.
///
/// # Panics
/// When the lengths disagree with `width` and `rstd`.
pub fn layer_norm_backward(
    x: &[f32],
    width: usize,
    gamma: &[f32],
    rstd: &[f32],
    grad: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = rstd.len();
    assert_eq!(x.len(), rows * width, "LayerNorm backward input length");
    assert_eq!(grad.len(), x.len(), "LayerNorm backward gradient length");
    assert_eq!(gamma.len(), width, "LayerNorm backward gamma width");
    let mut dx = vec![0.0f32; x.len()];
    let per = rows_per_task(width);
    // Each task returns its rows' share of d_gamma and d_beta, summed in f64 (thousands of
    // rows: an f32 running sum drifts by 1e-5 relative); the shares are summed after.
    let partials: Vec<(Vec<f64>, Vec<f64>)> = dx
        .par_chunks_mut(per * width)
        .zip(x.par_chunks(per * width).zip(grad.par_chunks(per * width)))
        .zip(rstd.par_chunks(per))
        .map(|((dx, (x, g)), rstd)| {
            let mut dgamma = vec![0.0f64; width];
            let mut dbeta = vec![0.0f64; width];
            let mut xhat = vec![0.0f32; width];
            for (((dx, x), g), &r) in dx
                .chunks_exact_mut(width)
                .zip(x.chunks_exact(width))
                .zip(g.chunks_exact(width))
                .zip(rstd)
            {
                let mean = fastmath::sum(x) / width as f32;
                let (mut mean_dxhat, mut mean_dxhat_xhat) = (0.0f32, 0.0f32);
                for ((((xh, &v), &gv), &gm), (dg, db)) in xhat
                    .iter_mut()
                    .zip(x)
                    .zip(g)
                    .zip(gamma)
                    .zip(dgamma.iter_mut().zip(dbeta.iter_mut()))
                {
                    *xh = (v - mean) * r;
                    *dg += (gv * *xh) as f64;
                    *db += gv as f64;
                    let dxh = gv * gm;
                    mean_dxhat += dxh;
                    mean_dxhat_xhat += dxh * *xh;
                }
                mean_dxhat /= width as f32;
                mean_dxhat_xhat /= width as f32;
                for (((d, &xh), &gv), &gm) in dx.iter_mut().zip(&xhat).zip(g).zip(gamma) {
                    *d = r * (gv * gm - mean_dxhat - xh * mean_dxhat_xhat);
                }
            }
            (dgamma, dbeta)
        })
        .collect();
    let mut dgamma = vec![0.0f64; width];
    let mut dbeta = vec![0.0f64; width];
    for (g, b) in partials {
        for (acc, v) in dgamma.iter_mut().zip(g) {
            *acc += v;
        }
        for (acc, v) in dbeta.iter_mut().zip(b) {
            *acc += v;
        }
    }
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (dx, to_f32(dgamma), to_f32(dbeta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gelu_f64(x: f64) -> f64 {
        // Φ through erfc's relation to the normal tail; std has no erf, so integrate:
        // Φ(x) = 0.5 + ∫₀ˣ φ, Simpson on 2,000 panels is exact to ~1e-13 here.
        let n = 2000;
        let h = x / n as f64;
        let phi = |t: f64| (-t * t / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let mut s = phi(0.0) + phi(x);
        for i in 1..n {
            s += phi(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        x * (0.5 + s * h / 3.0)
    }

    #[test]
    fn gelu_and_its_gradient_match_the_exact_formula() {
        let x: Vec<f32> = (0..40_000)
            .map(|i| (i as f32 - 20_000.0) / 2_500.0)
            .collect();
        let y = gelu(&x);
        for (&xi, &yi) in x.iter().zip(&y).step_by(97) {
            assert!(
                (yi as f64 - gelu_f64(xi as f64)).abs() < 1e-6 * (1.0 + xi.abs() as f64),
                "gelu({xi})"
            );
        }
        let g: Vec<f32> = x.iter().map(|v| 1.0 + v.sin()).collect();
        let dx = gelu_backward(&x, &g);
        for i in (0..x.len()).step_by(101) {
            let h = 1e-3;
            let numeric = (gelu_f64(x[i] as f64 + h) - gelu_f64(x[i] as f64 - h)) / (2.0 * h);
            assert!(
                (dx[i] as f64 - g[i] as f64 * numeric).abs() < 1e-5,
                "gelu'({})",
                x[i]
            );
        }
    }

    fn layer_norm_f64(x: &[f32], width: usize, gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f64> {
        x.chunks(width)
            .flat_map(|row| {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
                let var =
                    row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
                row.iter()
                    .zip(gamma)
                    .zip(beta)
                    .map(move |((&v, &g), &b)| {
                        (v as f64 - mean) / (var + eps).sqrt() * g as f64 + b as f64
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn layer_norm_and_its_gradients_match_float64_and_finite_differences() {
        let width = 7;
        let rows = 5_000; // several rayon tasks
        let x: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) / 3.0 + (i % 5) as f32)
            .collect();
        let gamma: Vec<f32> = (0..width).map(|i| 0.5 + i as f32 / 4.0).collect();
        let beta: Vec<f32> = (0..width).map(|i| i as f32 / 10.0 - 0.3).collect();
        let fwd = layer_norm(&x, width, &gamma, Some(&beta), 1e-6);
        for (a, b) in fwd
            .out
            .iter()
            .zip(layer_norm_f64(&x, width, &gamma, &beta, 1e-6))
        {
            assert!((*a as f64 - b).abs() < 2e-5, "{a} vs {b}");
        }
        let grad: Vec<f32> = (0..x.len())
            .map(|i| ((i * 13 % 7) as f32 - 3.0) / 3.0)
            .collect();
        let (dx, dgamma, dbeta) = layer_norm_backward(&x, width, &gamma, &fwd.rstd, &grad);
        let loss = |x: &[f32], gamma: &[f32], beta: &[f32]| -> f64 {
            layer_norm_f64(x, width, gamma, beta, 1e-6)
                .iter()
                .zip(&grad)
                .map(|(y, g)| y * *g as f64)
                .sum()
        };
        let h = 1e-2f32;
        for i in (0..x.len()).step_by(977) {
            let (mut p, mut m) = (x.clone(), x.clone());
            p[i] += h;
            m[i] -= h;
            let numeric = (loss(&p, &gamma, &beta) - loss(&m, &gamma, &beta)) / (2.0 * h as f64);
            assert!(
                (dx[i] as f64 - numeric).abs() < 1e-3,
                "dx[{i}] {} vs {numeric}",
                dx[i]
            );
        }
        for j in 0..width {
            let (mut p, mut m) = (gamma.clone(), gamma.clone());
            p[j] += h;
            m[j] -= h;
            let numeric = (loss(&x, &p, &beta) - loss(&x, &m, &beta)) / (2.0 * h as f64);
            assert!(
                (dgamma[j] as f64 - numeric).abs() < 1e-2 * (1.0 + numeric.abs()),
                "dgamma[{j}]"
            );
            let want_dbeta: f64 = grad.chunks(width).map(|r| r[j] as f64).sum();
            // A sum of 5,000 f32 terms: compare relative to the terms' total size.
            let size: f64 = grad.chunks(width).map(|r| (r[j] as f64).abs()).sum();
            assert!(
                (dbeta[j] as f64 - want_dbeta).abs() <= 1e-6 * size,
                "dbeta[{j}]: {} vs {want_dbeta}",
                dbeta[j]
            );
        }
        // No beta: the same normalisation without the shift.
        let no_beta = layer_norm(&x, width, &gamma, None, 1e-6);
        assert!((no_beta.out[3] + beta[3] - fwd.out[3]).abs() < 1e-6);
    }
}
