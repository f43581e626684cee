//! Multi-head self-attention on the CPU, forward and backward, straight from the packed `qkv`
//! projection: one rayon task per image runs every head's products on its own core, and the
//! backward recomputes the softmax from the saved log-sum-exp instead of keeping `[N, N]`
//! weights per head.
//!
//! Why not burn's ops: under autodiff burn writes attention as reshape → permute → matmul →
//! softmax → matmul, each a tracked op with its own buffers, and its backward turns every
//! (image, head) into several 65×64×65 products plus copies of the strided q, k and v. In the
//! README's training configuration that was about a third of a CPU step for 4 % of its FLOPs.

use rayon::prelude::*;

use super::fastmath;
use super::gemm::{MatMut, MatRef, matmul};

/// The sizes of a packed `qkv` tensor `[batch, tokens, 3 · heads · head_dim]` (q, k, v in that
/// order along the last dim, heads inside each, as `qkv.reshape(B, N, 3, H, d)` in the
/// official code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QkvShape {
    /// Images.
    pub batch: usize,
    /// Tokens per image.
    pub tokens: usize,
    /// Attention heads.
    pub heads: usize,
    /// Channels per head.
    pub head_dim: usize,
}

impl QkvShape {
    /// The token width, `heads · head_dim`.
    pub fn dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Elements of the packed `qkv` tensor.
    pub fn qkv_len(&self) -> usize {
        self.batch * self.tokens * 3 * self.dim()
    }

    /// Panics unless `qkv` holds [`QkvShape::qkv_len`] elements.
    fn check_qkv(&self, qkv: &[f32]) {
        assert_eq!(
            qkv.len(),
            self.qkv_len(),
            "qkv length does not match its shape"
        );
    }

    /// The official scale, `head_dim^-0.5`.
    pub fn scale(&self) -> f32 {
        (self.head_dim as f32).powf(-0.5)
    }
}

/// Output of [`forward`].
#[derive(Debug, Clone)]
pub struct Forward {
    /// Heads merged back to tokens, `[batch, tokens, heads · head_dim]`.
    pub out: Vec<f32>,
    /// Per row of every head, `max + ln Σ exp`, `[batch, heads, tokens]` (empty unless asked):
    /// all the backward needs to rebuild the softmax.
    pub lse: Vec<f32>,
}

/// Query rows per task: about 128, so that one image of many tokens (the viewer's single
/// photo) still spreads over every core, while training's short sequences stay one task per
/// (image, head).
fn row_block(tokens: usize) -> usize {
    let blocks = tokens.div_ceil(128).max(1);
    tokens.div_ceil(blocks).max(1)
}

/// `softmax(q kᵀ · scale) v` for every image and head of `qkv`.
///
/// # Panics
/// When `qkv` does not hold `shape.qkv_len()` elements.
pub fn forward(qkv: &[f32], shape: QkvShape, keep_lse: bool) -> Forward {
    shape.check_qkv(qkv);
    let QkvShape {
        batch,
        tokens: n,
        heads,
        head_dim: hd,
    } = shape;
    let dim = shape.dim();
    let mut lse = vec![0.0f32; batch * heads * n];
    if batch == 0 || n == 0 || dim == 0 {
        return Forward {
            out: vec![0.0; batch * n * dim],
            lse: if keep_lse { lse } else { Vec::new() },
        };
    }
    // Each (image, head) writes its own [tokens, head_dim] block, merged into tokens after.
    let mut per_head = vec![0.0f32; batch * heads * n * hd];
    let rb = row_block(n);
    per_head
        .par_chunks_mut(n * hd)
        .zip(lse.par_chunks_mut(n))
        .enumerate()
        .for_each(|(bh, (out_bh, lse_bh))| {
            let (b, h) = (bh / heads, bh % heads);
            let qkv_b = &qkv[b * n * 3 * dim..(b + 1) * n * 3 * dim];
            let k = MatRef::rows(qkv_b, dim + h * hd, n, hd, 3 * dim);
            let v = MatRef::rows(qkv_b, 2 * dim + h * hd, n, hd, 3 * dim);
            out_bh
                .par_chunks_mut(rb * hd)
                .zip(lse_bh.par_chunks_mut(rb))
                .enumerate()
                .for_each(|(blk, (out_rows, lse_rows))| {
                    let rows = lse_rows.len();
                    let q = MatRef::rows(qkv_b, blk * rb * 3 * dim + h * hd, rows, hd, 3 * dim);
                    let mut p = vec![0.0f32; rows * n];
                    matmul(
                        MatMut::rows(&mut p, 0, rows, n, n),
                        q,
                        k.t(),
                        shape.scale(),
                        false,
                    );
                    for (row, l) in p.chunks_exact_mut(n).zip(lse_rows.iter_mut()) {
                        *l = softmax_row(row);
                    }
                    matmul(
                        MatMut::rows(out_rows, 0, rows, hd, hd),
                        MatRef::rows(&p, 0, rows, n, n),
                        v,
                        1.0,
                        false,
                    );
                });
        });
    let mut out = vec![0.0f32; batch * n * dim];
    out.par_chunks_mut(n * dim)
        .enumerate()
        .for_each(|(b, out_b)| {
            for h in 0..heads {
                let src = &per_head[(b * heads + h) * n * hd..(b * heads + h + 1) * n * hd];
                for (row, src_row) in out_b.chunks_exact_mut(dim).zip(src.chunks_exact(hd)) {
                    row[h * hd..(h + 1) * hd].copy_from_slice(src_row);
                }
            }
        });
    Forward {
        out,
        lse: if keep_lse { lse } else { Vec::new() },
    }
}

