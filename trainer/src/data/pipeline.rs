//! The data loader: decoding and multi-crop augmentation on worker threads, one bounded
//! queue per worker, batches delivered in step order. Every random draw is seeded from
//! `(seed, step, sample)`, so a resumed run sees exactly the batches it would have seen.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use anyhow::Result;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::data::augment::{AugmentConfig, multi_crop};
use crate::data::sources::Source;

/// The run's data section (`data` in `config.json`): where the images come from, how many a
/// step takes, and how each becomes crops.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `synthetic`, an image folder, CIFAR-10 or STL-10 binaries (`--data`).
    pub source: String,
    /// Images per step and process (the official `--batch_size_per_gpu`).
    pub batch_size: usize,
    /// Scenes in the synthetic set.
    pub synthetic_count: usize,
    /// Side of synthetic scenes in pixels.
    pub synthetic_size: u32,
    /// The multi-crop augmentation.
    pub crops: AugmentConfig,
}

impl Default for DataConfig {
    /// `main_dino.py`'s batch and crops, on the synthetic set.
    fn default() -> Self {
        Self {
            source: "synthetic".into(),
            batch_size: 64,
            synthetic_count: 2048,
            synthetic_size: 128,
            crops: AugmentConfig::default(),
        }
    }
}

impl DataConfig {
    /// Opens the source, its random draws seeded by `seed`.
    pub fn open(&self, seed: u64) -> Result<Box<dyn Source>> {
        crate::data::sources::open(
            &self.source,
            self.synthetic_count,
            self.synthetic_size,
            seed,
        )
    }

    /// Crops per image: 2 global and the local ones.
    pub fn ncrops(&self) -> usize {
        2 + self.crops.local_crops
    }
}

/// One crop position of a batch: `[batch, 3, size, size]` values.
#[derive(Debug, Clone)]
pub struct CropBatch {
    /// Side of the crops.
    pub size: u32,
    /// Row-major values of all images' crops at this position.
    pub data: Vec<f32>,
}

/// A training batch, crops in the official order (global 1, global 2, locals).
#[derive(Debug, Clone)]
pub struct Batch {
    /// Global iteration this batch belongs to.
    pub step: u64,
    /// One entry per crop position.
    pub crops: Vec<CropBatch>,
    /// Labels of the images, when the source has them.
    pub labels: Vec<Option<usize>>,
}

/// Mixes the run seed with a stream name and counters into an RNG seed.
pub fn derive_seed(seed: u64, stream: u64, a: u64, b: u64) -> u64 {
    let mut x = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for v in [a, b] {
        x ^= v
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(x << 6)
            .wrapping_add(x >> 2);
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 31;
    }
    x
}

/// Stream id of the per-epoch permutation.
const STREAM_PERMUTATION: u64 = 1;
/// Stream id of per-sample augmentation.
const STREAM_AUGMENT: u64 = 2;

/// A rank's share of the data: `DistributedSampler(num_replicas=world, rank=rank)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This process's rank.
    pub rank: usize,
    /// Processes sharing the data.
    pub world: usize,
}

impl Shard {
    /// The whole data set, for one process.
    pub const ALL: Shard = Shard { rank: 0, world: 1 };

    /// The shard of this process in the run (`distributed::world()`).
    pub fn of_this_process() -> Shard {
        let w = crate::distributed::world();
        Shard {
            rank: w.rank,
            world: w.size,
        }
    }

    /// Where this rank's image `j` sits in the step's global batch (ordered as one process
    /// with the whole batch orders it: `DistributedSampler` deals the images out in turn).
    pub fn global_position(&self, j: usize) -> usize {
        self.world * j + self.rank
    }

    /// The global rows of this rank's `groups · batch` rows (crop-major: `group · batch + j`)
    /// in the crop-major rows of the global batch.
    pub fn global_rows(&self, groups: usize, batch: usize) -> Vec<usize> {
        (0..groups)
            .flat_map(|g| (0..batch).map(move |j| g * batch * self.world + self.global_position(j)))
            .collect()
    }
}

