//! The linear probe of `eval_linear.py`: a linear layer (no BatchNorm) trained on the frozen
//! backbone's features — the CLS tokens of the last `n` blocks, optionally with the average
//! patch token — with SGD (momentum 0.9, no weight decay, lr scaled by batch / 256) and a
//! cosine schedule stepped per epoch, on RandomResizedCrop + flip views; validated on
//! Resize + CenterCrop views. Several learning rates can be trained side by side on the same
//! batches (the grid DINOv2's `linear.py` searches), each its own classifier.

use anyhow::{Context, Result, bail};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Tensor, TensorData};
use dino_model::Normalization;
use dino_model::pil_resize::{self, PilFilter};
use dino_model::preprocess::normalize_chw_with;
use dino_model::vit::VisionTransformer;
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::augment::random_resized_crop_params;
use crate::data::sources::Source;
use crate::eval::knn::EvalTransform;

/// What the classifier reads of the backbone (`--n_last_blocks`, `--avgpool_patchtokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeInput {
    /// CLS tokens of this many last blocks, concatenated.
    pub n_last_blocks: usize,
    /// Also the mean of the last block's patch tokens.
    pub avgpool: bool,
}

impl ProbeInput {
    /// Checks the setting against the model.
    pub fn check(&self, backbone: &VisionTransformer) -> Result<()> {
        if self.n_last_blocks == 0 || self.n_last_blocks > backbone.depth() {
            bail!(
                "--n-last-blocks {}: the model has {} blocks",
                self.n_last_blocks,
                backbone.depth()
            );
        }
        if self.avgpool && self.n_last_blocks != 1 {
            bail!(
                "--avgpool-patchtokens needs --n-last-blocks 1, as in eval_linear.py (its concatenation of the pooled patch token lines up with one block only)"
            );
        }
        Ok(())
    }

    /// Width of the classifier's input.
    pub fn width(&self, backbone: &VisionTransformer) -> usize {
        backbone.embed_dim() * (self.n_last_blocks + self.avgpool as usize)
    }

    /// The classifier's input for a batch of images.
    ///
    /// # Shapes
    /// `images`: `[batch, 3, h, w]` → `[batch, width]`.
    pub fn features(&self, backbone: &VisionTransformer, images: Tensor<4>) -> Tensor<2> {
        let blocks = backbone.last_blocks(images, self.n_last_blocks);
        let [b, tokens, d] = blocks[0].dims();
        let cls: Vec<Tensor<2>> = blocks
            .iter()
            .map(|t| t.clone().narrow(1, 0, 1).reshape([b, d]))
            .collect();
        if !self.avgpool {
            return Tensor::cat(cls, 1);
        }
        // eval_linear.py: cat((cls.unsqueeze(-1), mean.unsqueeze(-1)), -1).reshape(b, -1)
        // interleaves the two vectors. The patch tokens follow the CLS and register tokens.
        let prefix = backbone.prefix_tokens();
        let mean = blocks[0]
            .clone()
            .narrow(1, prefix, tokens - prefix)
            .mean_dim(1)
            .reshape([b, d]);
        Tensor::stack::<3>(vec![cls[0].clone(), mean], 2).reshape([b, 2 * d])
    }
}

/// A training view: the crop box (top, left, height, width) and whether it is flipped.
pub type View = ((u32, u32, u32, u32), bool);

/// Where the training views come from: the sampler's order each epoch and each image's
/// random crop and flip. Seeded per (epoch, image), so a resumed run draws the same views.
pub trait Views: Sync {
    /// The order in which epoch `epoch` serves the `n` training images.
    fn order(&self, epoch: usize, n: usize) -> Vec<usize>;
    /// The view of image `index` (of `width × height` pixels) in epoch `epoch`.
    fn view(&self, epoch: usize, index: usize, width: u32, height: u32) -> View;
}

/// [`Views`] drawn from a seed: `RandomResizedCrop` (scale 0.08–1, ratio 3/4–4/3) and a
/// flip with probability ½, as torchvision draws them.
pub struct SeededViews {
    /// The run's seed.
    pub seed: u64,
}

