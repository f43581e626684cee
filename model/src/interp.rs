//! Resampling as matrices, with PyTorch's exact coordinate conventions.
//!
//! The official position-embedding interpolation calls `F.interpolate(mode='bicubic',
//! scale_factor=...)`. Bicubic resampling is linear, so along each axis it is a matrix
//! `[out, in]`; applying the two matrices keeps the operation differentiable on every
//! backend without a dedicated kernel, and lets tests compare against PyTorch numbers.

/// PyTorch's cubic convolution coefficient (`A = -0.75` in `UpSample.h`).
const CUBIC_A: f64 = -0.75;

fn cubic_near(x: f64) -> f64 {
    ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0
}

fn cubic_far(x: f64) -> f64 {
    ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A
}

/// The `[out_len, in_len]` row-major matrix of 1-D bicubic resampling with
/// `align_corners=False`, where `scale` is the factor PyTorch was given
/// (source coordinate `(dst + 0.5) / scale - 0.5`, border indices clamped).
pub fn bicubic_matrix(in_len: usize, out_len: usize, scale: f64) -> Vec<f32> {
    let mut m = vec![0.0f64; out_len * in_len];
    let ratio = 1.0 / scale;
    for dst in 0..out_len {
        let real = ratio * (dst as f64 + 0.5) - 0.5;
        let base = real.floor();
        let t = real - base;
        let weights = [
            cubic_far(t + 1.0),
            cubic_near(t),
            cubic_near(1.0 - t),
            cubic_far(2.0 - t),
        ];
        for (k, w) in weights.iter().enumerate() {
            let idx = (base as i64 - 1 + k as i64).clamp(0, in_len as i64 - 1) as usize;
            m[dst * in_len + idx] += w;
        }
    }
    m.into_iter().map(|v| v as f32).collect()
}

/// PyTorch's antialiasing bicubic filter (`a = -0.5`, `aa_filter` in `UpSampleKernel.cpp`).
fn aa_cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The `[out_len, in_len]` matrix of `interpolate(size=out_len, mode="bicubic",
/// antialias=True, align_corners=False)` along one axis (PyTorch's separable AA path,
/// `_compute_indices_min_size_weights_aa`): the filter widens by the scale when shrinking,
/// taps are cut at the borders and renormalised, never clamped.
pub fn antialias_bicubic_matrix(in_len: usize, out_len: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; out_len * in_len];
    let scale = in_len as f64 / out_len as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    for i in 0..out_len {
        let center = scale * (i as f64 + 0.5);
        // `static_cast<int64_t>` truncates toward zero before the clamp at 0.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_len as i64) as usize;
        let w: Vec<f64> = (xmin..xmax)
            .map(|j| aa_cubic((j as f64 - center + 0.5) * inv))
            .collect();
        let total: f64 = w.iter().sum();
        for (k, wk) in w.iter().enumerate() {
            m[i * in_len + xmin + k] = if total != 0.0 {
                (wk / total) as f32
            } else {
                0.0
            };
        }
    }
    m
}

/// The `[out_len, in_len]` matrix of 1-D bilinear resampling with `align_corners=False`
/// (the `size=` convention: `scale = out / in`), used to upsample attention maps.
pub fn bilinear_matrix(in_len: usize, out_len: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; out_len * in_len];
    let ratio = in_len as f64 / out_len as f64;
    for dst in 0..out_len {
        let real = (ratio * (dst as f64 + 0.5) - 0.5).max(0.0);
        let i0 = (real.floor() as usize).min(in_len - 1);
        let i1 = (i0 + 1).min(in_len - 1);
        let t = (real - i0 as f64) as f32;
        m[dst * in_len + i0] += 1.0 - t;
        m[dst * in_len + i1] += t;
    }
    m
}

/// Output sizes and scale factors the official `interpolate_pos_encoding` uses for an
/// image of `h × w` pixels: `(rows, cols, row_scale, col_scale)`.
///
/// The official code adds 0.1 to the target grid "to avoid floating point error"
/// (facebookresearch/dino issue #8); the scale factors keep that offset, so they
/// are part of the numbers we must reproduce.
pub fn pos_embed_scales(
    grid: usize,
    h_patches: usize,
    w_patches: usize,
) -> (usize, usize, f64, f64) {
    let n = grid as f64;
    let row_scale = (h_patches as f64 + 0.1) / n;
    let col_scale = (w_patches as f64 + 0.1) / n;
    let rows = (n * row_scale).floor() as usize;
    let cols = (n * col_scale).floor() as usize;
    (rows, cols, row_scale, col_scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_rows_sum_to_one() {
        for (i, o) in [(14, 6), (14, 30), (7, 7), (2, 9)] {
            let (_, _, s, _) = pos_embed_scales(i, o, o);
            let m = bicubic_matrix(i, o, s);
            for r in 0..o {
                let sum: f32 = m[r * i..(r + 1) * i].iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "row {r} sums to {sum}");
            }
        }
    }

    #[test]
    fn antialias_rows_sum_to_one_and_identity_is_exact() {
        for (i, o) in [(4, 3), (4, 5), (37, 20), (37, 64), (2, 9)] {
            let m = antialias_bicubic_matrix(i, o);
            for r in 0..o {
                let sum: f32 = m[r * i..(r + 1) * i].iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{i}->{o} row {r} sums to {sum}");
            }
        }
        let m = antialias_bicubic_matrix(5, 5);
        for r in 0..5 {
            for c in 0..5 {
                assert!((m[r * 5 + c] - if r == c { 1.0 } else { 0.0 }).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn scales_reproduce_the_grid() {
        let (r, c, _, _) = pos_embed_scales(14, 30, 20);
        assert_eq!((r, c), (30, 20));
    }

    #[test]
    fn bilinear_identity_when_sizes_match() {
        let m = bilinear_matrix(4, 4);
        for r in 0..4 {
            for c in 0..4 {
                assert_eq!(m[r * 4 + c], if r == c { 1.0 } else { 0.0 });
            }
        }
    }
}
