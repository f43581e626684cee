//! Evaluation: weighted k-NN on CLS features (`eval_knn.py`) and the Jaccard of
//! attention masks against ground-truth masks (the paper's segmentation probe).

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use dino_model::attention::{jaccard, mass_mask, mean_map, upsample_nearest};
use dino_model::preprocess::{Resize, prepare};
use dino_model::vit::VisionTransformer;
use image::RgbImage;

use crate::data::sources::Source;

/// L2-normalised CLS features of images resized to `size × size`, in batches.
pub fn features(
    backbone: &VisionTransformer,
    images: &[RgbImage],
    size: u32,
    device: &Device,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<Vec<f32>>> {
    let patch = backbone.patch_size();
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(32) {
        let prepared = chunk
            .iter()
            .map(|img| prepare(img, Resize::Square(size), patch))
            .collect::<Result<Vec<_>, _>>()?;
        let (h, w) = (prepared[0].height, prepared[0].width);
        let data: Vec<f32> = prepared
            .iter()
            .flat_map(|p| p.chw.iter().copied())
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(data, [chunk.len(), 3, h, w]), device);
        let feats: Vec<f32> = backbone
            .forward(x)
            .into_data()
            .try_to_vec()
            .context("reading features")?;
        let dim = feats.len() / chunk.len();
        for row in feats.chunks_exact(dim) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            out.push(row.iter().map(|v| v / norm).collect());
        }
        progress.inc(chunk.len() as u64);
    }
    Ok(out)
}

/// Result of a k-NN evaluation.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct KnnResult {
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Top-5 accuracy in percent (equal to top-1 when there are fewer than 5 classes).
    pub top5: f64,
    /// Chance level in percent (100 / classes).
    pub chance: f64,
}

/// `knn_classifier` of `eval_knn.py`: cosine similarity, top-k neighbours weighted by
/// `exp(sim / T)`, votes summed per class.
pub fn knn(
    train: &[Vec<f32>],
    train_labels: &[usize],
    test: &[Vec<f32>],
    test_labels: &[usize],
    k: usize,
    temperature: f64,
    classes: usize,
) -> KnnResult {
    let k = k.min(train.len()).max(1);
    let (mut top1, mut top5) = (0usize, 0usize);
    for (f, &label) in test.iter().zip(test_labels) {
        let mut sims: Vec<(f32, usize)> = train
            .iter()
            .zip(train_labels)
            .map(|(t, &l)| (t.iter().zip(f).map(|(a, b)| a * b).sum::<f32>(), l))
            .collect();
        sims.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut votes = vec![0.0f64; classes];
        for (s, l) in sims.iter().take(k) {
            votes[*l] += (*s as f64 / temperature).exp();
        }
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|a, b| votes[*b].total_cmp(&votes[*a]));
        top1 += (order[0] == label) as usize;
        top5 += order.iter().take(5).any(|&c| c == label) as usize;
    }
    let n = test.len().max(1) as f64;
    KnnResult {
        top1: 100.0 * top1 as f64 / n,
        top5: 100.0 * top5 as f64 / n,
        chance: 100.0 / classes.max(1) as f64,
    }
}

/// Loads up to `limit` labelled images of a source.
pub fn labelled(source: &dyn Source, limit: usize) -> Result<(Vec<RgbImage>, Vec<usize>)> {
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for i in 0..source.len().min(limit) {
        let s = source.get(i)?;
        let Some(l) = s.label else {
            bail!(
                "{} has no labels; k-NN needs class subfolders",
                source.describe()
            )
        };
        images.push(s.image);
        labels.push(l);
    }
    Ok((images, labels))
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
    segmentation_at(
        backbone,
        backbone.depth() - 1,
        source,
        limit,
        size,
        threshold,
        device,
        &indicatif::ProgressBar::hidden(),
    )
}

/// As [`segmentation`], for the CLS attention of block `layer`; `progress` advances by one
/// per sample looked at.
#[allow(clippy::too_many_arguments)]
pub fn segmentation_at(
    backbone: &VisionTransformer,
    layer: usize,
    source: &dyn Source,
    limit: usize,
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
    for i in 0..source.len().min(limit) {
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

    #[test]
    fn knn_votes_by_weighted_neighbours() {
        let train = vec![vec![1.0, 0.0], vec![0.9, 0.1], vec![0.0, 1.0]];
        let labels = [0, 0, 1];
        let test = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let r = knn(&train, &labels, &test, &[0, 1], 1, 0.07, 2);
        assert_eq!(r.top1, 100.0);
        let r = knn(&train, &labels, &test, &[1, 0], 1, 0.07, 2);
        assert_eq!(r.top1, 0.0);
        assert_eq!(r.chance, 50.0);
    }
}