/// In place `row ← softmax(row)`; returns `max + ln Σ exp(row − max)`.
fn softmax_row(row: &mut [f32]) -> f32 {
    let max = fastmath::max(row);
    // Exponentials and their sum in two passes: a running sum in the same loop keeps the
    // exponentials scalar.
    for x in row.iter_mut() {
        *x = fastmath::exp(*x - max);
    }
    let sum = fastmath::sum(row);
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
    max + sum.ln()
}

/// The gradient of [`forward`]'s output with respect to `qkv`, packed the same way.
///
/// `lse` is [`Forward::lse`] of the same `qkv`; `grad_out` is `[batch, tokens, heads · head_dim]`.
///
/// # Panics
/// When a slice's length does not match `shape`.
pub fn backward(qkv: &[f32], lse: &[f32], grad_out: &[f32], shape: QkvShape) -> Vec<f32> {
    let QkvShape {
        batch,
        tokens: n,
        heads,
        head_dim: hd,
    } = shape;
    let dim = shape.dim();
    shape.check_qkv(qkv);
    assert_eq!(
        lse.len(),
        batch * heads * n,
        "lse length does not match the shape"
    );
    assert_eq!(
        grad_out.len(),
        batch * n * dim,
        "output gradient length does not match"
    );
    if batch == 0 || n == 0 || dim == 0 {
        return vec![0.0f32; qkv.len()];
    }
    let scale = shape.scale();
    // Each (image, head) writes its dq, dk, dv as three [tokens, head_dim] blocks; they are
    // packed back into the qkv layout after.
    let mut per_head = vec![0.0f32; batch * heads * 3 * n * hd];
    per_head
        .par_chunks_mut(3 * n * hd)
        .enumerate()
        .for_each(|(bh, d_bh)| {
            let (b, h) = (bh / heads, bh % heads);
            let qkv_b = &qkv[b * n * 3 * dim..(b + 1) * n * 3 * dim];
            let go = &grad_out[b * n * dim..(b + 1) * n * dim];
            let q = MatRef::rows(qkv_b, h * hd, n, hd, 3 * dim);
            let k = MatRef::rows(qkv_b, dim + h * hd, n, hd, 3 * dim);
            let v = MatRef::rows(qkv_b, 2 * dim + h * hd, n, hd, 3 * dim);
            let d_out = MatRef::rows(go, h * hd, n, hd, dim);
            let mut p = vec![0.0f32; n * n];
            let mut dp = vec![0.0f32; n * n];
            // P from the saved log-sum-exp: one product, no [N, N] kept between passes.
            matmul(MatMut::rows(&mut p, 0, n, n, n), q, k.t(), scale, false);
            let lse_h = &lse[bh * n..(bh + 1) * n];
            for (row, &l) in p.chunks_exact_mut(n).zip(lse_h) {
                for x in row.iter_mut() {
                    *x = fastmath::exp(*x - l);
                }
            }
            let p_ref = MatRef::rows(&p, 0, n, n, n);
            // dV = Pᵀ dO
            matmul(
                MatMut::rows(d_bh, 2 * n * hd, n, hd, hd),
                p_ref.t(),
                d_out,
                1.0,
                false,
            );
            // dP = dO Vᵀ, then dS = P ⊙ (dP − rowsum(P ⊙ dP)).
            matmul(MatMut::rows(&mut dp, 0, n, n, n), d_out, v.t(), 1.0, false);
            for (dp_row, p_row) in dp.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
                let delta = fastmath::dot(dp_row, p_row);
                for (d, &pv) in dp_row.iter_mut().zip(p_row) {
                    *d = pv * (*d - delta);
                }
            }
            let ds = MatRef::rows(&dp, 0, n, n, n);
            // dQ = dS K · scale, dK = dSᵀ Q · scale (the logits' scale).
            matmul(MatMut::rows(d_bh, 0, n, hd, hd), ds, k, scale, false);
            matmul(
                MatMut::rows(d_bh, n * hd, n, hd, hd),
                ds.t(),
                q,
                scale,
                false,
            );
        });
    let mut grad_qkv = vec![0.0f32; qkv.len()];
    grad_qkv
        .par_chunks_mut(n * 3 * dim)
        .enumerate()
        .for_each(|(b, dqkv)| {
            for h in 0..heads {
                for part in 0..3 {
                    let start = ((b * heads + h) * 3 + part) * n * hd;
                    let src = &per_head[start..start + n * hd];
                    for (row, src_row) in dqkv.chunks_exact_mut(3 * dim).zip(src.chunks_exact(hd)) {
                        row[part * dim + h * hd..part * dim + (h + 1) * hd]
                            .copy_from_slice(src_row);
                    }
                }
            }
        });
    grad_qkv
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook formula in f64, one (image, head) at a time.
    fn reference(qkv: &[f32], s: QkvShape) -> Vec<f64> {
        let (n, d, hd) = (s.tokens, s.dim(), s.head_dim);
        let at = |b: usize, i: usize, c: usize| qkv[(b * n + i) * 3 * d + c] as f64;
        let mut out = vec![0.0; s.batch * n * d];
        for b in 0..s.batch {
            for h in 0..s.heads {
                for i in 0..n {
                    let logits: Vec<f64> = (0..n)
                        .map(|j| {
                            (0..hd)
                                .map(|c| at(b, i, h * hd + c) * at(b, j, d + h * hd + c))
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = logits.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..hd {
                        out[(b * n + i) * d + h * hd + c] = (0..n)
                            .map(|j| e[j] / z * at(b, j, 2 * d + h * hd + c))
                            .sum();
                    }
                }
            }
        }
        out
    }

    fn sample(s: QkvShape, seed: u32) -> Vec<f32> {
        (0..s.qkv_len())
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (x % 2000) as f32 / 500.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn forward_matches_the_textbook_formula() {
        let s = QkvShape {
            batch: 3,
            tokens: 17,
            heads: 3,
            head_dim: 8,
        };
        let qkv = sample(s, 1);
        let got = forward(&qkv, s, true);
        for (x, y) in got.out.iter().zip(reference(&qkv, s)) {
            assert!((*x as f64 - y).abs() < 2e-5, "{x} vs {y}");
        }
        assert_eq!(got.lse.len(), 3 * 3 * 17);
        assert!(forward(&qkv, s, false).lse.is_empty());
        // One image of many tokens: the query rows are split over several tasks.
        let s = QkvShape {
            batch: 1,
            tokens: 300,
            heads: 2,
            head_dim: 4,
        };
        assert!(row_block(300) < 300);
        let qkv = sample(s, 3);
        for (x, y) in forward(&qkv, s, false).out.iter().zip(reference(&qkv, s)) {
            assert!((*x as f64 - y).abs() < 2e-5, "{x} vs {y}");
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let s = QkvShape {
            batch: 2,
            tokens: 5,
            heads: 2,
            head_dim: 3,
        };
        let qkv = sample(s, 7);
        let weights: Vec<f64> = (0..s.batch * s.tokens * s.dim())
            .map(|i| ((i * 7 % 11) as f64 - 5.0) / 5.0)
            .collect();
        let loss = |x: &[f32]| -> f64 {
            reference(x, s)
                .iter()
                .zip(&weights)
                .map(|(o, w)| o * w)
                .sum()
        };
        let fwd = forward(&qkv, s, true);
        let grad_out: Vec<f32> = weights.iter().map(|w| *w as f32).collect();
        let grad = backward(&qkv, &fwd.lse, &grad_out, s);
        for i in 0..qkv.len() {
            let (mut plus, mut minus) = (qkv.clone(), qkv.clone());
            plus[i] += 1e-2;
            minus[i] -= 1e-2;
            let numeric = (loss(&plus) - loss(&minus)) / 2e-2;
            assert!(
                (grad[i] as f64 - numeric).abs() < 2e-3,
                "d/dqkv[{i}]: {} vs {numeric}",
                grad[i]
            );
        }
    }
}
