//! Pillow's `Image.resize(size, BICUBIC or BILINEAR)` on 8-bit RGB, bit for bit: the
//! evaluation transforms of the official code (`Resize(256, interpolation=3)`,
//! `RandomResizedCrop(224)`) run it, and a pixel off by one moves a feature by about 1e-3,
//! more than fidelity tests allow.
//!
//! Pillow (`libImaging/Resample.c`) resamples with its kernel (the a = −0.5 cubic, or the
//! triangle) widened by the scale when shrinking, normalises each output pixel's weights to sum to one, rounds them to
//! 22-bit fixed point, and runs the horizontal pass, rounded to bytes, before the vertical.

use image::RgbImage;

/// Fraction bits of Pillow's 8-bit fixed-point weights (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Pillow's resampling kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilFilter {
    /// `Image.BILINEAR` (torchvision's default `InterpolationMode.BILINEAR`).
    Bilinear,
    /// `Image.BICUBIC` (`interpolation=3`).
    Bicubic,
}

impl PilFilter {
    fn support(self) -> f64 {
        match self {
            PilFilter::Bilinear => 1.0,
            PilFilter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            PilFilter::Bilinear => (1.0 - x.abs()).max(0.0),
            PilFilter::Bicubic => cubic(x),
        }
    }
}

/// Pillow's `bicubic_filter` (a = −0.5).
fn cubic(x: f64) -> f64 {
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

/// Each output pixel's first input pixel and fixed-point weights (`precompute_coeffs` and
/// `normalize_coeffs_8bpc`).
fn coefficients(in_size: u32, out_size: u32, filter: PilFilter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| filter.weight((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    let scaled = v * (1u32 << PRECISION_BITS) as f64;
                    if v < 0.0 {
                        (-0.5 + scaled) as i32
                    } else {
                        (0.5 + scaled) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

/// Pillow's `clip8`: drop the fraction bits (an arithmetic shift) and clamp to a byte.
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `img.resize((w, h), filter)` as Pillow computes it.
pub fn resize(img: &RgbImage, w: u32, h: u32, filter: PilFilter) -> RgbImage {
    let (iw, ih) = img.dimensions();
    if (iw, ih) == (w, h) || iw == 0 || ih == 0 || w == 0 || h == 0 {
        return if (iw, ih) == (w, h) {
            img.clone()
        } else {
            RgbImage::new(w, h)
        };
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    let src = img.as_raw();
    // Pillow skips a pass whose size does not change.
    let horizontal: Vec<u8> = if iw == w {
        src.clone()
    } else {
        let cols = coefficients(iw, w, filter);
        let mut out = vec![0u8; (w * ih * 3) as usize];
        for y in 0..ih as usize {
            let row = &src[y * iw as usize * 3..(y + 1) * iw as usize * 3];
            for (x, (xmin, k)) in cols.iter().enumerate() {
                for c in 0..3 {
                    let acc = k.iter().enumerate().fold(half, |acc, (j, &wj)| {
                        acc + row[(xmin + j) * 3 + c] as i64 * wj as i64
                    });
                    out[(y * w as usize + x) * 3 + c] = clip8(acc);
                }
            }
        }
        out
    };
    if ih == h {
        return RgbImage::from_raw(w, h, horizontal).expect("w × h × 3 bytes");
    }
    let rows = coefficients(ih, h, filter);
    let stride = w as usize * 3;
    let mut out = vec![0u8; stride * h as usize];
    for (y, (ymin, k)) in rows.iter().enumerate() {
        for i in 0..stride {
            let acc = k.iter().enumerate().fold(half, |acc, (j, &wj)| {
                acc + horizontal[(ymin + j) * stride + i] as i64 * wj as i64
            });
            out[y * stride + i] = clip8(acc);
        }
    }
    RgbImage::from_raw(w, h, out).expect("w × h × 3 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point_and_flat_images_stay_flat() {
        for filter in [PilFilter::Bilinear, PilFilter::Bicubic] {
            for (i, o) in [(20, 256), (341, 256), (500, 256), (7, 3)] {
                for (_, k) in coefficients(i, o, filter) {
                    let sum: i64 = k.iter().map(|&v| v as i64).sum();
                    assert!((sum - (1 << PRECISION_BITS)).abs() <= k.len() as i64);
                }
            }
            let flat = RgbImage::from_pixel(23, 17, image::Rgb([9, 130, 251]));
            let r = resize(&flat, 256, 189, filter);
            assert!(r.pixels().all(|p| p.0 == [9, 130, 251]));
        }
    }
}
