//! A step's inputs: the loader's crops as tensors, and the randomness the official loop draws
//! per step (DINO's per-sample drop path; DINOv2's batch-subset drop path and iBOT's masks),
//! each from the run's seed and the step, so that a resumed step draws what the
//! uninterrupted run drew and N ranks draw what one process of N× the batch draws.

use burn::tensor::{Device, Tensor, TensorData};
use dino_model::DinoModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::masking::{MaskingGenerator, sample_batch_masks};
use crate::data::pipeline::{Batch, Shard, derive_seed};
use crate::loss::objective::StepInputs;

use super::config::TrainConfig;
use super::networks::Networks;

/// RNG stream of DINO's per-sample drop path.
const STREAM_DROP_PATH: u64 = 3;
/// RNG stream of DINOv2's batch-subset drop path.
const STREAM_SUBSET_DROP_PATH: u64 = 4;
/// RNG stream of iBOT's masks.
const STREAM_MASKS: u64 = 5;

/// The crops of `batch` as the step takes them, with the method's per-step randomness drawn
/// from the run's seed and the step (so a resumed step draws the same): DINO's per-sample
/// drop path; DINOv2's batch-subset drop path at the uniform rate and iBOT's masks.
pub fn step_inputs(
    cfg: &TrainConfig,
    nets: &Networks,
    batch: &Batch,
    masking: Option<&MaskingGenerator>,
    step: u64,
    ad_device: &Device,
) -> StepInputs {
    let ncrops = cfg.data.ncrops();
    let b = cfg.data.batch_size;
    let rows = [2 * b, (ncrops - 2) * b];
    let globals = crops_tensor(batch, 0..2, ad_device);
    let locals = (ncrops > 2).then(|| crops_tensor(batch, 2..ncrops, ad_device));
    let Some(objective) = &cfg.objective.dinov2 else {
        let drop =
            [0, 1].map(|g| drop_path_masks(&nets.student, cfg, step, g as u64, rows[g], ad_device));
        return StepInputs {
            globals,
            locals,
            drop,
            masks: None,
            gram: None,
        };
    };
    let depth = nets.student.backbone.depth();
    let drop = [0, 1].map(|g| {
        (cfg.model.drop_path_rate > 0.0 && rows[g] > 0).then(|| {
            // Per rank, as the official code draws it: a subset of a batch has no equivalent
            // in the world's batch (each rank keeps its own fraction).
            let rank = Shard::of_this_process().rank as u64;
            let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(
                cfg.run.seed,
                STREAM_SUBSET_DROP_PATH,
                step,
                g as u64 + 2 * rank,
            ));
            subset_drop_path_masks(
                depth,
                cfg.model.drop_path_rate,
                rows[g],
                &mut rng,
                ad_device,
            )
        })
    });
    // Drawn for the world's global crops and read at this rank's, so that N ranks mask as
    // one process of N× the batch does (the official code draws per rank).
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(cfg.run.seed, STREAM_MASKS, step, 0));
    let shard = Shard::of_this_process();
    let all = sample_batch_masks(
        masking.expect("DINOv2 runs have a masking generator"),
        rows[0] * shard.world,
        &objective.mask,
        &mut rng,
    );
    let masks = match shard.world {
        1 => all,
        _ => all.rows(&shard.global_rows(2, b)),
    };
    StepInputs {
        globals,
        locals,
        drop,
        masks: Some(masks),
        gram: None,
    }
}

/// DINOv3's Gram teacher input of a step where anchoring is on with `weight`: its own larger
/// crops (the loader's last two) when it has them, else `None` (it sees the global crops).
pub fn gram_input(
    cfg: &TrainConfig,
    batch: &Batch,
    weight: f64,
    device: &Device,
) -> (Option<Tensor<4>>, f64) {
    let ncrops = cfg.data.ncrops();
    let crops = cfg
        .gram_crop_size()
        .map(|_| crops_tensor(batch, ncrops..ncrops + 2, device));
    (crops, weight)
}

