//! The pictures of each view, computed on the CPU from an [`Analysis`] (pure functions,
//! shared by the UI, PNG export and tests).

use std::sync::Arc;

use dino_model::attention::{
    cls_maps, combined_mask, mass_mask, mean_map, normalize01, patch_query_maps, register_maps,
    upsample_nearest,
};
use dino_shaders::images::{grid, overlay};
use image::{Rgb, RgbImage};

use crate::gpu_overlay::OverlayInput;
use crate::infer::Analysis;

/// What the central panel shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    /// Every head's CLS attention over the image.
    Heads,
    /// The mean over heads.
    Mean,
    /// Every head's mass mask (the official `--threshold` masks).
    Masks,
    /// The combined segmentation: patches kept by at least half of the heads.
    Segmentation,
    /// Attention from a clicked patch instead of the CLS token.
    PatchQuery,
    /// First three principal components of the patch features as RGB.
    Pca,
    /// Each register token's own attention next to the CLS map (DINOv2 `_reg`, DINOv3).
    Registers,
}

impl View {
    /// Every view, in menu order.
    pub const ALL: [View; 7] = [
        View::Heads,
        View::Mean,
        View::Masks,
        View::Segmentation,
        View::PatchQuery,
        View::Pca,
        View::Registers,
    ];

    /// Whether the view means anything for a model with `registers` extra tokens.
    pub fn applies(self, registers: usize) -> bool {
        self != View::Registers || registers > 0
    }

    /// The label of its button.
    pub fn label(self) -> &'static str {
        match self {
            View::Heads => "Heads",
            View::Mean => "Head mean",
            View::Masks => "Masks",
            View::Segmentation => "Segmentation",
            View::PatchQuery => "Patch query",
            View::Pca => "PCA",
            View::Registers => "Registers",
        }
    }
}

/// Settings the pictures depend on besides the analysis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Share of attention mass the masks keep.
    pub threshold: f32,
    /// Opacity of the heat maps over the image.
    pub alpha: f32,
    /// The queried patch (row-major index) in patch-query mode.
    pub query: usize,
}

/// The shader inputs of the views that are plain overlays (heads, mean, masks): the GPU
/// draws them with `attention_overlay.wgsl`, the CPU twin from the very same inputs.
pub fn overlay_inputs(
    a: &Analysis,
    view: View,
    s: &Settings,
) -> Option<Vec<(String, OverlayInput)>> {
    let heads = cls_maps(&a.attention, a.heads, a.tokens(), a.prefix);
    let image = Arc::new(a.display.clone());
    let input = |values: Vec<f32>, alpha: f32, mask_mode: bool| OverlayInput {
        image: image.clone(),
        values: Arc::new(values),
        grid_h: a.grid_h,
        grid_w: a.grid_w,
        alpha,
        mask_mode,
    };
    let to_f32 = |m: &[bool]| m.iter().map(|&b| b as u8 as f32).collect::<Vec<f32>>();
    Some(match view {
        View::Heads => heads
            .iter()
            .enumerate()
            .map(|(j, m)| (format!("head {j}"), input(normalize01(m), s.alpha, false)))
            .collect(),
        View::Mean => vec![(
            "mean of heads".into(),
            input(normalize01(&mean_map(&heads)), s.alpha, false),
        )],
        View::Masks => heads
            .iter()
            .enumerate()
            .map(|(j, m)| {
                (
                    format!("head {j}, {:.0} % mass", s.threshold * 100.0),
                    input(to_f32(&mass_mask(m, s.threshold)), 0.75, true),
                )
            })
            .collect(),
        _ => return None,
    })
}

