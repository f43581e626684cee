//! The k-NN protocol of `eval_knn.py`: each image resized (PIL bicubic, shorter side 256)
//! and centre-cropped (224), the L2-normalised CLS features of the frozen backbone, and
//! each validation image classified by the votes of its k nearest training features
//! weighted by `exp(sim / T)`, for several k from one set of features.
//!
//! Images are decoded, transformed and forwarded in batches and dropped: only the
//! features are kept, so whole ImageNet-style splits fit in memory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use dino_model::Normalization;
use dino_model::pil_resize::{self, PilFilter};
use dino_model::preprocess::normalize_chw_with;
use dino_model::vit::VisionTransformer;
use image::RgbImage;
use rayon::prelude::*;

use crate::data::sources::{Source, fnv1a};

/// The evaluation transform: torchvision's `Resize(resize, BICUBIC)` (shorter side) then
/// `CenterCrop(crop)`, then normalisation with the weights' statistics.
#[derive(Debug, Clone, Copy)]
pub struct EvalTransform {
    /// Shorter side after resizing (the official 256).
    pub resize: u32,
    /// Side of the centre crop (the official 224).
    pub crop: u32,
    /// Pixel statistics the weights were trained with.
    pub norm: Normalization,
}

impl EvalTransform {
    /// `eval_knn.py`'s sizes with the given statistics.
    pub fn official(norm: Normalization) -> Self {
        Self {
            resize: 256,
            crop: 224,
            norm,
        }
    }

    /// The cropped RGB image the network sees.
    pub fn view(&self, img: &RgbImage) -> Result<RgbImage> {
        if self.crop > self.resize {
            bail!(
                "the crop ({} px) is larger than the resized image's shorter side ({} px)",
                self.crop,
                self.resize
            );
        }
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            bail!("the image is empty");
        }
        // torchvision's `_compute_resized_output_size`: the longer side is truncated.
        let (tw, th) = if w <= h {
            (
                self.resize,
                (self.resize as f64 * h as f64 / w as f64) as u32,
            )
        } else {
            (
                (self.resize as f64 * w as f64 / h as f64) as u32,
                self.resize,
            )
        };
        let resized = pil_resize::resize(img, tw, th, PilFilter::Bicubic);
        // torchvision's `center_crop` rounds the offset with Python's round (half to even).
        let top = round_half_even((th - self.crop) as f64 / 2.0);
        let left = round_half_even((tw - self.crop) as f64 / 2.0);
        Ok(image::imageops::crop_imm(&resized, left, top, self.crop, self.crop).to_image())
    }

    /// Normalised `[3, crop, crop]` values of `img`.
    pub fn apply(&self, img: &RgbImage) -> Result<Vec<f32>> {
        Ok(normalize_chw_with(&self.view(img)?, self.norm))
    }
}

/// Python's `round`: halves go to the even neighbour.
fn round_half_even(x: f64) -> u32 {
    let r = x.round();
    let r = if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    };
    r as u32
}

/// Indices of at most `limit` samples spread over the classes: each class gets an equal
/// share (a class with fewer samples gives its rest to the others), taken evenly along the
/// class's own order. `None` keeps everything.
pub fn select_per_class(labels: &[usize], classes: usize, limit: Option<usize>) -> Vec<usize> {
    let Some(limit) = limit.filter(|&l| l < labels.len()) else {
        return (0..labels.len()).collect();
    };
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        members[l].push(i);
    }
    let mut quota = vec![0usize; classes];
    let mut left = limit;
    while left > 0 {
        let open: Vec<usize> = (0..classes)
            .filter(|&c| quota[c] < members[c].len())
            .collect();
        if open.is_empty() {
            break;
        }
        let share = (left / open.len()).max(1);
        for c in open {
            if left == 0 {
                break;
            }
            let add = share.min(members[c].len() - quota[c]).min(left);
            quota[c] += add;
            left -= add;
        }
    }
    let mut out: Vec<usize> = members
        .iter()
        .zip(&quota)
        .flat_map(|(m, &q)| (0..q).map(move |j| m[j * m.len() / q]))
        .collect();
    out.sort_unstable();
    out
}

