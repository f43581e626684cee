//! Every WGSL source of dinoscope, exposed as constants, with CPU twins of what they compute
//! so tests (and machines without a GPU) get the same pixels.

/// The attention overlay shader: image + colormapped attention (or mask) blend.
pub const ATTENTION_OVERLAY_WGSL: &str = include_str!("attention_overlay.wgsl");

/// Every shader with its file name, for validation and for pipelines that look them up.
pub const ALL: &[(&str, &str)] = &[("attention_overlay.wgsl", ATTENTION_OVERLAY_WGSL)];

/// Viridis at 9 evenly spaced stops, 8-bit RGB. Keep in sync with `STOPS` in
/// `attention_overlay.wgsl`.
pub const VIRIDIS_STOPS: [[f32; 3]; 9] = [
    [68.0, 1.0, 84.0],
    [71.0, 44.0, 122.0],
    [59.0, 81.0, 139.0],
    [44.0, 113.0, 142.0],
    [33.0, 144.0, 141.0],
    [39.0, 173.0, 129.0],
    [92.0, 200.0, 99.0],
    [170.0, 220.0, 50.0],
    [253.0, 231.0, 37.0],
];

/// CPU twin of the shader's `viridis`: a value in `[0, 1]` (clamped) to RGB in `[0, 1]`.
pub fn viridis(value: f32) -> [f32; 3] {
    let v = if value.is_nan() {
        0.0
    } else {
        value.clamp(0.0, 1.0)
    } * 8.0;
    let i = (v.floor() as usize).min(7);
    let t = v - i as f32;
    let (a, b) = (VIRIDIS_STOPS[i], VIRIDIS_STOPS[i + 1]);
    [0, 1, 2].map(|c| (a[c] + (b[c] - a[c]) * t) / 255.0)
}

/// [`viridis`] as 8-bit RGB, for PNG output.
pub fn viridis_u8(value: f32) -> [u8; 3] {
    viridis(value).map(|c| (c * 255.0).round() as u8)
}

/// CPU twin of the shader's `fs_main` for one pixel: `base` RGB in `[0, 1]`, attention
/// (or mask) value `a`, blend weight `alpha`, and `mask_mode` as in the shader's params.
pub fn overlay_pixel(base: [f32; 3], a: f32, alpha: f32, mask_mode: bool) -> [f32; 3] {
    if mask_mode {
        let keep = if a > 0.5 { 1.0 } else { 0.0 };
        return base.map(|b| {
            let dimmed = b * (1.0 - alpha);
            dimmed + (b - dimmed) * keep
        });
    }
    let c = viridis(a);
    [0, 1, 2].map(|i| base[i] + (c[i] - base[i]) * alpha)
}

/// Whole-image helpers built on the CPU twins: heat maps, overlays and tiled grids of
/// patch-grid maps, as the trainer's PNGs and the viewer's textures need them.
pub mod images {
    use image::{Rgb, RgbImage};

    /// Nearest-neighbour upsampling of a `[h, w]` grid by `factor`.
    fn upsample(map: &[f32], h: usize, w: usize, factor: usize) -> Vec<f32> {
        let (oh, ow) = (h * factor, w * factor);
        (0..oh * ow)
            .map(|i| map[(i / ow / factor) * w + (i % ow) / factor])
            .collect()
    }

    /// Min-max scaling to `[0, 1]`; a constant map becomes zeros.
    fn normalize01(map: &[f32]) -> Vec<f32> {
        let (lo, hi) = map
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        if !(hi - lo > 0.0) {
            return vec![0.0; map.len()];
        }
        map.iter().map(|&v| (v - lo) / (hi - lo)).collect()
    }

    /// A `[grid_h, grid_w]` map as a viridis heat map, `patch` pixels per cell.
    pub fn heatmap(map: &[f32], grid_h: usize, grid_w: usize, patch: usize) -> RgbImage {
        let up = upsample(&normalize01(map), grid_h, grid_w, patch);
        let (w, h) = ((grid_w * patch) as u32, (grid_h * patch) as u32);
        RgbImage::from_fn(w, h, |x, y| {
            Rgb(crate::viridis_u8(up[(y * w + x) as usize]))
        })
    }

    /// The image with a map blended on top as a heat map, or (`mask_mode`) with everything
    /// outside a 0/1 mask dimmed: the shader's `fs_main`, pixel by pixel.
    pub fn overlay(
        image: &RgbImage,
        map: &[f32],
        grid_h: usize,
        grid_w: usize,
        patch: usize,
        alpha: f32,
        mask_mode: bool,
    ) -> RgbImage {
        let values = if mask_mode {
            map.to_vec()
        } else {
            normalize01(map)
        };
        let up = upsample(&values, grid_h, grid_w, patch);
        let w = image.width();
        RgbImage::from_fn(w, image.height(), |x, y| {
            let p = image.get_pixel(x, y).0.map(|c| c as f32 / 255.0);
            let v = up.get((y * w + x) as usize).copied().unwrap_or(0.0);
            Rgb(crate::overlay_pixel(p, v, alpha, mask_mode)
                .map(|c| (c * 255.0).round().clamp(0.0, 255.0) as u8))
        })
    }