/// Captioned tiles of one view.
pub fn render(a: &Analysis, view: View, s: &Settings) -> Vec<(String, RgbImage)> {
    if let Some(tiles) = overlay_inputs(a, view, s) {
        return tiles
            .into_iter()
            .map(|(caption, input)| (caption, input.to_image()))
            .collect();
    }
    let patch = a.display.width() as usize / a.grid_w;
    let (gh, gw) = (a.grid_h, a.grid_w);
    let heads = cls_maps(&a.attention, a.heads, a.tokens(), a.prefix);
    let masks: Vec<Vec<bool>> = heads.iter().map(|m| mass_mask(m, s.threshold)).collect();
    let to_f32 = |m: &[bool]| m.iter().map(|&b| b as u8 as f32).collect::<Vec<f32>>();
    match view {
        View::Heads | View::Mean | View::Masks => unreachable!("drawn from overlay_inputs"),
        View::Segmentation => {
            let majority = combined_mask(&masks, a.heads.div_ceil(2));
            let mean_mask = mass_mask(&mean_map(&heads), s.threshold);
            vec![
                (
                    "kept by at least half of the heads".into(),
                    overlay(&a.display, &to_f32(&majority), gh, gw, patch, 0.8, true),
                ),
                (
                    "mask of the head-mean map".into(),
                    overlay(&a.display, &to_f32(&mean_mask), gh, gw, patch, 0.8, true),
                ),
            ]
        }
        View::PatchQuery => {
            let q = s.query.min(gh * gw - 1);
            patch_query_maps(&a.attention, a.heads, a.tokens(), a.prefix, q)
                .iter()
                .enumerate()
                .map(|(j, m)| {
                    let mut img = overlay(&a.display, m, gh, gw, patch, s.alpha, false);
                    mark_patch(&mut img, q, gw, patch);
                    (
                        format!("head {j}, from patch ({}, {})", q % gw, q / gw),
                        img,
                    )
                })
                .collect()
        }
        View::Pca => {
            let up = upsample_nearest(&a.pca, gh, gw, patch);
            let (w, h) = (a.display.width(), a.display.height());
            let pca = RgbImage::from_fn(w, h, |x, y| {
                Rgb(up[(y * w + x) as usize].map(|c| (c * 255.0).round() as u8))
            });
            vec![
                ("PCA of patch features".into(), pca),
                ("image".into(), a.display.clone()),
            ]
        }
        View::Registers => {
            // The registers paper's comparison: where CLS looks, and where each register
            // looks (head means, each scaled to its own range).
            let mut tiles = vec![(
                "CLS, mean of heads".to_string(),
                overlay(
                    &a.display,
                    &normalize01(&mean_map(&heads)),
                    gh,
                    gw,
                    patch,
                    s.alpha,
                    false,
                ),
            )];
            let registers = register_maps(&a.attention, a.heads, a.tokens(), a.prefix);
            if registers.is_empty() {
                tiles[0].0 = "CLS, mean of heads (this model has no registers)".into();
            }
            for (r, maps) in registers.iter().enumerate() {
                tiles.push((
                    format!("register {}, mean of heads", r + 1),
                    overlay(
                        &a.display,
                        &normalize01(&mean_map(maps)),
                        gh,
                        gw,
                        patch,
                        s.alpha,
                        false,
                    ),
                ));
            }
            tiles
        }
    }
}

/// A white square around patch `q`.
fn mark_patch(img: &mut RgbImage, q: usize, grid_w: usize, patch: usize) {
    let (x0, y0) = (((q % grid_w) * patch) as u32, ((q / grid_w) * patch) as u32);
    let p = patch as u32;
    for i in 0..p {
        for (x, y) in [
            (x0 + i, y0),
            (x0 + i, y0 + p - 1),
            (x0, y0 + i),
            (x0 + p - 1, y0 + i),
        ] {
            if x < img.width() && y < img.height() {
                img.put_pixel(x, y, Rgb([255, 255, 255]));
            }
        }
    }
}

/// All tiles of a view in one picture, for PNG export.
pub fn export(a: &Analysis, view: View, s: &Settings) -> RgbImage {
    let tiles: Vec<RgbImage> = render(a, view, s).into_iter().map(|(_, t)| t).collect();
    grid(&tiles, tiles.len().min(3))
}
