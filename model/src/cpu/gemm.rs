//! Small f32 matrix products on strided slices, for the CPU kernels of [`super::fused`].
//!
//! The `gemm` crate (the one burn's CPU backend runs on) has the fastest micro-kernels we can
//! reach from safe code, but its entry point takes raw pointers and strides. This module is the
//! only place in the workspace that calls it: every view is checked to lie inside its slice
//! before the call, so the callers stay safe code.
#![allow(unsafe_code)]

/// A read-only matrix inside a slice: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    /// The elements the view reads from.
    pub data: &'a [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance between two rows, in elements.
    pub row_stride: usize,
    /// Distance between two columns, in elements.
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows × cols` block starting at `offset`, rows `row_stride` apart.
    pub fn rows(
        data: &'a [f32],
        offset: usize,
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Self {
        MatRef {
            data: &data[offset.min(data.len())..],
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose, without moving any element.
    pub fn t(self) -> Self {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    fn check(&self) {
        let fits = fits(
            self.data.len(),
            self.rows,
            self.cols,
            self.row_stride,
            self.col_stride,
        );
        assert!(fits, "view reaches past its slice");
    }
}

/// A writable matrix inside a slice, laid out as [`MatRef`].
#[derive(Debug)]
pub struct MatMut<'a> {
    /// The elements the view writes to.
    pub data: &'a mut [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance between two rows, in elements.
    pub row_stride: usize,
    /// Distance between two columns, in elements.
    pub col_stride: usize,
}

impl<'a> MatMut<'a> {
    /// The same elements, read-only.
    fn view(&self) -> MatRef<'_> {
        MatRef {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }

    /// A row-major `rows × cols` block starting at `offset`, rows `row_stride` apart.
    pub fn rows(
        data: &'a mut [f32],
        offset: usize,
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Self {
        let start = offset.min(data.len());
        MatMut {
            data: &mut data[start..],
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }
}

/// Whether the last element of a `rows × cols` view with these strides lies inside `len`.
fn fits(len: usize, rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    let last = (rows - 1).checked_mul(row_stride).and_then(|r| {
        (cols - 1)
            .checked_mul(col_stride)
            .and_then(|c| r.checked_add(c))
    });
    matches!(last, Some(last) if last < len)
}

/// `dst = scale · lhs · rhs`, or `dst += scale · lhs · rhs` when `accumulate`, on one thread
/// (the kernels run one image per rayon task, so each product stays on its core).
///
/// # Panics
/// When the shapes disagree or a view reaches past its slice.
pub fn matmul(dst: MatMut<'_>, lhs: MatRef<'_>, rhs: MatRef<'_>, scale: f32, accumulate: bool) {
    product(dst, lhs, rhs, scale, accumulate, false);
}

/// [`matmul`] split over the rayon pool when the product is large enough to pay for it (the
/// threshold burn's CPU backend uses): for a whole layer's rows at once.
///
/// # Panics
/// When the shapes disagree or a view reaches past its slice.
pub fn matmul_pool(
    dst: MatMut<'_>,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    scale: f32,
    accumulate: bool,
) {
    let work = dst.rows.saturating_mul(dst.cols).saturating_mul(lhs.cols);
    let parallel = work >= POOL_THRESHOLD && rayon::current_num_threads() > 1;
    product(dst, lhs, rhs, scale, accumulate, parallel);
}

/// Multiply-adds below which a product stays on one core (192³, as burn-flex).
const POOL_THRESHOLD: usize = 192 * 192 * 192;

fn product(
    dst: MatMut<'_>,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    scale: f32,
    accumulate: bool,
    parallel: bool,
) {
    assert_eq!(lhs.rows, dst.rows, "lhs rows and dst rows differ");
    assert_eq!(rhs.cols, dst.cols, "rhs cols and dst cols differ");
    assert_eq!(lhs.cols, rhs.rows, "inner dimensions differ");
    lhs.check();
    rhs.check();
    dst.view().check();
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.data[i * dst.row_stride + j * dst.col_stride] = 0.0;
                }
            }
        }
        return;
    }
    let stride = |s: usize| isize::try_from(s).expect("stride fits in isize");
    // SAFETY: the three views were checked above to lie inside their slices, `dst` is borrowed
    // mutably so it cannot alias `lhs` or `rhs`, and gemm reads and writes only the m×k, k×n
    // and m×n elements those strides address.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            stride(dst.col_stride),
            stride(dst.row_stride),
            accumulate,
            lhs.data.as_ptr(),
            stride(lhs.col_stride),
            stride(lhs.row_stride),
            rhs.data.as_ptr(),
            stride(rhs.col_stride),
            stride(rhs.row_stride),
            1.0,
            scale,
            false,
            false,
            false,
            if parallel {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: MatRef, b: MatRef) -> Vec<f32> {
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let mut s = 0.0;
                for l in 0..a.cols {
                    s += a.data[i * a.row_stride + l * a.col_stride]
                        * b.data[l * b.row_stride + j * b.col_stride];
                }
                out[i * b.cols + j] = s;
            }
        }
        out
    }

    #[test]
    fn strided_and_transposed_products_match_a_naive_loop() {
        let data: Vec<f32> = (0..600)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        // A 5×7 block inside rows of 20, and B = the transpose of a 6×7 block.
        let a = MatRef::rows(&data, 3, 5, 7, 20);
        let b = MatRef::rows(&data, 200, 6, 7, 11).t();
        let want = naive(a, b);
        let mut out = vec![1.0; 5 * 6];
        matmul(MatMut::rows(&mut out, 0, 5, 6, 6), a, b, 1.0, false);
        for (x, y) in out.iter().zip(&want) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
        // Accumulating a scaled product on top.
        matmul(MatMut::rows(&mut out, 0, 5, 6, 6), a, b, 0.5, true);
        for (x, y) in out.iter().zip(&want) {
            assert!((x - 1.5 * y).abs() < 1e-4, "{x} vs {}", 1.5 * y);
        }
    }

    #[test]
    #[should_panic]
    fn a_view_past_its_slice_is_refused() {
        let data = vec![0.0f32; 10];
        let mut out = vec![0.0f32; 4];
        let a = MatRef::rows(&data, 0, 2, 3, 5);
        let b = MatRef::rows(&data, 4, 3, 2, 2); // last element at 4 + 2·2 + 1 = 9: fits
        matmul(MatMut::rows(&mut out, 0, 2, 2, 2), a, b, 1.0, false);
        let too_far = MatRef::rows(&data, 6, 3, 2, 2); // last at 6 + 5 = 11 > 9
        matmul(MatMut::rows(&mut out, 0, 2, 2, 2), a, too_far, 1.0, false);
    }
}