impl SeededViews {
    fn rng(&self, epoch: usize, index: usize) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(((epoch as u64) << 32) ^ index as u64);
        rng
    }
}

impl Views for SeededViews {
    fn order(&self, epoch: usize, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut self.rng(epoch, usize::MAX >> 32));
        order
    }

    fn view(&self, epoch: usize, index: usize, width: u32, height: u32) -> View {
        let mut rng = self.rng(epoch, index);
        let crop = random_resized_crop_params(&mut rng, width, height, (0.08, 1.0));
        (crop, rng.random_bool(0.5))
    }
}

/// `F.resized_crop(img, top, left, h, w, size)` with PIL's bilinear filter, then the flip,
/// as normalised `[3, size, size]` values.
pub fn train_view(img: &RgbImage, view: View, size: u32, norm: Normalization) -> Vec<f32> {
    let ((top, left, h, w), flip) = view;
    let cropped = image::imageops::crop_imm(img, left, top, w, h).to_image();
    let mut out = pil_resize::resize(&cropped, size, size, PilFilter::Bilinear);
    if flip {
        image::imageops::flip_horizontal_in_place(&mut out);
    }
    normalize_chw_with(&out, norm)
}

/// A linear layer `weight · x + bias` and its SGD momentum buffers.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// `[classes, width]`.
    pub weight: Tensor<2>,
    /// `[classes]`.
    pub bias: Tensor<1>,
    /// Momentum buffers (absent before the first step, as in torch.optim.SGD).
    pub momentum: Option<(Tensor<2>, Tensor<1>)>,
    /// Learning rate at batch size 256 (scaled by batch / 256 when used).
    pub lr: f64,
}

impl Classifier {
    /// `LinearClassifier`'s initialisation: weights from N(0, 0.01²), zero bias.
    pub fn new(width: usize, classes: usize, lr: f64, rng: &mut impl Rng, device: &Device) -> Self {
        // Box–Muller: u1 in (0, 1] keeps the logarithm finite.
        let w: Vec<f32> = (0..width * classes)
            .map(|_| {
                let u1 = 1.0 - rng.random::<f64>();
                let u2 = rng.random::<f64>();
                (0.01 * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        Self::from_values(&w, &vec![0.0; classes], classes, width, lr, device)
    }

    /// A classifier from given weights (`[classes × width]` row-major) and bias.
    pub fn from_values(
        weight: &[f32],
        bias: &[f32],
        classes: usize,
        width: usize,
        lr: f64,
        device: &Device,
    ) -> Self {
        Self {
            weight: Tensor::from_data(TensorData::new(weight.to_vec(), [classes, width]), device),
            bias: Tensor::from_data(TensorData::new(bias.to_vec(), [classes]), device),
            momentum: None,
            lr,
        }
    }

    /// Logits `[batch, classes]` of inputs `[batch, width]`.
    pub fn logits(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.weight.clone().transpose()) + self.bias.clone().unsqueeze_dim(0)
    }

    /// One SGD step on the cross-entropy of `x` against one-hot `targets`, at learning rate
    /// `lr`; returns the loss before the step. The gradient is the closed form
    /// `(softmax − onehot) / batch`, what autograd computes for `nn.CrossEntropyLoss`.
    pub fn step(&mut self, x: Tensor<2>, targets: Tensor<2>, lr: f64) -> Tensor<1> {
        let [batch, _] = x.dims();
        let z = self.logits(x.clone());
        let loss = (targets.clone() * log_softmax(z.clone(), 1))
            .sum()
            .neg()
            .div_scalar(batch as f64);
        let dz = (softmax(z, 1) - targets).div_scalar(batch as f64);
        let gw = dz.clone().transpose().matmul(x);
        let [_, classes] = dz.dims();
        let gb = dz.sum_dim(0).reshape([classes]);
        // torch.optim.SGD: buf = momentum·buf + grad (buf = grad at the first step).
        let (mw, mb) = match self.momentum.take() {
            None => (gw, gb),
            Some((mw, mb)) => (mw.mul_scalar(0.9) + gw, mb.mul_scalar(0.9) + gb),
        };
        self.weight = self.weight.clone() - mw.clone().mul_scalar(lr);
        self.bias = self.bias.clone() - mb.clone().mul_scalar(lr);
        self.momentum = Some((mw, mb));
        loss
    }
}

/// `CosineAnnealingLR(T_max = epochs, eta_min = 0)` stepped once per epoch: the learning
/// rate of epoch `epoch`.
pub fn cosine_lr(base: f64, epoch: usize, epochs: usize) -> f64 {
    base * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs as f64).cos()) / 2.0
}

