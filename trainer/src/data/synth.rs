//! The built-in synthetic objects set: object-centric scenes with a class label and a
//! ground-truth foreground mask, so training, kNN and segmentation metrics work on a fresh
//! machine with no download.

use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The shape classes, in label order.
pub const CLASSES: [&str; 6] = ["circle", "square", "triangle", "star", "ring", "cross"];

/// How many background scenes the set draws from.
pub const BACKGROUNDS: u64 = 8;

/// One generated scene.
#[derive(Debug, Clone)]
pub struct Scene {
    /// The picture.
    pub image: RgbImage,
    /// 255 on the object, 0 on the background.
    pub mask: GrayImage,
    /// Index into [`CLASSES`].
    pub label: usize,
}

fn random_color(rng: &mut ChaCha8Rng) -> [f32; 3] {
    [rng.random(), rng.random(), rng.random()]
}

/// A texture: a function of pixel position mixing two colours.
#[derive(Clone, Copy)]
enum Texture {
    Solid,
    Stripes { freq: f32, angle: f32 },
    Checker { cell: f32 },
    Dots { cell: f32 },
    Gradient { angle: f32 },
}

impl Texture {
    fn random(rng: &mut ChaCha8Rng, size: f32) -> Self {
        match rng.random_range(0..5) {
            0 => Texture::Solid,
            1 => Texture::Stripes {
                freq: rng.random_range(3.0..12.0) / size,
                angle: rng.random_range(0.0..std::f32::consts::PI),
            },
            2 => Texture::Checker {
                cell: size / rng.random_range(3.0..10.0),
            },
            3 => Texture::Dots {
                cell: size / rng.random_range(4.0..12.0),
            },
            _ => Texture::Gradient {
                angle: rng.random_range(0.0..std::f32::consts::TAU),
            },
        }
    }

    /// A high-contrast pattern (stripes, checkers or dots), never plain.
    fn random_busy(rng: &mut ChaCha8Rng, size: f32) -> Self {
        loop {
            let t = Self::random(rng, size);
            if matches!(
                t,
                Texture::Stripes { .. } | Texture::Checker { .. } | Texture::Dots { .. }
            ) {
                return t;
            }
        }
    }