/// `DistributedSampler`'s index list for `shard`, given the epoch's permutation: the
/// permutation padded to a multiple of the world size by repeating its beginning, then every
/// `world`-th index from `rank`.
pub fn distributed_indices(perm: &[usize], shard: Shard) -> Vec<usize> {
    let total = perm.len().div_ceil(shard.world) * shard.world;
    (shard.rank..total)
        .step_by(shard.world)
        .map(|i| perm[i % perm.len()])
        .collect()
}

/// Iterations per epoch of each rank: `len(DataLoader(..., drop_last=True))` over its
/// `DistributedSampler` list (at least one).
pub fn steps_per_epoch(len: usize, batch_size: usize, world: usize) -> usize {
    (len.div_ceil(world.max(1)) / batch_size).max(1)
}

/// Indices of step `step`'s batch on `shard`: the epoch's seeded permutation, sharded as
/// `DistributedSampler` does, last partial batch dropped.
pub fn batch_indices(
    seed: u64,
    len: usize,
    batch_size: usize,
    step: u64,
    shard: Shard,
) -> Vec<usize> {
    let per_epoch = steps_per_epoch(len, batch_size, shard.world) as u64;
    let (epoch, it) = (step / per_epoch, (step % per_epoch) as usize);
    let mut perm: Vec<usize> = (0..len).collect();
    perm.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(
        seed,
        STREAM_PERMUTATION,
        epoch,
        0,
    )));
    let mine = distributed_indices(&perm, shard);
    (0..batch_size)
        .map(|j| mine[(it * batch_size + j) % mine.len()])
        .collect()
}

fn make_batch(
    source: &dyn Source,
    cfg: &AugmentConfig,
    seed: u64,
    batch_size: usize,
    step: u64,
    shard: Shard,
    bad: &AtomicUsize,
) -> Result<Batch> {
    let indices = batch_indices(seed, source.len(), batch_size, step, shard);
    let ncrops = 2 + cfg.local_crops;
    let mut sizes: Vec<u32> = (0..ncrops)
        .map(|c| {
            if c < 2 {
                cfg.global_size
            } else {
                cfg.local_size
            }
        })
        .collect();
    if let Some(g) = cfg.gram_size {
        sizes.extend([g, g]);
    }
    let mut crops: Vec<CropBatch> = sizes
        .iter()
        .map(|&s| CropBatch {
            size: s,
            data: Vec::with_capacity(batch_size * 3 * (s * s) as usize),
        })
        .collect();
    let mut labels = Vec::with_capacity(batch_size);
    for (j, &index) in indices.iter().enumerate() {
        // A sample that cannot be read is replaced by the next readable one, and counted.
        let mut sample = None;
        for k in 0..source.len().min(16) {
            match source.get((index + k) % source.len()) {
                Ok(s) => {
                    sample = Some(s);
                    break;
                }
                Err(e) => {
                    if bad.fetch_add(1, Ordering::Relaxed) < 5 {
                        log::warn!("skipping unreadable sample: {e:#}");
                    }
                }
            }
        }
        let sample = sample.ok_or_else(|| {
            anyhow::anyhow!("16 consecutive samples could not be read; is the data set corrupt?")
        })?;
        // Seeded by the image's place in the global batch: the same crops whichever rank
        // draws them, so N ranks of batch B see what one process of batch N·B sees.
        let position = shard.global_position(j) as u64;
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, STREAM_AUGMENT, step, position));
        for (c, crop) in multi_crop(&mut rng, &sample.image, cfg)
            .into_iter()
            .enumerate()
        {
            crops[c].data.extend_from_slice(&crop.chw);
        }
        labels.push(sample.label);
    }
    Ok(Batch {
        step,
        crops,
        labels,
    })
}

/// Background workers producing batches `start..end` in order.
pub struct Loader {
    receivers: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    start: u64,
    next: u64,
    end: u64,
    /// Samples that could not be read so far (skipped and replaced).
    pub unreadable: Arc<AtomicUsize>,
}