/// What was kept of a split, for the user: "kept 60 of 900 images: 2 to 3 of each of 30 classes".
pub fn kept_account(name: &str, labels: &[usize], kept: &[usize], classes: usize) -> String {
    let mut per = vec![0usize; classes];
    for &i in kept {
        per[labels[i]] += 1;
    }
    let present: Vec<usize> = per.iter().copied().filter(|&n| n > 0).collect();
    let (lo, hi) = (
        present.iter().copied().min().unwrap_or(0),
        present.iter().copied().max().unwrap_or(0),
    );
    let range = if lo == hi {
        format!("{lo}")
    } else {
        format!("{lo} to {hi}")
    };
    format!(
        "{name}: kept {} of {} images: {range} of each of {} classes",
        kept.len(),
        labels.len(),
        present.len()
    )
}

/// The labels of every sample of a labelled source; an error names a source without them.
pub fn labels_of(source: &dyn Source) -> Result<Vec<usize>> {
    (0..source.len())
        .map(|i| {
            source.label(i)?.with_context(|| {
                format!(
                    "{} has no labels; k-NN needs one subfolder per class",
                    source.describe()
                )
            })
        })
        .collect()
}

/// L2-normalised features of one split, row-major `[len, dim]`, with their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// `len × dim` values.
    pub data: Vec<f32>,
    /// Feature width.
    pub dim: usize,
    /// Class of each row.
    pub labels: Vec<usize>,
}

impl Features {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// CLS features of the samples `picks` (index, label) of `source`, `batch` images per
/// forward; the images are decoded and transformed in parallel and dropped once forwarded.
pub fn extract(
    backbone: &VisionTransformer,
    source: &dyn Source,
    picks: &[(usize, usize)],
    transform: &EvalTransform,
    batch: usize,
    device: &Device,
    progress: &indicatif::ProgressBar,
) -> Result<Features> {
    let patch = backbone.patch_size() as u32;
    if !transform.crop.is_multiple_of(patch) {
        bail!(
            "the crop of {} px is not a multiple of the model's {patch}-pixel patches",
            transform.crop
        );
    }
    let side = transform.crop as usize;
    let mut data = Vec::new();
    let mut dim = 0;
    for chunk in picks.chunks(batch.max(1)) {
        let pixels = chunk
            .par_iter()
            .map(|&(i, _)| {
                let s = source.get(i)?;
                transform
                    .apply(&s.image)
                    .with_context(|| format!("sample {i} of {}", source.describe()))
            })
            .collect::<Result<Vec<_>>>()?;
        let x = Tensor::<4>::from_data(
            TensorData::new(pixels.concat(), [chunk.len(), 3, side, side]),
            device,
        );
        dim = push_normalized_cls(backbone, x, &mut data)?;
        progress.inc(chunk.len() as u64);
    }
    Ok(Features {
        data,
        dim,
        labels: picks.iter().map(|&(_, l)| l).collect(),
    })
}

/// Appends the L2-normalised CLS features of a batch to `out` (`F.normalize(p=2)`:
/// x / max(‖x‖, 1e-12)); returns their width.
pub fn push_normalized_cls(
    backbone: &VisionTransformer,
    images: Tensor<4>,
    out: &mut Vec<f32>,
) -> Result<usize> {
    let [batch, ..] = images.dims();
    let feats: Vec<f32> = backbone
        .forward(images)
        .into_data()
        .try_to_vec()
        .context("reading features")?;
    let dim = feats.len() / batch.max(1);
    for row in feats.chunks_exact(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        out.extend(row.iter().map(|v| v / norm));
    }
    Ok(dim)
}

/// One k's accuracies.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct KnnResult {
    /// Neighbours voting.
    pub k: usize,
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Top-5 accuracy in percent; as in `eval_knn.py`, only the first `min(5, k)`
    /// predictions count.
    pub top5: f64,
}

