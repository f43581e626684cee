//! The in-training probes: CLS features of in-memory images for the k-NN monitor, and the
//! Jaccard of attention masks against ground-truth masks (the paper's segmentation probe).

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use dino_model::attention::{jaccard, mass_mask, mean_map, upsample_nearest};
use dino_model::preprocess::{Resize, prepare};
use dino_model::vit::VisionTransformer;
use image::RgbImage;

use crate::data::sources::Source;
use crate::eval::knn::Features;

/// L2-normalised CLS features of in-memory images squashed to `size × size` (the
/// in-training k-NN; `dino knn` runs the official transform through [`crate::eval::knn`]).
pub fn features(
    backbone: &VisionTransformer,
    images: &[RgbImage],
    labels: &[usize],
    size: u32,
    device: &Device,
) -> Result<Features> {
    let patch = backbone.patch_size();
    let mut data = Vec::new();
    let mut dim = 0;
    for chunk in images.chunks(32) {
        let prepared = chunk
            .iter()
            .map(|img| prepare(img, Resize::Square(size), patch))
            .collect::<Result<Vec<_>, _>>()?;
        let (h, w) = (prepared[0].height, prepared[0].width);
        let pixels: Vec<f32> = prepared
            .iter()
            .flat_map(|p| p.chw.iter().copied())
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(pixels, [chunk.len(), 3, h, w]), device);
        dim = crate::eval::knn::push_normalized_cls(backbone, x, &mut data)?;
    }
    Ok(Features {
        data,
        dim,
        labels: labels.to_vec(),
    })
}

/// Jaccard of attention masks against ground truth, averaged over images.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SegResult {
    /// Mean Jaccard of each head's mask.
    pub per_head: Vec<f64>,
    /// The best head's mean Jaccard.
    pub best_head: f64,
    /// Mean over heads of the per-head Jaccard.
    pub mean_heads: f64,
    /// Jaccard of the mask of the head-mean attention map.
    pub head_mean_map: f64,
    /// Images evaluated.
    pub images: usize,
}

/// Evaluates the last block's CLS-attention masks (keeping `threshold` of the mass) against
/// the ground-truth masks of every sample that has one.
pub fn segmentation(
    backbone: &VisionTransformer,
    source: &dyn Source,
    limit: usize,
    size: u32,
    threshold: f32,
    device: &Device,
) -> Result<SegResult> {
    let first: Vec<usize> = (0..source.len().min(limit)).collect();
    segmentation_at(
        backbone,
        backbone.depth() - 1,
        source,
        &first,
        size,
        threshold,
        device,
        &indicatif::ProgressBar::hidden(),
    )
}