    /// Mixing weight of the second colour at (x, y).
    fn weight(self, x: f32, y: f32, size: f32) -> f32 {
        match self {
            Texture::Solid => 0.0,
            Texture::Stripes { freq, angle } => {
                let t = x * angle.cos() + y * angle.sin();
                if (t * freq * std::f32::consts::TAU).sin() > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Texture::Checker { cell } => {
                (((x / cell).floor() + (y / cell).floor()) as i32 & 1) as f32
            }
            Texture::Dots { cell } => {
                let (fx, fy) = ((x / cell).fract() - 0.5, (y / cell).fract() - 0.5);
                if fx * fx + fy * fy < 0.09 { 1.0 } else { 0.0 }
            }
            Texture::Gradient { angle } => {
                ((x * angle.cos() + y * angle.sin()) / size * 0.7 + 0.5).clamp(0.0, 1.0)
            }
        }
    }
}

/// Whether the point (u, v), in the shape's own frame scaled so the shape fits the unit
/// disc, is inside a shape of class `label`.
fn inside(label: usize, u: f32, v: f32) -> bool {
    let d = (u * u + v * v).sqrt();
    match label {
        0 => d < 1.0,
        1 => u.abs().max(v.abs()) < 0.7,
        2 => {
            // Equilateral triangle inscribed in the unit circle, apex up.
            let s3 = 3f32.sqrt();
            v > -0.5 && (s3 * u - v) > -1.0 && (-s3 * u - v) > -1.0
        }
        3 => {
            let phi = v.atan2(u);
            let r = 0.45 + 0.55 * ((5.0 * phi).cos() * 0.5 + 0.5).powi(2);
            d < r
        }
        4 => d < 1.0 && d > 0.55,
        _ => (u.abs() < 0.3 && v.abs() < 0.95) || (v.abs() < 0.3 && u.abs() < 0.95),
    }
}

/// Scene `index` of the set with seed `seed`, `size × size` pixels; the same arguments
/// always give the same scene.
pub fn scene(seed: u64, index: u64, size: u32) -> Scene {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index);
    let label = (index % CLASSES.len() as u64) as usize;
    let s = size as f32;
    // Backgrounds recur (a few cluttered, boldly patterned "scenes" shared by every image,
    // like foliage or tiled walls) while each object is unique and plain (one saturated
    // colour with a faint texture): what tells one image from another is its object, and
    // the object is the calm region a token can summarise, which is what lets attention on
    // the object emerge from self-distillation in a small ViT.
    let mut bg_rng = ChaCha8Rng::seed_from_u64(0xBAC6_9000 + rng.random_range(0..BACKGROUNDS));
    let bg1 = random_color(&mut bg_rng);
    let mut bg2 = random_color(&mut bg_rng);
    while (0..3)
        .map(|c| (bg1[c] - bg2[c]).powi(2))
        .sum::<f32>()
        .sqrt()
        < 0.4
    {
        bg2 = random_color(&mut bg_rng);
    }
    let bg_tex = Texture::random_busy(&mut bg_rng, s);
    // Object colours far enough from the background's mean to be visible.
    let bg_mean = [0, 1, 2].map(|c| 0.5 * (bg1[c] + bg2[c]));
    let mut fg1 = random_color(&mut rng);
    for _ in 0..20 {
        let dist: f32 = (0..3)
            .map(|c| (fg1[c] - bg_mean[c]).powi(2))
            .sum::<f32>()
            .sqrt();
        if dist > 0.45 {
            break;
        }
        fg1 = random_color(&mut rng);
    }
    let fg2 = [0, 1, 2].map(|c| (fg1[c] + rng.random_range(-0.1f32..0.1)).clamp(0.0, 1.0));
    let fg_tex = Texture::random(&mut rng, s);
    let radius = s * rng.random_range(0.18f32..0.36);
    // Photographers centre their subject: objects sit nearer the middle than the edges, so
    // most crops of a scene (as most crops of a photo) contain part of it.
    let spread = 0.5 * (s / 2.0 - radius);
    let cx = s / 2.0 + rng.random_range(-spread..=spread);
    let cy = s / 2.0 + rng.random_range(-spread..=spread);
    let angle = rng.random_range(0.0..std::f32::consts::TAU);
    let (ca, sa) = (angle.cos(), angle.sin());
    let noise = rng.random_range(0.0f32..0.06);
    let mut image = RgbImage::new(size, size);
    let mut mask = GrayImage::new(size, size);
    for y in 0..size {
        for x in 0..size {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let (dx, dy) = ((fx - cx) / radius, (fy - cy) / radius);
            let (u, v) = (dx * ca + dy * sa, -dx * sa + dy * ca);
            let obj = inside(label, u, v);
            let (c1, c2, tex) = if obj {
                (fg1, fg2, fg_tex)
            } else {
                (bg1, bg2, bg_tex)
            };
            let w = tex.weight(fx, fy, s);
            let jitter = noise * (rng.random::<f32>() - 0.5);
            let px = [0, 1, 2].map(|c| {
                ((c1[c] * (1.0 - w) + c2[c] * w + jitter).clamp(0.0, 1.0) * 255.0).round() as u8
            });
            image.put_pixel(x, y, Rgb(px));
            mask.put_pixel(x, y, Luma([if obj { 255 } else { 0 }]));
        }
    }
    Scene { image, mask, label }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_deterministic_labelled_and_masked() {
        let a = scene(1, 7, 48);
        let b = scene(1, 7, 48);
        assert_eq!(a.image, b.image);
        assert_eq!(a.label, 7 % CLASSES.len());
        let fg = a.mask.pixels().filter(|p| p.0[0] == 255).count() as f32 / (48.0 * 48.0);
        assert!(fg > 0.02 && fg < 0.6, "foreground fraction {fg}");
        assert_ne!(scene(1, 8, 48).image, a.image);
        assert_ne!(scene(2, 7, 48).image, a.image);
    }

    #[test]
    fn every_shape_fits_its_unit_disc() {
        for (label, name) in CLASSES.iter().enumerate() {
            let mut area = 0;
            for i in 0..160_000 {
                let (u, v) = (
                    (i % 400) as f32 / 100.0 - 2.0,
                    (i / 400) as f32 / 100.0 - 2.0,
                );
                if inside(label, u, v) {
                    area += 1;
                    assert!(
                        u * u + v * v <= 1.0 + 1e-3,
                        "{} reaches ({u}, {v})",
                        CLASSES[label]
                    );
                }
            }
            assert!(area > 5_000, "{name} is almost empty");
        }
    }

    #[test]
    fn every_class_has_a_distinct_footprint() {
        let grid: Vec<Vec<bool>> = (0..CLASSES.len())
            .map(|l| {
                (0..400)
                    .map(|i| {
                        inside(
                            l,
                            (i % 20) as f32 / 10.0 - 1.0,
                            (i / 20) as f32 / 10.0 - 1.0,
                        )
                    })
                    .collect()
            })
            .collect();
        for i in 0..grid.len() {
            for j in i + 1..grid.len() {
                assert_ne!(
                    grid[i], grid[j],
                    "{} and {} look the same",
                    CLASSES[i], CLASSES[j]
                );
            }
        }
    }
}