/// `knn_classifier` of `eval_knn.py` for every k of `ks` at once: cosine similarities
/// computed on `device` a block of validation rows at a time, the `max(ks)` nearest training
/// rows kept, and for each k the classes ranked by `Σ exp(sim / T)` over its first k
/// neighbours (ties by class index).
pub fn classify(
    train: &Features,
    val: &Features,
    ks: &[usize],
    temperature: f64,
    classes: usize,
    device: &Device,
) -> Result<Vec<KnnResult>> {
    if train.is_empty() || val.is_empty() {
        bail!("k-NN needs at least one training and one validation image");
    }
    if train.dim != val.dim {
        bail!(
            "training features have {} values, validation features {}",
            train.dim,
            val.dim
        );
    }
    if let Some(&k) = ks.iter().find(|&&k| k == 0 || k > train.len()) {
        bail!(
            "k = {k} needs between 1 and {} training images (the training split's size)",
            train.len()
        );
    }
    let max_k = ks.iter().copied().max().unwrap_or(1);
    let (n, d) = (train.len(), train.dim);
    let bank =
        Tensor::<2>::from_data(TensorData::new(train.data.clone(), [n, d]), device).transpose();
    let mut hits = vec![(0usize, 0usize); ks.len()];
    const BLOCK: usize = 256;
    for (b, rows) in val.data.chunks(BLOCK * d).enumerate() {
        let m = rows.len() / d;
        let q = Tensor::<2>::from_data(TensorData::new(rows.to_vec(), [m, d]), device);
        let sims: Vec<f32> = q
            .matmul(bank.clone())
            .into_data()
            .try_to_vec()
            .context("reading similarities")?;
        for (r, row) in sims.chunks_exact(n).enumerate() {
            let target = val.labels[b * BLOCK + r];
            let mut order: Vec<usize> = (0..n).collect();
            let by_sim = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]);
            if max_k < n {
                order.select_nth_unstable_by(max_k - 1, by_sim);
                order.truncate(max_k);
            }
            order.sort_by(by_sim);
            for (j, &k) in ks.iter().enumerate() {
                let mut votes = vec![0.0f64; classes];
                for &t in &order[..k] {
                    votes[train.labels[t]] += ((row[t] as f64) / temperature).exp();
                }
                let mut ranked: Vec<usize> = (0..classes).collect();
                ranked.sort_by(|a, b| votes[*b].total_cmp(&votes[*a]));
                hits[j].0 += (ranked[0] == target) as usize;
                hits[j].1 += ranked.iter().take(5.min(k)).any(|&c| c == target) as usize;
            }
        }
    }
    let total = val.len() as f64;
    Ok(ks
        .iter()
        .zip(hits)
        .map(|(&k, (t1, t5))| KnnResult {
            k,
            top1: 100.0 * t1 as f64 / total,
            top5: 100.0 * t5 as f64 / total,
        })
        .collect())
}

/// Features saved beside a model so that another k, temperature or run costs nothing: one
/// safetensors file per (weights, data, selection, transform), named by a hash of them.
pub struct FeatureCache {
    path: PathBuf,
    key: String,
}

impl FeatureCache {
    /// The cache file for these inputs in `dir`: the key covers the checkpoint's path, size
    /// and modification time, both sources' fingerprints and selections, and the transform.
    pub fn new(
        dir: &Path,
        checkpoint: &Path,
        splits: [(&dyn Source, &[usize]); 2],
        transform: &EvalTransform,
    ) -> Self {
        let meta = std::fs::metadata(checkpoint).ok();
        let mut text = format!(
            "{}\n{:?}\n{:?}\n{} {} {:?} {:?}\n",
            std::fs::canonicalize(checkpoint)
                .unwrap_or_else(|_| checkpoint.to_path_buf())
                .display(),
            meta.as_ref().map(|m| m.len()),
            meta.and_then(|m| m.modified().ok()),
            transform.resize,
            transform.crop,
            transform.norm.mean,
            transform.norm.std,
        );
        for (source, indices) in splits {
            text.push_str(&format!(
                "{} {}\n{:016x}\n",
                source.describe(),
                source.fingerprint(),
                fnv1a(
                    &indices
                        .iter()
                        .flat_map(|i| (*i as u64).to_le_bytes())
                        .collect::<Vec<_>>()
                )
            ));
        }
        let key = format!("{:016x}", fnv1a(text.as_bytes()));
        Self {
            path: dir.join(format!("knn-{key}.safetensors")),
            key,
        }
    }