/// As [`segmentation`], for the CLS attention of block `layer` on the samples `indices`;
/// `progress` advances by one per sample looked at.
#[allow(clippy::too_many_arguments)]
pub fn segmentation_at(
    backbone: &VisionTransformer,
    layer: usize,
    source: &dyn Source,
    indices: &[usize],
    size: u32,
    threshold: f32,
    device: &Device,
    progress: &indicatif::ProgressBar,
) -> Result<SegResult> {
    if layer >= backbone.depth() {
        bail!(
            "--layer {layer}: the model has blocks 0..{}",
            backbone.depth() - 1
        );
    }
    let patch = backbone.patch_size();
    let heads = backbone.num_heads();
    let mut sums = vec![0.0f64; heads];
    let mut mean_sum = 0.0f64;
    let mut n = 0usize;
    for &i in indices {
        progress.inc(1);
        // An unreadable image is not evaluated, as training skips it.
        let Ok(s) = source.get(i) else { continue };
        let Some(mask) = s.mask else { continue };
        let prepared = prepare(&s.image, Resize::Square(size), patch)?;
        let gt_img =
            image::imageops::resize(&mask, size, size, image::imageops::FilterType::Nearest);
        let (h, w) = (prepared.height, prepared.width);
        let gt: Vec<bool> = (0..h * w)
            .map(|k| gt_img.get_pixel((k % w) as u32, (k / w) as u32).0[0] > 127)
            .collect();
        let maps =
            crate::eval::render::compute_maps(backbone, &prepared, layer, threshold, device)?;
        for (j, m) in maps.masks.iter().enumerate() {
            sums[j] += jaccard(&upsample_nearest(m, maps.grid_h, maps.grid_w, patch), &gt) as f64;
        }
        let mean_mask = mass_mask(&mean_map(&maps.heads), threshold);
        mean_sum += jaccard(
            &upsample_nearest(&mean_mask, maps.grid_h, maps.grid_w, patch),
            &gt,
        ) as f64;
        n += 1;
    }
    if n == 0 {
        bail!(
            "{} has no ground-truth masks (files named <image>_mask.png beside the images)",
            source.describe()
        );
    }
    let per_head: Vec<f64> = sums.iter().map(|s| s / n as f64).collect();
    Ok(SegResult {
        best_head: per_head.iter().copied().fold(0.0, f64::max),
        mean_heads: per_head.iter().sum::<f64>() / heads as f64,
        per_head,
        head_mean_map: mean_sum / n as f64,
        images: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino_model::{ModelConfig, VitConfig};
    use image::{GrayImage, Luma, Rgb};

    /// Hand-made ground truth on disk, read through the real folder loader: the mask equal
    /// to a head's own mask scores 1 for that head, its complement 0, and a hand-drawn
    /// rectangle the overlap counted by hand, patch by patch.
    #[test]
    fn eval_seg_jaccard_on_hand_made_masks() {
        let device = Device::flex();
        device.seed(7);
        let mut vit = VitConfig::vit_tiny(8);
        vit.depth = 1;
        vit.img_size = 32;
        let model = ModelConfig {
            vit,
            head: None,
            ibot_head: None,
        }
        .init(&device)
        .unwrap();
        let img = RgbImage::from_fn(32, 32, |x, y| {
            Rgb([(x * 8) as u8, (y * 8) as u8, ((x + y) * 4) as u8])
        });
        let prepared = prepare(&img, Resize::Square(32), 8).unwrap();
        let maps =
            crate::eval::render::compute_maps(&model.backbone, &prepared, 0, 0.6, &device).unwrap();
        assert_eq!((maps.grid_h, maps.grid_w), (4, 4));
        let head0 = maps.masks[0].clone();
        // The rectangle covers patch columns 0..2 of rows 1..4.
        let rect: Vec<bool> = (0..16).map(|k| k % 4 < 2 && k / 4 >= 1).collect();
        // Jaccard counted by hand, patch by patch (every patch is 8x8 pixels).
        let by_hand = |m: &[bool], gt: &[bool]| {
            let inter = (0..16).filter(|&k| m[k] && gt[k]).count();
            let union = (0..16).filter(|&k| m[k] || gt[k]).count();
            inter as f64 / union as f64
        };
        let to_png = |m: &[bool]| {
            GrayImage::from_fn(32, 32, |x, y| {
                Luma([if m[(y / 8 * 4 + x / 8) as usize] {
                    255
                } else {
                    0
                }])
            })
        };
        let complement: Vec<bool> = head0.iter().map(|b| !b).collect();
        assert_eq!(by_hand(&head0, &head0), 1.0);
        assert_eq!(by_hand(&head0, &complement), 0.0);
        for gt in [&head0, &complement, &rect] {
            let dir = tempfile::tempdir().unwrap();
            img.save(dir.path().join("scene.png")).unwrap();
            to_png(gt).save(dir.path().join("scene_mask.png")).unwrap();
            let source = crate::data::sources::open(dir.path().to_str().unwrap(), 0, 0, 0).unwrap();
            let r = segmentation(&model.backbone, source.as_ref(), 10, 32, 0.6, &device).unwrap();
            assert_eq!(r.images, 1);
            for (j, m) in maps.masks.iter().enumerate() {
                let want = by_hand(m, gt);
                assert!(
                    (r.per_head[j] - want).abs() < 1e-6,
                    "head {j}: {r:?}, by hand {want}"
                );
            }
            let mean_mask = mass_mask(&mean_map(&maps.heads), 0.6);
            assert!((r.head_mean_map - by_hand(&mean_mask, gt)).abs() < 1e-6);
            let best = r.per_head.iter().copied().fold(0.0, f64::max);
            assert_eq!(r.best_head, best);
            let mean = r.per_head.iter().sum::<f64>() / r.per_head.len() as f64;
            assert!((r.mean_heads - mean).abs() < 1e-12);
        }
    }
}
