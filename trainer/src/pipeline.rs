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

use crate::augment::{AugmentConfig, multi_crop};
use crate::data::Source;

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

/// Indices of step `step`'s batch: the epoch's seeded permutation, last partial batch dropped.
pub fn batch_indices(seed: u64, len: usize, batch_size: usize, step: u64) -> Vec<usize> {
    let per_epoch = (len / batch_size).max(1) as u64;
    let (epoch, it) = (step / per_epoch, (step % per_epoch) as usize);
    let mut perm: Vec<usize> = (0..len).collect();
    perm.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(
        seed,
        STREAM_PERMUTATION,
        epoch,
        0,
    )));
    (0..batch_size)
        .map(|j| perm[(it * batch_size + j) % len])
        .collect()
}

fn make_batch(
    source: &dyn Source,
    cfg: &AugmentConfig,
    seed: u64,
    batch_size: usize,
    step: u64,
    bad: &AtomicUsize,
) -> Result<Batch> {
    let indices = batch_indices(seed, source.len(), batch_size, step);
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
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, STREAM_AUGMENT, step, j as u64));
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
    /// Starts `workers` threads, each keeping up to `prefetch` batches ready.
    pub fn start(
        source: Arc<dyn Source>,
        cfg: AugmentConfig,
        seed: u64,
        batch_size: usize,
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
                    let batch = make_batch(source.as_ref(), &cfg, seed, batch_size, step, &bad);
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