/// Per-sample stochastic-depth masks for one crop group of a step (`drop_path` of
/// `vision_transformer.py`), drawn from the run's seed so that a resumed step draws the same.
pub fn drop_path_masks(
    model: &DinoModel,
    cfg: &TrainConfig,
    step: u64,
    group: u64,
    rows: usize,
    device: &Device,
) -> Option<dino_model::DropPathMasks> {
    if cfg.model.drop_path_rate <= 0.0 {
        return None;
    }
    let mut rng =
        ChaCha8Rng::seed_from_u64(derive_seed(cfg.run.seed, STREAM_DROP_PATH, step, group));
    // Drawn for the global batch and read at this rank's rows, so that the masks do not
    // depend on how many ranks share the batch.
    let shard = Shard::of_this_process();
    let mine = shard.global_rows(rows / cfg.data.batch_size.max(1), cfg.data.batch_size);
    let masks = (0..model.backbone.depth())
        .map(|b| {
            let keep = 1.0 - model.backbone.drop_path_prob(b);
            [0, 1].map(|_| {
                let all: Vec<f32> = (0..rows * shard.world)
                    .map(|_| {
                        if keep >= 1.0 {
                            1.0
                        } else {
                            ((keep + rng.random::<f64>()).floor() / keep) as f32
                        }
                    })
                    .collect();
                let v: Vec<f32> = mine.iter().map(|&i| all[i]).collect();
                Tensor::<3>::from_data(TensorData::new(v, [rows, 1, 1]), device)
            })
        })
        .collect();
    Some(dino_model::DropPathMasks { masks })
}

/// DINOv2's batch-subset drop path (`drop_add_residual_stochastic_depth`, which the official
/// loop uses at any rate above 0 since the student runs on a list of crops): each residual
/// branch of each block is added to a random subset of `kept = max(⌊rows·(1 − rate)⌋, 1)`
/// samples, scaled by `rows / kept`, and to no other. As masks: `rows / kept` on the subset,
/// 0 elsewhere (the official code skips computing the dropped samples; the sum is the same).
pub fn subset_drop_path_masks(
    depth: usize,
    rate: f64,
    rows: usize,
    rng: &mut impl Rng,
    device: &Device,
) -> dino_model::DropPathMasks {
    let kept = ((rows as f64 * (1.0 - rate)) as usize).max(1);
    let subsets: Vec<[Vec<usize>; 2]> = (0..depth)
        .map(|_| {
            [0, 1].map(|_| {
                // A uniform random `kept`-subset (`torch.randperm(rows)[:kept]`).
                let mut perm: Vec<usize> = (0..rows).collect();
                for i in 0..kept.min(rows) {
                    let j = rng.random_range(i..rows);
                    perm.swap(i, j);
                }
                perm.truncate(kept);
                perm
            })
        })
        .collect();
    subset_masks(&subsets, rows, device)
}

/// Drop-path masks from explicit subsets (one `[attention, mlp]` pair of kept sample indices
/// per block), each kept sample's branch scaled by `rows / kept`.
pub fn subset_masks(
    subsets: &[[Vec<usize>; 2]],
    rows: usize,
    device: &Device,
) -> dino_model::DropPathMasks {
    let masks = subsets
        .iter()
        .map(|pair| {
            pair.clone().map(|subset| {
                let scale = (rows as f64 / subset.len() as f64) as f32;
                let mut v = vec![0.0f32; rows];
                for &i in &subset {
                    v[i] = scale;
                }
                Tensor::<3>::from_data(TensorData::new(v, [rows, 1, 1]), device)
            })
        })
        .collect();
    dino_model::DropPathMasks { masks }
}

/// The crops `range` of every image in `batch`, stacked crop-major as `MultiCropWrapper` feeds them.
pub fn crops_tensor(batch: &Batch, range: std::ops::Range<usize>, device: &Device) -> Tensor<4> {
    let size = batch.crops[range.start].size as usize;
    let rows = batch.labels.len() * range.len();
    let data: Vec<f32> = batch.crops[range]
        .iter()
        .flat_map(|c| c.data.iter().copied())
        .collect();
    Tensor::from_data(TensorData::new(data, [rows, 3, size, size]), device)
}
