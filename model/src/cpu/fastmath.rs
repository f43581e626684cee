//! `exp` and `erf` for f32 without branches or library calls, so that loops over slices
//! vectorise (libm's `expf`/`erff` are scalar calls: the exact GELU spent ~11 % of a CPU
//! training step in `erff`).

/// `e^x` to about 1 ulp (Cephes' `expf` polynomial): `x = n ln 2 + r`, `|r| ≤ ln 2 / 2`,
/// `e^x = 2^n e^r`. Below −87.3 the result flushes towards the smallest normal (softmax
/// weights that small are zero to f32 anyway); above 88.3 it saturates near 2.1e38.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer in vector registers.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    er * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `erf(x)` and `e^{-x²}` together (GELU's backward needs both), after Abramowitz & Stegun
/// 7.1.26: absolute error ≤ 1.5e-7, the formula PyTorch's vectorised CPU `erf` uses.
#[inline(always)]
pub fn erf_and_gauss(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = ((((A5 * t + A4) * t + A3) * t + A2) * t + A1) * t;
    let gauss = exp(-a * a);
    let y = 1.0 - poly * gauss;
    (y.copysign(x), gauss)
}

/// Independent partial results per reduction: one running f32 is a serial dependency that
/// LLVM must keep in order, which also keeps everything else in the loop scalar.
const LANES: usize = 16;

/// `Σ xs`, in [`LANES`] partial sums so that the loop vectorises.
#[inline]
pub fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `Σ a·b`, in [`LANES`] partial sums so that the loop vectorises.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of slices of different lengths");
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((acc, x), y) in acc.iter_mut().zip(x).zip(y) {
            *acc += x * y;
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// The largest element (−∞ for an empty slice), in [`LANES`] partial maxima.
#[inline]
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = a.max(x);
        }
    }
    acc.iter().copied().fold(rest, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_reductions_agree_with_the_plain_ones() {
        for n in [0, 1, 15, 16, 17, 100, 901] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 3.0)
                .collect();
            let want_sum: f64 = a.iter().map(|&x| x as f64).sum();
            let want_dot: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let size: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| (x as f64 * y as f64).abs())
                .sum();
            assert!(
                (sum(&a) as f64 - want_sum).abs() <= 1e-5 * (1.0 + want_sum.abs()),
                "{n}"
            );
            assert!(
                (dot(&a, &b) as f64 - want_dot).abs() <= 1e-5 * (1.0 + size),
                "{n}"
            );
            let want_max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&a), want_max, "{n}");
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0.0f32;
        for i in -8700..=8800 {
            let x = i as f32 / 100.0 + 0.003;
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn erf_is_within_the_published_bound() {
        for i in -600..=600 {
            let x = i as f32 / 100.0;
            let (e, g) = erf_and_gauss(x);
            let want = libm_erf(x as f64);
            assert!(
                (e as f64 - want).abs() < 3e-7,
                "erf({x}) = {e}, want {want}"
            );
            assert!((g - (-x * x).exp()).abs() < 1e-7);
        }
    }

    /// A high-precision reference: the Maclaurin series in f64 for |x| ≤ 3, then 1 − erfc's
    /// continued fraction (converges fast there).
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let v = if a <= 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (a + f);
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
        };
        v.copysign(x)
    }
}