    /// Tiles of equal size side by side with a 4-pixel white gap, `columns` per row.
    pub fn grid(tiles: &[RgbImage], columns: usize) -> RgbImage {
        let (tw, th) = tiles.first().map_or((1, 1), |t| t.dimensions());
        let cols = columns.max(1).min(tiles.len().max(1)) as u32;
        let rows = tiles.len().div_ceil(cols as usize).max(1) as u32;
        let gap = 4;
        let mut out = RgbImage::from_pixel(
            cols * (tw + gap) - gap,
            rows * (th + gap) - gap,
            Rgb([255, 255, 255]),
        );
        for (i, t) in tiles.iter().enumerate() {
            let (c, r) = (i as u32 % cols, i as u32 / cols);
            image::imageops::replace(
                &mut out,
                t,
                (c * (tw + gap)) as i64,
                (r * (th + gap)) as i64,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wgsl_file_parses_and_validates() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
            .collect();
        files.sort();
        assert_eq!(
            files.len(),
            ALL.len(),
            "every .wgsl in src/ must be listed in ALL"
        );
        for path in files {
            let source = std::fs::read_to_string(&path).unwrap();
            let module = naga::front::wgsl::parse_str(&source)
                .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.emit_to_string(&source)));
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::all(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        }
    }

    #[test]
    fn wgsl_stops_match_the_rust_twin() {
        // Parse the constant out of the shader text so the two cannot drift silently.
        let body = ATTENTION_OVERLAY_WGSL.split("const STOPS").nth(1).unwrap();
        let numbers: Vec<f32> = body
            .split("vec3<f32>(")
            .skip(1)
            .take(9)
            .flat_map(|s| {
                s.split(')')
                    .next()
                    .unwrap()
                    .split(',')
                    .map(|x| x.trim().parse::<f32>().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        let rust: Vec<f32> = VIRIDIS_STOPS.iter().flatten().copied().collect();
        assert_eq!(numbers, rust);
    }

    #[test]
    fn colormap_endpoints_and_monotone_luminance() {
        assert_eq!(viridis_u8(0.0), [68, 1, 84]);
        assert_eq!(viridis_u8(1.0), [253, 231, 37]);
        assert_eq!(viridis_u8(-3.0), viridis_u8(0.0));
        assert_eq!(viridis_u8(f32::NAN), viridis_u8(0.0));
        let lum = |c: [f32; 3]| 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
        let l: Vec<f32> = (0..=20).map(|i| lum(viridis(i as f32 / 20.0))).collect();
        assert!(l.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn image_helpers_align_with_the_patch_grid() {
        let map = [0.0, 1.0, 2.0, 3.0];
        let heat = images::heatmap(&map, 2, 2, 3);
        assert_eq!(heat.dimensions(), (6, 6));
        assert_eq!(heat.get_pixel(0, 0).0, viridis_u8(0.0));
        assert_eq!(heat.get_pixel(5, 5).0, viridis_u8(1.0));
        let img = image::RgbImage::from_pixel(6, 6, image::Rgb([200, 200, 200]));
        let masked = images::overlay(&img, &[1.0, 0.0, 0.0, 1.0], 2, 2, 3, 0.5, true);
        assert_eq!(masked.get_pixel(0, 0).0, [200, 200, 200]);
        assert_eq!(masked.get_pixel(4, 0).0, [100, 100, 100]);
        let g = images::grid(&[heat.clone(), heat], 2);
        assert_eq!(g.dimensions(), (16, 6));
    }

    #[test]
    fn overlay_blends_and_masks() {
        assert_eq!(
            overlay_pixel([1.0, 0.0, 0.0], 0.3, 0.0, false),
            [1.0, 0.0, 0.0]
        );
        let full = overlay_pixel([0.5, 0.5, 0.5], 1.0, 1.0, false);
        assert!(
            full.iter()
                .zip(viridis(1.0))
                .all(|(a, b)| (a - b).abs() < 1e-6)
        );
        assert_eq!(
            overlay_pixel([0.8, 0.8, 0.8], 1.0, 0.7, true),
            [0.8, 0.8, 0.8]
        );
        let d = overlay_pixel([0.8, 0.8, 0.8], 0.0, 0.5, true);
        assert!((d[0] - 0.4).abs() < 1e-6);
    }
}
