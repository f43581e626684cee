//! Turning attention maps into pictures (PNG), shared by `dino attention` and training.

use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::{Device, Tensor, TensorData};
use dino_model::attention::{
    cls_maps, combined_mask, ensure_finite, mass_mask, mean_map, pca_rgb, upsample_nearest,
};
use dino_model::preprocess::Prepared;
use dino_model::vit::VisionTransformer;
use image::{Rgb, RgbImage};

/// Everything the attention views need for one image.
pub struct AttentionMaps {
    /// CLS attention per head, `[grid_h * grid_w]` each.
    pub heads: Vec<Vec<f32>>,
    /// Mass masks per head at the requested threshold.
    pub masks: Vec<Vec<bool>>,
    /// Patch features after the final norm, row-major `[patches, dim]`.
    pub patch_features: Vec<f32>,
    /// The block's softmax attention for the image, `[heads, tokens, tokens]`.
    pub attention: Vec<f32>,
    /// Tokens before the patches (CLS and registers).
    pub prefix: usize,
    /// Token width.
    pub dim: usize,
    /// Patch grid rows.
    pub grid_h: usize,
    /// Patch grid columns.
    pub grid_w: usize,
}

/// Runs the backbone on one prepared image and extracts the maps of block `layer`.
pub fn compute_maps(
    backbone: &VisionTransformer,
    image: &Prepared,
    layer: usize,
    threshold: f32,
    device: &Device,
) -> Result<AttentionMaps> {
    let x = Tensor::<4>::from_data(
        TensorData::new(image.chw.clone(), [1, 3, image.height, image.width]),
        device,
    );
    let out = backbone.forward_with_attention(x, layer)?;
    let heads_n = backbone.num_heads();
    let prefix = out.prefix_tokens;
    let tokens = prefix + out.grid_h * out.grid_w;
    let attention: Vec<f32> = out
        .attention
        .into_data()
        .try_to_vec()
        .context("reading attention")?;
    let [_, _, dim] = out.tokens.dims();
    let tokens_data: Vec<f32> = out
        .tokens
        .into_data()
        .try_to_vec()
        .context("reading tokens")?;
    ensure_finite(&attention, "attention weights")?;
    ensure_finite(&tokens_data, "features")?;
    let heads = cls_maps(&attention, heads_n, tokens, prefix);
    let masks = heads.iter().map(|m| mass_mask(m, threshold)).collect();
    Ok(AttentionMaps {
        heads,
        masks,
        patch_features: tokens_data[prefix * dim..].to_vec(),
        attention,
        prefix,
        dim,
        grid_h: out.grid_h,
        grid_w: out.grid_w,
    })
}

pub use dino_shaders::images::{grid, heatmap, overlay};

/// Saves a PNG atomically.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .with_context(|| format!("encoding {}", path.display()))?;
    crate::io::files::write_atomic(path, &bytes)
}

/// Every picture of `dino attention`, as (file name, image) pairs.
pub fn attention_pictures(
    image: &RgbImage,
    maps: &AttentionMaps,
    patch: usize,
    threshold: f32,
) -> Vec<(String, RgbImage)> {
    let (gh, gw) = (maps.grid_h, maps.grid_w);
    let mut out = vec![("img.png".to_string(), image.clone())];
    let mut heat_tiles = Vec::new();
    let mut mask_tiles = Vec::new();
    for (j, (map, mask)) in maps.heads.iter().zip(&maps.masks).enumerate() {
        let heat = heatmap(map, gh, gw, patch);
        let m: Vec<f32> = mask.iter().map(|&b| b as u8 as f32).collect();
        let masked = overlay(image, &m, gh, gw, patch, 0.7, true);
        out.push((format!("attn-head{j}.png"), heat.clone()));
        out.push((format!("mask_th{threshold}_head{j}.png"), masked.clone()));
        heat_tiles.push(heat);
        mask_tiles.push(masked);
    }
    let cols = maps.heads.len().min(6);
    out.push(("heads.png".into(), grid(&heat_tiles, cols)));
    out.push(("masks.png".into(), grid(&mask_tiles, cols)));
    let mean = mean_map(&maps.heads);
    out.push(("attn-mean.png".into(), heatmap(&mean, gh, gw, patch)));
    out.push((
        "overlay.png".into(),
        overlay(image, &mean, gh, gw, patch, 0.6, false),
    ));
    let seg: Vec<f32> = combined_mask(&maps.masks, maps.masks.len().div_ceil(2))
        .iter()
        .map(|&b| b as u8 as f32)
        .collect();
    out.push((
        "segmentation.png".into(),
        overlay(image, &seg, gh, gw, patch, 0.75, true),
    ));
    let rgb = pca_rgb(&maps.patch_features, gh * gw, maps.dim);
    let up = upsample_nearest(&rgb, gh, gw, patch);
    let (w, h) = ((gw * patch) as u32, (gh * patch) as u32);
    out.push((
        "pca.png".into(),
        RgbImage::from_fn(w, h, |x, y| {
            Rgb(up[(y * w + x) as usize].map(|c| (c * 255.0).round() as u8))
        }),
    ));
    out
}