    /// The file it reads and writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cached training and validation features, if this file holds them.
    pub fn load(&self) -> Option<(Features, Features)> {
        let bytes = std::fs::read(&self.path).ok()?;
        let (meta, tensors) = dino_model::checkpoint::read_safetensors(&bytes).ok()?;
        if meta.get("dino.knn_key") != Some(&self.key) {
            return None;
        }
        let split = |name: &str| -> Option<Features> {
            let f = tensors.get(&format!("{name}_features"))?;
            let l = tensors.get(&format!("{name}_labels"))?;
            let [rows, dim] = f.shape[..] else {
                return None;
            };
            (l.data.len() == rows).then(|| Features {
                data: f.data.clone(),
                dim,
                labels: l.data.iter().map(|&v| v as usize).collect(),
            })
        };
        Some((split("train")?, split("val")?))
    }

    /// Writes both splits' features atomically.
    pub fn save(&self, train: &Features, val: &Features) -> Result<()> {
        let labels = |f: &Features| -> Vec<u8> {
            f.labels
                .iter()
                .flat_map(|&l| (l as f32).to_le_bytes())
                .collect()
        };
        let values =
            |f: &Features| -> Vec<u8> { f.data.iter().flat_map(|v| v.to_le_bytes()).collect() };
        let owned = [
            (
                "train_features",
                values(train),
                vec![train.len(), train.dim],
            ),
            ("train_labels", labels(train), vec![train.len()]),
            ("val_features", values(val), vec![val.len(), val.dim]),
            ("val_labels", labels(val), vec![val.len()]),
        ];
        let views = owned
            .iter()
            .map(|(name, bytes, shape)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map(|v| (*name, v))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let meta =
            std::collections::HashMap::from([("dino.knn_key".to_string(), self.key.clone())]);
        let bytes = safetensors::serialize(views, Some(meta))?;
        crate::io::files::write_atomic(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_round_goes_half_to_even() {
        let got: Vec<u32> = [0.0, 0.5, 1.5, 2.5, 3.49, 3.5, 16.0]
            .iter()
            .map(|&x| round_half_even(x))
            .collect();
        assert_eq!(got, [0, 0, 2, 2, 3, 4, 16]);
    }

    /// 30 classes of different sizes and a limit of 60: every class is represented, the
    /// total is the limit, a small class gives its share to the others, and no index repeats.
    #[test]
    fn the_limit_is_shared_by_every_class() {
        let mut labels = Vec::new();
        for c in 0..30 {
            let n = if c == 7 { 1 } else { 5 + c % 4 };
            labels.extend(std::iter::repeat_n(c, n));
        }
        let kept = select_per_class(&labels, 30, Some(60));
        assert_eq!(kept.len(), 60);
        let mut per_class = [0usize; 30];
        for &i in &kept {
            per_class[labels[i]] += 1;
        }
        assert!(per_class.iter().all(|&n| n >= 1), "{per_class:?}");
        assert_eq!(per_class[7], 1);
        assert!(per_class.iter().all(|&n| n <= 3), "{per_class:?}");
        let mut unique = kept.clone();
        unique.dedup();
        assert_eq!(unique.len(), 60);
        assert_eq!(select_per_class(&labels, 30, None).len(), labels.len());
        assert_eq!(
            select_per_class(&labels, 30, Some(10_000)).len(),
            labels.len()
        );
    }

    #[test]
    fn votes_are_weighted_by_similarity_and_top5_counts_min_5_k() {
        let f = |rows: &[[f32; 2]], labels: &[usize]| Features {
            data: rows.iter().flatten().copied().collect(),
            dim: 2,
            labels: labels.to_vec(),
        };
        // Two far neighbours of class 1 against one near neighbour of class 0.
        let train = f(&[[1.0, 0.0], [0.6, 0.8], [0.6, 0.8]], &[0, 1, 1]);
        let val = f(&[[1.0, 0.0]], &[0]);
        let device = Device::flex();
        let r = classify(&train, &val, &[1, 3], 0.07, 2, &device).unwrap();
        assert_eq!((r[0].top1, r[0].top5), (100.0, 100.0));
        // exp(1/0.07) outweighs 2·exp(0.6/0.07).
        assert_eq!(r[1].top1, 100.0);
        let r = classify(&train, &val, &[3], 10.0, 2, &device).unwrap();
        assert_eq!(r[0].top1, 0.0);
        assert_eq!(r[0].top5, 100.0);
        assert!(classify(&train, &val, &[4], 0.07, 2, &device).is_err());
    }
}
