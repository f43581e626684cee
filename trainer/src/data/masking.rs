//! iBOT's masked patches for DINOv2 / DINOv3 (`data/masking.py` `MaskingGenerator` and the mask
//! sampling of `data/collate.py` `collate_data_and_cast`): rectangular blocks of random area
//! and aspect on the patch grid, and per batch a share of the global crops masked with targets
//! spread evenly over the mask-ratio range.
//!
//! The random numbers are ours (ChaCha8 from the run's seed, so masks are reproducible and a
//! resumed run draws the same ones); their distribution is the official one, which a test
//! checks against statistics of the official generator.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Block masking on a patch grid (`MaskingGenerator`).
#[derive(Debug, Clone, PartialEq)]
pub struct MaskingGenerator {
    /// Grid rows.
    pub height: usize,
    /// Grid columns.
    pub width: usize,
    /// Smallest block area a proposal draws (4 official).
    pub min_num_patches: f64,
    /// Largest number of patches one block may add (`max_num_patches`).
    pub max_num_patches: f64,
    /// `ln` of the aspect-ratio range (0.3 … 1/0.3 official).
    pub log_aspect: (f64, f64),
    /// DINOv3: top up with random patches so that exactly the target is masked.
    pub complete_randomly: bool,
}

impl MaskingGenerator {
    /// The generator `train.py` builds for global crops of `img` pixels and patches of `patch`:
    /// grid `img / patch`, `max_num_patches = 0.5 * img // patch * img // patch` evaluated as
    /// Python does (left to right, floor divisions in floats).
    pub fn for_crops(img: usize, patch: usize, complete_randomly: bool) -> Self {
        let g = img / patch;
        let (img, patch) = (img as f64, patch as f64);
        let max = ((0.5 * img / patch).floor() * img / patch).floor();
        Self {
            height: g,
            width: g,
            min_num_patches: 4.0,
            max_num_patches: max,
            log_aspect: (0.3f64.ln(), (1.0f64 / 0.3).ln()),
            complete_randomly,
        }
    }

    /// Number of patches on the grid.
    pub fn num_patches(&self) -> usize {
        self.height * self.width
    }

    /// A mask (row-major `[height * width]`) of about `target` patches (`__call__`): blocks are
    /// added until the target is reached or a call adds nothing; DINOv3 then tops up randomly.
    pub fn generate(&self, target: usize, rng: &mut impl Rng) -> Vec<bool> {
        let mut mask = vec![false; self.num_patches()];
        let mut count = 0usize;
        while count < target {
            let max_add = ((target - count) as f64).min(self.max_num_patches);
            let delta = self.add_block(&mut mask, max_add, rng);
            if delta == 0 {
                break;
            }
            count += delta;
        }
        if self.complete_randomly && count < target {
            // `np.random.choice(unmasked, target - count, replace=False)`.
            let mut free: Vec<usize> = (0..mask.len()).filter(|&i| !mask[i]).collect();
            for k in 0..(target - count).min(free.len()) {
                let j = rng.random_range(k..free.len());
                free.swap(k, j);
                mask[free[k]] = true;
            }
        }
        mask
    }

    /// One block (`_mask`): up to 10 proposals; the first that adds patches without adding
    /// more than `max_add` is applied.
    fn add_block(&self, mask: &mut [bool], max_add: f64, rng: &mut impl Rng) -> usize {
        let mut delta = 0;
        for _ in 0..10 {
            let area = uniform(rng, self.min_num_patches, max_add);
            let aspect = uniform(rng, self.log_aspect.0, self.log_aspect.1).exp();
            // Python's round() rounds half to even.
            let h = (area * aspect).sqrt().round_ties_even() as usize;
            let w = (area / aspect).sqrt().round_ties_even() as usize;
            if w < self.width && h < self.height {
                let top = rng.random_range(0..=self.height - h);
                let left = rng.random_range(0..=self.width - w);
                let already = (top..top + h)
                    .flat_map(|i| (left..left + w).map(move |j| i * self.width + j))
                    .filter(|&k| mask[k])
                    .count();
                let new = h * w - already;
                if new > 0 && new as f64 <= max_add {
                    for i in top..top + h {
                        for j in left..left + w {
                            let k = i * self.width + j;
                            if !mask[k] {
                                mask[k] = true;
                                delta += 1;
                            }
                        }
                    }
                }
                if delta > 0 {
                    break;
                }
            }
        }
        delta
    }
}

/// `random.uniform(a, b)`: `a + (b - a) * U[0, 1)`.
fn uniform(rng: &mut impl Rng, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.random::<f64>()
}

/// How a batch's global crops are masked (`ibot.mask_sample_probability`,
/// `ibot.mask_ratio_min_max`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskSampling {
    /// Share of the `2B` global crops that get a mask (0.5 official).
    pub probability: f64,
    /// Smallest and largest masked share of a crop's patches (0.1, 0.5 official).
    pub ratio: (f64, f64),
    /// DINOv3: each masked crop's target is the top of its ratio interval, not a draw inside it.
    pub target_at_max: bool,
}

/// The masks of one batch, in the forms the losses consume.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchMasks {
    /// `[2B, N]` row-major, crop-major like the collated global crops.
    pub masks: Vec<bool>,
    /// Patches per crop (`N`).
    pub patches: usize,
    /// Flat indices into `[2B * N]` of the masked patches (`mask_indices_list`).
    pub indices: Vec<usize>,
    /// Per masked patch, `1 / (masked patches of its crop)` (`masks_weight`).
    pub weights: Vec<f32>,
    /// Sum of the per-crop target maxima (`upperbound`, the official buffer size).
    pub upperbound: usize,
}

