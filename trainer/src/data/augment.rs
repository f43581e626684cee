//! Multi-crop augmentation exactly as `DataAugmentationDINO` in `main_dino.py`, with
//! torchvision's sampling rules: 2 global crops + N local crops per image.

use image::RgbImage;
use rand::Rng;
use rand::seq::SliceRandom;

use dino_model::config::{IMAGENET_MEAN, IMAGENET_STD};

/// Parameters of the multi-crop augmentation (official defaults in [`Default`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Side of the global crops (224).
    pub global_size: u32,
    /// Side of the local crops (96).
    pub local_size: u32,
    /// Number of local crops (8).
    pub local_crops: usize,
    /// Area range of the global crops (0.4, 1.0).
    pub global_scale: (f64, f64),
    /// Area range of the local crops (0.05, 0.4).
    pub local_scale: (f64, f64),
    /// Probability of a Gaussian blur on global crop 1, global crop 2 and each local crop.
    #[serde(default = "dino_blur")]
    pub blur: [f64; 3],
    /// DINOv3: the side of two more crops, the global crops seen by the Gram teacher
    /// (`crops.gram_teacher_crops_size`); the loader's, not saved.
    #[serde(skip)]
    pub gram_size: Option<u32>,
    /// DINOv3's blur (`v2.GaussianBlur(kernel_size=9)`): a kernel of this many taps with
    /// reflected edges; `None`: PIL's `GaussianBlur(radius)` of DINO and DINOv2 (3σ wide,
    /// replicated edges).
    #[serde(default)]
    pub blur_taps: Option<usize>,
}

/// `DataAugmentationDINO`'s blur probabilities.
fn dino_blur() -> [f64; 3] {
    [1.0, 0.1, 0.5]
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            global_size: 224,
            local_size: 96,
            local_crops: 8,
            global_scale: (0.4, 1.0),
            local_scale: (0.05, 0.4),
            blur: dino_blur(),
            gram_size: None,
            blur_taps: None,
        }
    }
}

impl AugmentConfig {
    /// DINOv2's `DataAugmentationDINO` (`data/augmentations.py`): crop scales 0.32–1 and
    /// 0.05–0.32, and the blur probabilities the released models were trained with. Its
    /// `GaussianBlur(p)` hands `1 - p` to `RandomApply`, so the nominal 1.0 / 0.1 / 0.5 blur
    /// global crop 1 never, global crop 2 with probability 0.9 and local crops with 0.5.
    pub fn dinov2() -> Self {
        Self {
            global_scale: (0.32, 1.0),
            local_scale: (0.05, 0.32),
            blur: [0.0, 0.9, 0.5],
            ..Self::default()
        }
    }

    /// DINOv3's `DataAugmentationDINO`: DINOv2's, with torchvision's 9-tap Gaussian blur
    /// (`data/transforms.py`, `GaussianBlur`) in place of PIL's.
    pub fn dinov3() -> Self {
        Self {
            blur_taps: Some(9),
            ..Self::dinov2()
        }
    }
}

/// Where tap `i` (possibly outside `0..n`) reads: mirrored about the edge pixels without
/// repeating them (`F.pad(mode="reflect")`, torchvision's blur) or the nearest edge pixel
/// (PIL's blur as we write it); a mirror that still falls outside (a crop narrower than the
/// kernel's half-width) is clamped.
fn tap_index(i: isize, n: usize, reflect: bool) -> usize {
    let last = n as isize - 1;
    let i = if reflect {
        let r = i.abs();
        if r > last { 2 * last - r } else { r }
    } else {
        i
    };
    i.clamp(0, last) as usize
}

/// One augmented view: `[3, size, size]` ImageNet-normalised values.
#[derive(Debug, Clone)]
pub struct Crop {
    /// Side in pixels.
    pub size: u32,
    /// Normalised CHW values.
    pub chw: Vec<f32>,
}