impl Loader {
    /// Starts `workers` threads, each keeping up to `prefetch` batches of `shard` ready.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        source: Arc<dyn Source>,
        cfg: AugmentConfig,
        seed: u64,
        batch_size: usize,
        shard: Shard,
        (start, end): (u64, u64),
        workers: usize,
        prefetch: usize,
    ) -> Self {
        let workers = workers.max(1);
        let unreadable = Arc::new(AtomicUsize::new(0));
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        for w in 0..workers as u64 {
            let (tx, rx): (SyncSender<Result<Batch>>, _) = sync_channel(prefetch.max(1));
            let (source, cfg, bad) = (source.clone(), cfg.clone(), unreadable.clone());
            handles.push(std::thread::spawn(move || {
                let mut step = start + w;
                while step < end {
                    let batch =
                        make_batch(source.as_ref(), &cfg, seed, batch_size, step, shard, &bad);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                    step += workers as u64;
                }
            }));
            receivers.push(rx);
        }
        Self {
            receivers,
            handles,
            start,
            next: start,
            end,
            unreadable,
        }
    }

    /// The next batch in step order, or `None` when the range is done.
    pub fn next_batch(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.end {
            return None;
        }
        let idx = ((self.next - self.start) % self.receivers.len() as u64) as usize;
        self.next += 1;
        Some(
            self.receivers[idx]
                .recv()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("data loader thread stopped"))),
        )
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_match_the_official_distributed_sampler() {
        let fixture: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/sampler/distributed_sampler.json"
        ))
        .unwrap();
        for case in fixture["cases"].as_array().unwrap() {
            let n = case["n"].as_u64().unwrap() as usize;
            let world = case["world"].as_u64().unwrap() as usize;
            let batch = case["batch"].as_u64().unwrap() as usize;
            let perm: Vec<usize> = serde_json::from_value(case["perm"].clone()).unwrap();
            for (rank, official) in case["ranks"].as_array().unwrap().iter().enumerate() {
                let want: Vec<usize> = serde_json::from_value(official["indices"].clone()).unwrap();
                let ours = distributed_indices(&perm, Shard { rank, world });
                assert_eq!(ours, want, "n {n} world {world} rank {rank}");
                let batches: Vec<Vec<usize>> =
                    serde_json::from_value(official["batches"].clone()).unwrap();
                let ours_batches: Vec<Vec<usize>> =
                    ours.chunks_exact(batch).map(|c| c.to_vec()).collect();
                assert_eq!(ours_batches, batches, "n {n} world {world} rank {rank}");
                if !batches.is_empty() {
                    assert_eq!(steps_per_epoch(n, batch, world), batches.len());
                }
            }
        }
    }

    #[test]
    fn shards_are_disjoint_cover_the_data_and_follow_the_epoch() {
        let (n, world, batch) = (23, 3, 2);
        let steps = steps_per_epoch(n, batch, world) as u64;
        for epoch in 0..2u64 {
            let mut seen = Vec::new();
            for rank in 0..world {
                for it in 0..steps {
                    let step = epoch * steps + it;
                    let idx = batch_indices(7, n, batch, step, Shard { rank, world });
                    assert_eq!(idx, batch_indices(7, n, batch, step, Shard { rank, world }));
                    seen.extend(idx);
                }
            }
            // 23 images padded to 24 (one repeated), 8 per rank, 4 batches of 2 each: every
            // image is seen, and exactly one twice.
            assert_eq!(seen.len(), world * steps as usize * batch);
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), n);
        }
        assert_ne!(
            batch_indices(7, n, batch, 0, Shard { rank: 0, world }),
            batch_indices(7, n, batch, steps, Shard { rank: 0, world })
        );
    }

    #[test]
    fn the_ranks_together_see_one_process_batch() {
        // N ranks of batch B take, image for image, what one process of batch N·B takes.
        let (n, world, batch) = (40, 2, 3);
        for step in [0u64, 1, 5, 9] {
            let whole = batch_indices(3, n, batch * world, step, Shard::ALL);
            for rank in 0..world {
                let shard = Shard { rank, world };
                let mine = batch_indices(3, n, batch, step, shard);
                for (j, index) in mine.iter().enumerate() {
                    assert_eq!(*index, whole[shard.global_position(j)], "step {step}");
                }
            }
        }
        let shard = Shard { rank: 1, world: 2 };
        assert_eq!(shard.global_rows(2, 3), vec![1, 3, 5, 7, 9, 11]);
    }
}