impl BatchMasks {
    /// Number of global crops (`2B`).
    pub fn crops(&self) -> usize {
        self.masks.len() / self.patches.max(1)
    }

    /// Masked patches of each crop.
    pub fn counts(&self) -> Vec<usize> {
        masked_counts(&self.masks, self.patches)
    }

    /// The masks of the crops `rows` (indices into this batch's crops), in that order: one
    /// rank's share of masks drawn for the world's batch. The weights stay per crop; the
    /// upper bound (a buffer size of the official code, no term of the loss) is the whole
    /// batch's.
    pub fn rows(&self, rows: &[usize]) -> BatchMasks {
        let n = self.patches;
        let masks: Vec<bool> = rows
            .iter()
            .flat_map(|&r| self.masks[r * n..(r + 1) * n].iter().copied())
            .collect();
        BatchMasks::new(masks, n, self.upperbound)
    }

    /// The masks of crops of `patches` patches, row-major, with their indices and weights.
    fn new(masks: Vec<bool>, patches: usize, upperbound: usize) -> Self {
        let indices: Vec<usize> = (0..masks.len()).filter(|&i| masks[i]).collect();
        let counts = masked_counts(&masks, patches);
        let weights = indices
            .iter()
            .map(|&i| 1.0 / (counts[i / patches] as f32).max(1.0))
            .collect();
        BatchMasks {
            masks,
            patches,
            indices,
            weights,
            upperbound,
        }
    }
}

/// Masked patches of each crop of row-major `[crops, patches]` masks.
fn masked_counts(masks: &[bool], patches: usize) -> Vec<usize> {
    masks
        .chunks(patches.max(1))
        .map(|m| m.iter().filter(|&&b| b).count())
        .collect()
}

/// `torch.linspace(start, end, steps)` in f32 as PyTorch's CPU kernel computes it (from the
/// start for the first half, from the end for the second), so the integer targets derived
/// from it match the official ones exactly.
pub fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

/// Masks for `crops` global crops (`collate_data_and_cast`): `int(crops * probability)` of them
/// get targets spread over the ratio range (`linspace` intervals), the others none, shuffled.
pub fn sample_batch_masks(
    generator: &MaskingGenerator,
    crops: usize,
    sampling: &MaskSampling,
    rng: &mut impl Rng,
) -> BatchMasks {
    let n = generator.num_patches();
    let masked = (crops as f64 * sampling.probability) as usize;
    let probs = linspace_f32(sampling.ratio.0 as f32, sampling.ratio.1 as f32, masked + 1);
    let mut list = Vec::with_capacity(crops);
    let mut upperbound = 0usize;
    for i in 0..masked {
        let (lo, hi) = (probs[i], probs[i + 1]);
        let target = if sampling.target_at_max {
            (n as f32 * hi) as usize
        } else {
            // `random.uniform` on 0-d float32 tensors stays in float32.
            let u = rng.random::<f64>() as f32;
            (n as f32 * (lo + (hi - lo) * u)) as usize
        };
        list.push(generator.generate(target, rng));
        upperbound += (n as f32 * hi) as usize;
    }
    list.extend((masked..crops).map(|_| vec![false; n]));
    // `random.shuffle`: Fisher-Yates from the end.
    for i in (1..list.len()).rev() {
        let j = rng.random_range(0..=i);
        list.swap(i, j);
    }
    BatchMasks::new(list.concat(), n, upperbound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn the_official_max_num_patches_formula_is_evaluated_left_to_right() {
        assert_eq!(
            MaskingGenerator::for_crops(224, 16, false).max_num_patches,
            98.0
        );
        assert_eq!(
            MaskingGenerator::for_crops(224, 14, false).max_num_patches,
            128.0
        );
        // 0.5 * 112 // 16 = 3, * 112 // 16 = 21: not half of the 49 patches.
        assert_eq!(
            MaskingGenerator::for_crops(112, 16, false).max_num_patches,
            21.0
        );
    }

    #[test]
    fn masks_are_deterministic_under_the_seed_and_weights_sum_per_crop() {
        let generator = MaskingGenerator::for_crops(224, 16, false);
        let sampling = MaskSampling {
            probability: 0.5,
            ratio: (0.1, 0.5),
            target_at_max: false,
        };
        let draw = |seed| {
            sample_batch_masks(
                &generator,
                8,
                &sampling,
                &mut ChaCha8Rng::seed_from_u64(seed),
            )
        };
        let (a, b, c) = (draw(7), draw(7), draw(8));
        assert_eq!(a, b);
        assert_ne!(a.masks, c.masks);
        let counts = a.counts();
        assert_eq!(counts.iter().filter(|&&k| k > 0).count(), 4);
        let mut per_crop = vec![0.0f32; 8];
        for (&i, &w) in a.indices.iter().zip(&a.weights) {
            per_crop[i / a.patches] += w;
        }
        for (k, s) in counts.iter().zip(per_crop) {
            // A sum of k f32 terms 1/k: off by up to about k ulps.
            assert!(
                (s - if *k > 0 { 1.0 } else { 0.0 }).abs() < 1e-4,
                "{k}: {s}"
            );
        }
    }

    #[test]
    fn dinov3_masks_hit_their_target_exactly() {
        let generator = MaskingGenerator::for_crops(224, 16, true);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for target in [0, 4, 19, 77, 98] {
            let m = generator.generate(target, &mut rng);
            assert_eq!(m.iter().filter(|&&b| b).count(), target);
        }
    }

    #[test]
    fn linspace_matches_torch_f32() {
        // torch.linspace(0.1, 0.5, 5) in float32.
        let got = linspace_f32(0.1, 0.5, 5);
        let want = [0.1f32, 0.2, 0.3, 0.4, 0.5];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-7, "{got:?}");
        }
    }
}