/// torchvision `RandomResizedCrop.get_params`: returns `(top, left, height, width)`.
pub fn random_resized_crop_params<R: Rng>(
    rng: &mut R,
    width: u32,
    height: u32,
    scale: (f64, f64),
) -> (u32, u32, u32, u32) {
    let ratio: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
    let (w_img, h_img) = (width as f64, height as f64);
    let area = w_img * h_img;
    let log_ratio = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * rng.random_range(scale.0..=scale.1);
        let aspect = rng.random_range(log_ratio.0..=log_ratio.1).exp();
        let w = (target_area * aspect).sqrt().round();
        let h = (target_area / aspect).sqrt().round();
        if w > 0.0 && w <= w_img && h > 0.0 && h <= h_img {
            let (w, h) = (w as u32, h as u32);
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return (top, left, h, w);
        }
    }
    // Fallback: the central crop with the aspect ratio clamped into range.
    let in_ratio = w_img / h_img;
    let (w, h) = if in_ratio < ratio.0 {
        (width, (w_img / ratio.0).round() as u32)
    } else if in_ratio > ratio.1 {
        ((h_img * ratio.1).round() as u32, height)
    } else {
        (width, height)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// An image as planar f32 RGB in `[0, 1]`.
struct Planes {
    w: usize,
    h: usize,
    px: Vec<[f32; 3]>,
}

impl Planes {
    fn from_rgb(img: &RgbImage) -> Self {
        let (w, h) = img.dimensions();
        Self {
            w: w as usize,
            h: h as usize,
            px: img
                .pixels()
                .map(|p| p.0.map(|c| c as f32 / 255.0))
                .collect(),
        }
    }

    fn gray(p: [f32; 3]) -> f32 {
        // PIL's convert("L") weights (ITU-R 601-2), as torchvision's rgb_to_grayscale.
        0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
    }

    fn map(&mut self, f: impl Fn([f32; 3]) -> [f32; 3]) {
        for p in &mut self.px {
            *p = f(*p).map(|c| c.clamp(0.0, 1.0));
        }
    }

    fn brightness(&mut self, f: f32) {
        self.map(|p| p.map(|c| c * f));
    }

    fn contrast(&mut self, f: f32) {
        let mean =
            self.px.iter().map(|&p| Self::gray(p)).sum::<f32>() / self.px.len().max(1) as f32;
        self.map(|p| p.map(|c| mean + (c - mean) * f));
    }

    fn saturation(&mut self, f: f32) {
        self.map(|p| {
            let g = Self::gray(p);
            p.map(|c| g + (c - g) * f)
        });
    }

    fn hue(&mut self, shift: f32) {
        self.map(|p| {
            let (h, s, v) = rgb_to_hsv(p);
            // h + shift lies in [-0.1, 1.1): wrap it into [0, 1) without fmod.
            let h = h + shift;
            hsv_to_rgb(h - h.floor(), s, v)
        });
    }

    fn grayscale(&mut self) {
        self.map(|p| [Self::gray(p); 3]);
    }

    fn solarize(&mut self) {
        // ImageOps.solarize(threshold=128): invert every value >= 128/255.
        self.map(|p| p.map(|c| if c >= 128.0 / 255.0 { 1.0 - c } else { c }));
    }

    /// Separable Gaussian blur: `taps` wide with reflected edges (torchvision), else 3σ on
    /// each side with replicated edges (PIL).
    fn gaussian_blur(&mut self, sigma: f32, taps: Option<usize>) {
        let reflect = taps.is_some();
        let radius = taps.map_or((3.0 * sigma).ceil() as usize, |t| t / 2);
        let kernel: Vec<f32> = (-(radius as isize)..=radius as isize)
            .map(|x| (-(x * x) as f32 / (2.0 * sigma * sigma)).exp())
            .collect();
        let sum: f32 = kernel.iter().sum();
        let kernel: Vec<f32> = kernel.iter().map(|k| k / sum).collect();
        let (w, h) = (self.w, self.h);
        let row_len = 3 * w;
        // Interleaved RGB rows as flat f32 so each tap is one vectorised multiply-add over a
        // whole row; the padding holds the edge taps.
        let flat: Vec<f32> = self.px.iter().flatten().copied().collect();
        let mut tmp = vec![0.0f32; flat.len()];
        let mut padded = vec![0.0f32; 3 * (w + 2 * radius)];
        for (src, dst) in flat
            .chunks_exact(row_len)
            .zip(tmp.chunks_exact_mut(row_len))
        {
            for x in 0..w + 2 * radius {
                let sx = tap_index(x as isize - radius as isize, w, reflect);
                padded[3 * x..3 * x + 3].copy_from_slice(&src[3 * sx..3 * sx + 3]);
            }
            for (t, k) in kernel.iter().enumerate() {
                for (d, p) in dst.iter_mut().zip(&padded[3 * t..3 * t + row_len]) {
                    *d += k * p;
                }
            }
        }
        let mut out = vec![0.0f32; flat.len()];
        for (y, dst) in out.chunks_exact_mut(row_len).enumerate() {
            for (t, k) in kernel.iter().enumerate() {
                let sy = tap_index((y + t) as isize - radius as isize, h, reflect);
                for (d, p) in dst.iter_mut().zip(&tmp[sy * row_len..(sy + 1) * row_len]) {
                    *d += k * p;
                }
            }
        }
        for (p, c) in self.px.iter_mut().zip(out.chunks_exact(3)) {
            *p = [c[0], c[1], c[2]];
        }
    }

    fn normalized_chw(&self) -> Vec<f32> {
        let plane = self.w * self.h;
        let mut out = vec![0.0f32; 3 * plane];
        for (i, p) in self.px.iter().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (p[c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
        }
        out
    }
}

fn rgb_to_hsv(p: [f32; 3]) -> (f32, f32, f32) {
    let max = p[0].max(p[1]).max(p[2]);
    let min = p[0].min(p[1]).min(p[2]);
    let d = max - min;
    let h = if d == 0.0 {
        0.0
    } else if max == p[0] {
        // (g - b) / d lies in [-1, 1]: rem_euclid(6) is one conditional add.
        let x = (p[1] - p[2]) / d;
        (if x < 0.0 { x + 6.0 } else { x }) / 6.0
    } else if max == p[1] {
        ((p[2] - p[0]) / d + 2.0) / 6.0
    } else {
        ((p[0] - p[1]) / d + 4.0) / 6.0
    };
    let s = if max == 0.0 { 0.0 } else { d / max };
    (h, s, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match (i as i32).rem_euclid(6) {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// `flip_and_color_jitter`: flip p 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8 in a random
/// order of its four parts (as torchvision), grayscale p 0.2.
fn flip_and_color_jitter<R: Rng>(rng: &mut R, img: RgbImage) -> Planes {
    let img = if rng.random_bool(0.5) {
        image::imageops::flip_horizontal(&img)
    } else {
        img
    };
    let mut planes = Planes::from_rgb(&img);
    if rng.random_bool(0.8) {
        let mut order = [0usize, 1, 2, 3];
        order.shuffle(rng);
        let b = rng.random_range(0.6f32..=1.4);
        let c = rng.random_range(0.6f32..=1.4);
        let s = rng.random_range(0.8f32..=1.2);
        let h = rng.random_range(-0.1f32..=0.1);
        for o in order {
            match o {
                0 => planes.brightness(b),
                1 => planes.contrast(c),
                2 => planes.saturation(s),
                _ => planes.hue(h),
            }
        }
    }
    if rng.random_bool(0.2) {
        planes.grayscale();
    }
    planes
}

/// `F.resized_crop` on a PIL image: crop, then PIL's BICUBIC (a = −0.5, antialiased).
/// fast_image_resize ports Pillow's convolution resampler with SIMD, so it matches PIL more
/// closely than `image::imageops::resize` and reads the crop box in place (no copy).
fn crop_resize(img: &RgbImage, params: (u32, u32, u32, u32), size: u32) -> RgbImage {
    use fast_image_resize as fr;
    thread_local! {
        // The resizer keeps its scratch buffers between crops.
        static RESIZER: std::cell::RefCell<fr::Resizer> = std::cell::RefCell::new(fr::Resizer::new());
    }
    let (top, left, h, w) = params;
    let src =
        fr::images::ImageRef::new(img.width(), img.height(), img.as_raw(), fr::PixelType::U8x3)
            .expect("an RgbImage buffer holds width × height × 3 bytes");
    let mut dst = fr::images::Image::new(size, size, fr::PixelType::U8x3);
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom))
        .crop(left as f64, top as f64, w as f64, h as f64);
    RESIZER
        .with_borrow_mut(|r| r.resize(&src, &mut dst, &options))
        .expect("the crop box lies inside the image and both are RGB");
    RgbImage::from_raw(size, size, dst.into_vec()).expect("size × size × 3 bytes")
}

fn view<R: Rng>(
    rng: &mut R,
    img: &RgbImage,
    size: u32,
    scale: (f64, f64),
    blur_p: f64,
    blur_taps: Option<usize>,
    solarize_p: f64,
) -> Crop {
    let params = random_resized_crop_params(rng, img.width(), img.height(), scale);
    let mut planes = flip_and_color_jitter(rng, crop_resize(img, params, size));
    if blur_p > 0.0 && rng.random_bool(blur_p) {
        let sigma = rng.random_range(0.1f32..=2.0);
        planes.gaussian_blur(sigma, blur_taps);
    }
    if solarize_p > 0.0 && rng.random_bool(solarize_p) {
        planes.solarize();
    }
    Crop {
        size,
        chw: planes.normalized_chw(),
    }
}

/// `v2.Resize(size, BICUBIC)` of a normalised crop (antialiased, as torchvision does on
/// tensors), one matrix product per axis.
pub fn resize_crop(crop: &Crop, size: u32) -> Crop {
    let (n, m) = (crop.size as usize, size as usize);
    let w = dino_model::interp::antialias_bicubic_matrix(n, m);
    let mut out = vec![0.0f32; 3 * m * m];
    let mut rows = vec![0.0f32; n * m];
    for c in 0..3 {
        let plane = &crop.chw[c * n * n..(c + 1) * n * n];
        // Width first: rows[y][j] = Σ_x plane[y][x]·w[j][x]; then height.
        for y in 0..n {
            for j in 0..m {
                let wj = &w[j * n..(j + 1) * n];
                rows[y * m + j] = plane[y * n..(y + 1) * n]
                    .iter()
                    .zip(wj)
                    .map(|(a, b)| a * b)
                    .sum();
            }
        }
        for i in 0..m {
            let wi = &w[i * n..(i + 1) * n];
            for j in 0..m {
                out[c * m * m + i * m + j] = (0..n).map(|y| wi[y] * rows[y * m + j]).sum();
            }
        }
    }
    Crop { size, chw: out }
}

/// All views of one image: global 1 (DINO: blur p 1.0), global 2 (blur p 0.1, solarise p
/// 0.2), then the local crops (blur p 0.5); the blur probabilities are `cfg.blur`. With a
/// Gram crop size (DINOv3's `DataAugmentationDINO`), each global view is cropped and
/// distorted at the larger of the two sizes, then resized to each; the Gram teacher's two
/// crops follow the local ones.
pub fn multi_crop<R: Rng>(rng: &mut R, img: &RgbImage, cfg: &AugmentConfig) -> Vec<Crop> {
    let [blur_1, blur_2, blur_local] = cfg.blur;
    let mut crops = Vec::with_capacity(4 + cfg.local_crops);
    let big = cfg
        .gram_size
        .map_or(cfg.global_size, |g| g.max(cfg.global_size));
    let mut grams = Vec::new();
    for (blur, solarize) in [(blur_1, 0.0), (blur_2, 0.2)] {
        let v = view(
            rng,
            img,
            big,
            cfg.global_scale,
            blur,
            cfg.blur_taps,
            solarize,
        );
        match cfg.gram_size {
            None => crops.push(v),
            Some(g) => {
                let gram = if g == big {
                    v.clone()
                } else {
                    resize_crop(&v, g)
                };
                crops.push(if cfg.global_size == big {
                    v
                } else {
                    resize_crop(&v, cfg.global_size)
                });
                grams.push(gram);
            }
        }
    }
    for _ in 0..cfg.local_crops {
        crops.push(view(
            rng,
            img,
            cfg.local_size,
            cfg.local_scale,
            blur_local,
            cfg.blur_taps,
            0.0,
        ));
    }
    crops.extend(grams);
    crops
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn test_image() -> RgbImage {
        RgbImage::from_fn(120, 80, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x + y) % 256) as u8])
        })
    }

    #[test]
    fn crop_params_respect_scale_and_ratio() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for scale in [(0.4, 1.0), (0.05, 0.4)] {
            for _ in 0..2000 {
                let (top, left, h, w) = random_resized_crop_params(&mut rng, 120, 80, scale);
                assert!(top + h <= 80 && left + w <= 120 && h > 0 && w > 0);
                let frac = (h * w) as f64 / (120.0 * 80.0);
                // Rounding of w and h moves the area slightly; the fallback is the full image.
                let fallback = (h, w) == (80, 107) || (h, w) == (80, 120);
                assert!(
                    fallback || (frac > scale.0 * 0.85 && frac < scale.1 * 1.15),
                    "area {frac} outside {scale:?}"
                );
                let ratio = w as f64 / h as f64;
                assert!(fallback || (ratio > 0.7 && ratio < 1.45), "ratio {ratio}");
            }
        }
    }

    #[test]
    fn multi_crop_sizes_and_normalisation() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let cfg = AugmentConfig {
            global_size: 32,
            local_size: 16,
            local_crops: 3,
            ..Default::default()
        };
        let crops = multi_crop(&mut rng, &test_image(), &cfg);
        assert_eq!(crops.len(), 5);
        assert_eq!(
            crops.iter().map(|c| c.size).collect::<Vec<_>>(),
            vec![32, 32, 16, 16, 16]
        );
        for c in &crops {
            assert_eq!(c.chw.len(), (3 * c.size * c.size) as usize);
            let lo = (0.0 - 0.485) / 0.229 - 1e-4;
            let hi = (1.0 - 0.406) / 0.225 + 1e-4;
            assert!(c.chw.iter().all(|v| *v >= lo && *v <= hi));
        }
    }

    #[test]
    fn gram_crops_are_the_global_views_at_their_size() {
        let cfg = AugmentConfig {
            global_size: 32,
            local_size: 16,
            local_crops: 2,
            gram_size: Some(64),
            ..Default::default()
        };
        let crops = multi_crop(&mut ChaCha8Rng::seed_from_u64(5), &test_image(), &cfg);
        assert_eq!(
            crops.iter().map(|c| c.size).collect::<Vec<_>>(),
            vec![32, 32, 16, 16, 64, 64]
        );
        for k in 0..2 {
            // The global crop is the Gram crop shrunk: same view, same distortions.
            let shrunk = resize_crop(&crops[4 + k], 32);
            assert_eq!(shrunk.chw, crops[k].chw);
        }
        // A constant image stays constant through the antialiased resize.
        let flat = Crop {
            size: 8,
            chw: vec![0.25; 3 * 64],
        };
        let r = resize_crop(&flat, 3);
        assert!(r.chw.iter().all(|v| (v - 0.25).abs() < 1e-6), "{:?}", r.chw);
    }

    #[test]
    fn same_seed_same_crops() {
        let cfg = AugmentConfig {
            global_size: 24,
            local_size: 8,
            local_crops: 2,
            ..Default::default()
        };
        let a = multi_crop(&mut ChaCha8Rng::seed_from_u64(3), &test_image(), &cfg);
        let b = multi_crop(&mut ChaCha8Rng::seed_from_u64(3), &test_image(), &cfg);
        let c = multi_crop(&mut ChaCha8Rng::seed_from_u64(4), &test_image(), &cfg);
        assert!(a.iter().zip(&b).all(|(x, y)| x.chw == y.chw));
        assert!(a.iter().zip(&c).any(|(x, y)| x.chw != y.chw));
    }

    #[test]
    fn row_wise_blur_equals_the_clamped_gaussian() {
        // The separable Gaussian written pixel by pixel with clamped taps: the definition the
        // vectorised rows must reproduce exactly (same taps, same summation order).
        let img = test_image();
        for sigma in [0.1f32, 0.7, 2.0] {
            let mut planes = Planes::from_rgb(&img);
            let (w, h) = (planes.w as isize, planes.h as isize);
            let radius = (3.0 * sigma).ceil() as isize;
            let kernel: Vec<f32> = (-radius..=radius)
                .map(|x| (-(x * x) as f32 / (2.0 * sigma * sigma)).exp())
                .collect();
            let sum: f32 = kernel.iter().sum();
            let kernel: Vec<f32> = kernel.iter().map(|k| k / sum).collect();
            let at = |px: &[[f32; 3]], x: isize, y: isize| px[(y * w + x) as usize];
            let pass = |px: &[[f32; 3]], horizontal: bool| -> Vec<[f32; 3]> {
                let mut out = vec![[0.0f32; 3]; px.len()];
                for y in 0..h {
                    for x in 0..w {
                        let mut acc = [0.0f32; 3];
                        for (t, k) in kernel.iter().enumerate() {
                            let o = t as isize - radius;
                            let p = if horizontal {
                                at(px, (x + o).clamp(0, w - 1), y)
                            } else {
                                at(px, x, (y + o).clamp(0, h - 1))
                            };
                            for c in 0..3 {
                                acc[c] += k * p[c];
                            }
                        }
                        out[(y * w + x) as usize] = acc;
                    }
                }
                out
            };
            let expected = pass(&pass(&planes.px, true), false);
            planes.gaussian_blur(sigma, None);
            assert_eq!(planes.px, expected, "sigma {sigma}");
        }
    }

    #[test]
    fn nine_tap_blur_matches_torchvision() {
        // DINOv3's v2.GaussianBlur(kernel_size=9) from scripts/make_gram_fixtures.py.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/objectives/gram_resize.safetensors"
        );
        let (_, map) = dino_model::checkpoint::read_safetensors(&std::fs::read(path).unwrap())
            .expect("the fixture is a safetensors file");
        let chw_to_px = |chw: &[f32], plane: usize| -> Vec<[f32; 3]> {
            (0..plane)
                .map(|i| [chw[i], chw[plane + i], chw[2 * plane + i]])
                .collect()
        };
        for (h, w) in [(11usize, 13usize), (6, 7)] {
            let input = &map[&format!("blur9.{h}x{w}.in")];
            assert_eq!(input.shape, [3, h, w]);
            // Python's spelling of each σ names its tensor.
            for label in ["0.1", "0.8", "2.0"] {
                let sigma: f32 = label.parse().unwrap();
                let mut planes = Planes {
                    w,
                    h,
                    px: chw_to_px(&input.data, h * w),
                };
                planes.gaussian_blur(sigma, Some(9));
                let want = chw_to_px(&map[&format!("blur9.{h}x{w}.s{label}")].data, h * w);
                let err = planes
                    .px
                    .iter()
                    .flatten()
                    .zip(want.iter().flatten())
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(err <= 1e-6, "{h}x{w}, sigma {sigma}: {err:.2e}");
            }
        }
    }

    #[test]
    fn hsv_round_trip() {
        for p in [[0.2f32, 0.5, 0.9], [1.0, 0.0, 0.0], [0.3, 0.3, 0.3]] {
            let (h, s, v) = rgb_to_hsv(p);
            let q = hsv_to_rgb(h, s, v);
            assert!(
                p.iter().zip(&q).all(|(a, b)| (a - b).abs() < 1e-5),
                "{p:?} -> {q:?}"
            );
        }
    }
}