/// One-hot rows for `labels`.
fn one_hot(labels: &[usize], classes: usize, device: &Device) -> Tensor<2> {
    let mut v = vec![0.0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        v[i * classes + l] = 1.0;
    }
    Tensor::from_data(TensorData::new(v, [labels.len(), classes]), device)
}

/// The frozen backbone and how its features are read.
pub struct Probe<'a> {
    /// The backbone (never updated).
    pub backbone: &'a VisionTransformer,
    /// Which tokens feed the classifier.
    pub input: ProbeInput,
    /// Validation transform; its crop is also the training views' size.
    pub transform: EvalTransform,
    /// Images per step.
    pub batch: usize,
    /// Where tensors live.
    pub device: &'a Device,
}

impl Probe<'_> {
    fn forward(&self, pixels: Vec<f32>, n: usize) -> Tensor<2> {
        let side = self.transform.crop as usize;
        let x = Tensor::<4>::from_data(TensorData::new(pixels, [n, 3, side, side]), self.device);
        self.input.features(self.backbone, x)
    }

    /// One epoch over the training picks `(index, label)` in the order `views` gives; every
    /// classifier takes a step on every batch. Returns each step's loss per classifier.
    #[allow(clippy::too_many_arguments)]
    pub fn train_epoch(
        &self,
        source: &dyn Source,
        picks: &[(usize, usize)],
        classes: usize,
        classifiers: &mut [Classifier],
        views: &dyn Views,
        epoch: usize,
        epochs: usize,
        progress: &indicatif::ProgressBar,
    ) -> Result<Vec<Vec<f64>>> {
        let order = views.order(epoch, picks.len());
        let size = self.transform.crop;
        let mut losses = vec![Vec::new(); classifiers.len()];
        for chunk in order.chunks(self.batch.max(1)) {
            let pixels = chunk
                .par_iter()
                .map(|&p| {
                    let (i, _) = picks[p];
                    let img = source.get(i)?.image;
                    let view = views.view(epoch, p, img.width(), img.height());
                    Ok(train_view(&img, view, size, self.transform.norm))
                })
                .collect::<Result<Vec<_>>>()?;
            let x = self.forward(pixels.concat(), chunk.len());
            let labels: Vec<usize> = chunk.iter().map(|&p| picks[p].1).collect();
            let targets = one_hot(&labels, classes, self.device);
            let step_losses: Vec<Tensor<1>> = classifiers
                .iter_mut()
                .map(|c| {
                    let lr = cosine_lr(c.lr * self.batch as f64 / 256.0, epoch, epochs);
                    c.step(x.clone(), targets.clone(), lr)
                })
                .collect();
            let values: Vec<f32> = Tensor::cat(step_losses, 0)
                .into_data()
                .try_to_vec()
                .context("reading the losses")?;
            for (l, v) in losses.iter_mut().zip(values) {
                l.push(v as f64);
            }
            progress.inc(chunk.len() as u64);
        }
        Ok(losses)
    }

    /// The classifier inputs of the validation picks, computed once (the backbone is frozen
    /// and the view fixed), row-major `[picks, width]`.
    pub fn val_inputs(
        &self,
        source: &dyn Source,
        picks: &[(usize, usize)],
        progress: &indicatif::ProgressBar,
    ) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for chunk in picks.chunks(self.batch.max(1)) {
            let pixels = chunk
                .par_iter()
                .map(|&(i, _)| {
                    let s = source.get(i)?;
                    self.transform
                        .apply(&s.image)
                        .with_context(|| format!("sample {i} of {}", source.describe()))
                })
                .collect::<Result<Vec<_>>>()?;
            let f: Vec<f32> = self
                .forward(pixels.concat(), chunk.len())
                .into_data()
                .try_to_vec()
                .context("reading features")?;
            out.extend(f);
            progress.inc(chunk.len() as u64);
        }
        Ok(out)
    }

    /// `validate_network`: top-1 and top-5 in percent over the images, and the mean over
    /// batches of each batch's mean cross-entropy (its metric logger's average).
    pub fn validate(
        &self,
        inputs: &[f32],
        labels: &[usize],
        classes: usize,
        classifier: &Classifier,
    ) -> Result<Validation> {
        let width = inputs.len() / labels.len().max(1);
        let (mut top1, mut top5, mut loss_sum, mut batches) = (0usize, 0usize, 0.0f64, 0usize);
        for (rows, labels) in inputs
            .chunks(self.batch.max(1) * width)
            .zip(labels.chunks(self.batch.max(1)))
        {
            let x = Tensor::<2>::from_data(
                TensorData::new(rows.to_vec(), [labels.len(), width]),
                self.device,
            );
            let z = classifier.logits(x);
            let logp: Vec<f32> = log_softmax(z, 1)
                .into_data()
                .try_to_vec()
                .context("reading logits")?;
            let mut batch_loss = 0.0f64;
            for (row, &l) in logp.chunks_exact(classes).zip(labels) {
                batch_loss -= row[l] as f64;
                // Ties rank the lower class first.
                let better = row
                    .iter()
                    .enumerate()
                    .filter(|&(c, &v)| v > row[l] || (v == row[l] && c < l))
                    .count();
                top1 += (better == 0) as usize;
                top5 += (better < 5) as usize;
            }
            loss_sum += batch_loss / labels.len() as f64;
            batches += 1;
        }
        let n = labels.len().max(1) as f64;
        Ok(Validation {
            acc1: 100.0 * top1 as f64 / n,
            acc5: (classes >= 5).then_some(100.0 * top5 as f64 / n),
            loss: loss_sum / batches.max(1) as f64,
        })
    }
}

