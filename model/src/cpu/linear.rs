//! The linear layer on the CPU, forward and backward: `x · W + b` and its three gradients, each
//! output allocated once and written by one product over the rayon pool.
//!
//! burn's CPU backend allocates a product's output as zeroed bytes and then copies it into an
//! aligned buffer (two fresh buffers and a copy per product), and adds the bias in another
//! pass over a third buffer. On the thin products of a DINO step (k = 192 against outputs of
//! 4160 × 768) that bookkeeping cost as much as the arithmetic. Here the bias is written
//! first and the product accumulates onto it.

use rayon::prelude::*;

use super::gemm::{MatMut, MatRef, matmul_pool};

/// Rows per rayon task when filling or summing rows.
const ROWS_PER_TASK: usize = 64;

/// The shape of a linear layer's product: `x: [rows, d_in]`, `weight: [d_in, d_out]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearShape {
    /// Rows of the input (every leading dim folded in).
    pub rows: usize,
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
}

/// `x · weight + bias` (row-major, `bias` broadcast over the rows).
///
/// # Panics
/// When a slice is shorter than `shape` says.
pub fn forward(x: &[f32], weight: &[f32], bias: Option<&[f32]>, shape: LinearShape) -> Vec<f32> {
    let LinearShape { rows, d_in, d_out } = shape;
    let mut out = vec![0.0f32; rows * d_out];
    if let Some(bias) = bias {
        assert_eq!(bias.len(), d_out, "bias length");
        if d_out > 0 {
            out.par_chunks_mut(d_out * ROWS_PER_TASK).for_each(|block| {
                for row in block.chunks_exact_mut(d_out) {
                    row.copy_from_slice(bias);
                }
            });
        }
    }
    matmul_pool(
        MatMut::rows(&mut out, 0, rows, d_out, d_out),
        MatRef::rows(x, 0, rows, d_in, d_in),
        MatRef::rows(weight, 0, d_in, d_out, d_out),
        1.0,
        bias.is_some(),
    );
    out
}

/// `grad · weightᵀ`, the input's gradient `[rows, d_in]`.
pub fn input_grad(grad: &[f32], weight: &[f32], shape: LinearShape) -> Vec<f32> {
    let LinearShape { rows, d_in, d_out } = shape;
    let mut dx = vec![0.0f32; rows * d_in];
    matmul_pool(
        MatMut::rows(&mut dx, 0, rows, d_in, d_in),
        MatRef::rows(grad, 0, rows, d_out, d_out),
        MatRef::rows(weight, 0, d_in, d_out, d_out).t(),
        1.0,
        false,
    );
    dx
}

/// `xᵀ · grad`, the weight's gradient `[d_in, d_out]`.
pub fn weight_grad(x: &[f32], grad: &[f32], shape: LinearShape) -> Vec<f32> {
    let LinearShape { rows, d_in, d_out } = shape;
    let mut dw = vec![0.0f32; d_in * d_out];
    matmul_pool(
        MatMut::rows(&mut dw, 0, d_in, d_out, d_out),
        MatRef::rows(x, 0, rows, d_in, d_in).t(),
        MatRef::rows(grad, 0, rows, d_out, d_out),
        1.0,
        false,
    );
    dw
}

/// The sum of `grad`'s rows, the bias's gradient `[d_out]`: partial sums of fixed row blocks
/// added in block order, so the result does not depend on the number of threads.
pub fn bias_grad(grad: &[f32], shape: LinearShape) -> Vec<f32> {
    let d_out = shape.d_out;
    let mut db = vec![0.0f32; d_out];
    if d_out == 0 {
        return db;
    }
    let grad = &grad[..shape.rows * d_out];
    let partials: Vec<Vec<f32>> = grad
        .par_chunks(d_out * ROWS_PER_TASK)
        .map(|block| {
            let mut acc = vec![0.0f32; d_out];
            for row in block.chunks_exact(d_out) {
                for (a, &g) in acc.iter_mut().zip(row) {
                    *a += g;
                }
            }
            acc
        })
        .collect();
    for part in &partials {
        for (d, &p) in db.iter_mut().zip(part) {
            *d += p;
        }
    }
    db
}

/// One product as a linear layer's pass computes it: `lhs: [m, k]` times `rhs: [k, n]` into a
/// fresh `[m, n]`, where `transposed` 1 reads `lhs` from a row-major `[k, m]` (the weight
/// gradient's `xᵀ`) and 2 reads `rhs` from a row-major `[n, k]` (the input gradient's `Wᵀ`).
/// For `dino bench --mode matmul`, which times the step's products one by one.
///
/// # Panics
/// When a slice is shorter than the shape says or `transposed` is above 2.
pub fn product(
    lhs: &[f32],
    rhs: &[f32],
    (m, k, n): (usize, usize, usize),
    transposed: u8,
) -> Vec<f32> {
    let a = match transposed {
        1 => MatRef::rows(lhs, 0, k, m, m).t(),
        0 | 2 => MatRef::rows(lhs, 0, m, k, k),
        t => panic!("transposed is 0, 1 or 2, not {t}"),
    };
    let b = match transposed {
        2 => MatRef::rows(rhs, 0, n, k, k).t(),
        _ => MatRef::rows(rhs, 0, k, n, n),
    };
    let mut out = vec![0.0f32; m * n];
    matmul_pool(MatMut::rows(&mut out, 0, m, n, n), a, b, 1.0, false);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 37 + seed * 11) % 101) as f32 - 50.0) / 25.0)
            .collect()
    }

    #[test]
    fn forward_and_gradients_match_plain_loops() {
        // 150 rows: three row blocks, the last one partial.
        let shape = LinearShape {
            rows: 150,
            d_in: 7,
            d_out: 5,
        };
        let (x, w, b, g) = (
            data(150 * 7, 1),
            data(7 * 5, 2),
            data(5, 3),
            data(150 * 5, 4),
        );
        let y = forward(&x, &w, Some(&b), shape);
        let y0 = forward(&x, &w, None, shape);
        let (dx, dw, db) = (
            input_grad(&g, &w, shape),
            weight_grad(&x, &g, shape),
            bias_grad(&g, shape),
        );
        let close = |a: f32, b: f32, what: &str| {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{what}: {a} vs {b}"
            )
        };
        for r in 0..150 {
            for o in 0..5 {
                let s: f32 = (0..7).map(|i| x[r * 7 + i] * w[i * 5 + o]).sum();
                close(y[r * 5 + o], s + b[o], "y");
                close(y0[r * 5 + o], s, "y without bias");
            }
            for i in 0..7 {
                let s: f32 = (0..5).map(|o| g[r * 5 + o] * w[i * 5 + o]).sum();
                close(dx[r * 7 + i], s, "dx");
            }
        }
        for i in 0..7 {
            for o in 0..5 {
                let s: f32 = (0..150).map(|r| x[r * 7 + i] * g[r * 5 + o]).sum();
                close(dw[i * 5 + o], s, "dw");
            }
        }
        for o in 0..5 {
            close(db[o], (0..150).map(|r| g[r * 5 + o]).sum(), "db");
        }
        // The bench's products are the same three passes.
        assert_eq!(product(&x, &w, (150, 7, 5), 0), y0);
        assert_eq!(product(&g, &w, (150, 5, 7), 2), dx);
        assert_eq!(product(&x, &g, (7, 150, 5), 1), dw);
    }
}