/// Validation accuracies.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Validation {
    /// Top-1 in percent.
    pub acc1: f64,
    /// Top-5 in percent (absent below 5 classes, as in eval_linear.py).
    pub acc5: Option<f64>,
    /// Mean cross-entropy.
    pub loss: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed-form step equals a finite-difference gradient of the loss it reports.
    #[test]
    fn the_step_follows_the_cross_entropy_gradient() {
        let device = Device::flex();
        let x = [0.3f32, -1.2, 0.5, 0.9, 0.1, -0.4];
        let (w, b) = ([0.2f32, -0.1, 0.05, 0.3], [0.1f32, -0.1]);
        let labels = [1usize, 0, 1];
        let loss_at = |w: &[f32]| -> f64 {
            let c = Classifier::from_values(w, &b, 2, 2, 0.0, &device);
            let xt = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [3, 2]), &device);
            let mut c2 = c.clone();
            let l: Vec<f32> = c2
                .step(xt, one_hot(&labels, 2, &device), 0.0)
                .into_data()
                .try_to_vec()
                .unwrap();
            l[0] as f64
        };
        let mut c = Classifier::from_values(&w, &b, 2, 2, 0.0, &device);
        let xt = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [3, 2]), &device);
        c.step(xt, one_hot(&labels, 2, &device), 1.0);
        let after: Vec<f32> = c.weight.into_data().try_to_vec().unwrap();
        for j in 0..4 {
            let grad = w[j] - after[j];
            let (mut up, mut down) = (w, w);
            up[j] += 1e-3;
            down[j] -= 1e-3;
            let numeric = (loss_at(&up) - loss_at(&down)) / 2e-3;
            assert!(
                (grad as f64 - numeric).abs() < 1e-3,
                "{j}: {grad} vs {numeric}"
            );
        }
    }

    #[test]
    fn seeded_views_repeat_and_differ_by_epoch() {
        let v = SeededViews { seed: 3 };
        assert_eq!(v.order(0, 50), v.order(0, 50));
        assert_ne!(v.order(0, 50), v.order(1, 50));
        assert_eq!(v.view(2, 7, 40, 30), v.view(2, 7, 40, 30));
        let mut sorted = v.order(4, 50);
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }
}
