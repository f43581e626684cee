//! DistributedDataParallel's part of a step: the student's gradients averaged over the ranks
//! right after backward (before unscaling, clipping, last-layer cancelling and the optimiser,
//! as DDP's hooks do), in flat buckets whose order is the module's parameter order; and the
//! digests that prove every rank holds the same weights.

use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Tensor, TensorData};
use dino_model::{DinoModel, TensorMap};

use super::world as dist;

/// DDP's default bucket size (`bucket_cap_mb=25`), in f32 values.
pub const BUCKET_VALUES: usize = 25 * 1024 * 1024 / 4;

/// One gradient's place in the flat buffers.
struct Slot {
    id: ParamId,
    rank: usize,
    shape: Vec<usize>,
    dtype: DType,
    bucket: usize,
    offset: usize,
}

/// The parameters that have a gradient, in module order.
struct Layout<'a> {
    grads: &'a GradientsParams,
    slots: Vec<Slot>,
    bucket_sizes: Vec<usize>,
}

impl ModuleVisitor for Layout<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(g) = self.grads.get::<D>(param.id) else {
            return;
        };
        let shape = g.dims().to_vec();
        let n: usize = shape.iter().product();
        let open = self.bucket_sizes.last().copied();
        let bucket = match open {
            Some(used) if used + n <= BUCKET_VALUES || used == 0 => self.bucket_sizes.len() - 1,
            _ => {
                self.bucket_sizes.push(0);
                self.bucket_sizes.len() - 1
            }
        };
        self.slots.push(Slot {
            id: param.id,
            rank: D,
            shape,
            dtype: g.dtype(),
            bucket,
            offset: self.bucket_sizes[bucket],
        });
        self.bucket_sizes[bucket] += n;
    }
}

/// A digest of the layout: which parameters have gradients, and their shapes.
fn layout_digest(slots: &[Slot]) -> u64 {
    let mut h = Fnv::new();
    for s in slots {
        h.write_u64(s.rank as u64);
        for &d in &s.shape {
            h.write_u64(d as u64);
        }
    }
    h.finish()
}

fn take_values<const D: usize>(grads: &mut GradientsParams, id: ParamId) -> Vec<f32> {
    grads
        .remove::<D>(id)
        .map(|g| {
            g.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 gradient values")
        })
        .unwrap_or_default()
}

fn put_values<const D: usize>(
    grads: &mut GradientsParams,
    slot: &Slot,
    values: Vec<f32>,
    device: &burn::tensor::Device,
) {
    let t = Tensor::<D>::from_data(TensorData::new(values, slot.shape.clone()), device);
    grads.register::<D>(slot.id, t.cast(slot.dtype));
}

/// Replaces every gradient of `model` by its mean over the ranks (a no-op alone) and
/// returns the milliseconds spent staging through host memory and reducing. Each rank must
/// have gradients for the same parameters; a rank that does not is a bug, and stops the run.
pub fn average_gradients(
    model: &DinoModel,
    grads: &mut GradientsParams,
    device: &burn::tensor::Device,
) -> anyhow::Result<f64> {
    let world = dist::world();
    if world.size <= 1 {
        return Ok(0.0);
    }
    let started = Instant::now();
    let mut layout = Layout {
        grads,
        slots: Vec::new(),
        bucket_sizes: Vec::new(),
    };
    model.visit(&mut layout);
    let Layout {
        slots,
        bucket_sizes,
        ..
    } = layout;
    dist::ensure_agree(
        layout_digest(&slots),
        "the set of parameters with gradients (every rank must train the same model)",
    )?;
    let what = "the gradient all-reduce";
    let summed = dist::all_reduce_sum_buckets(
        &bucket_sizes,
        |k, buf| {
            for s in slots.iter().filter(|s| s.bucket == k) {
                let v = match s.rank {
                    1 => take_values::<1>(grads, s.id),
                    2 => take_values::<2>(grads, s.id),
                    3 => take_values::<3>(grads, s.id),
                    4 => take_values::<4>(grads, s.id),
                    r => panic!("a parameter of rank {r}"),
                };
                buf[s.offset..s.offset + v.len()].copy_from_slice(&v);
            }
        },
        what,
    );
    let inv = 1.0 / world.size as f32;
    for s in &slots {
        let n: usize = s.shape.iter().product();
        let values: Vec<f32> = summed[s.bucket][s.offset..s.offset + n]
            .iter()
            .map(|v| v * inv)
            .collect();
        match s.rank {
            1 => put_values::<1>(grads, s, values, device),
            2 => put_values::<2>(grads, s, values, device),
            3 => put_values::<3>(grads, s, values, device),
            4 => put_values::<4>(grads, s, values, device),
            _ => unreachable!(),
        }
    }
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

/// A digest of every tensor of `model` (names, shapes and exact bits): equal on two ranks
/// exactly when they hold the same weights.
pub fn weights_digest(model: &DinoModel) -> u64 {
    let mut map = TensorMap::new();
    model.save_tensors(&mut map, "");
    let mut h = Fnv::new();
    for (name, t) in map.iter() {
        h.write(name.as_bytes());
        for &d in &t.shape {
            h.write_u64(d as u64);
        }
        for v in &t.data {
            h.write(&v.to_bits().to_le_bytes());
        }
    }
    h.finish()
}

/// FNV-1a, 64 bits: a stable hash (the standard library's may change between builds, and
/// ranks may run different builds of the same source).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_sees_one_changed_bit() {
        let device = burn::tensor::Device::flex();
        device.seed(3);
        let cfg = dino_model::ModelConfig {
            vit: dino_model::VitConfig {
                depth: 1,
                ..dino_model::VitConfig::by_name("vit_tiny", 16).unwrap()
            },
            head: Some(dino_model::HeadConfig::dino(192, 64)),
            ibot_head: None,
        };
        let model = cfg.init(&device).unwrap();
        let a = weights_digest(&model);
        assert_eq!(a, weights_digest(&model.clone()));
        let mut map = TensorMap::new();
        model.save_tensors(&mut map, "");
        let (_, t) = map.iter_mut().next().unwrap();
        t.data[0] = f32::from_bits(t.data[0].to_bits() ^ 1);
        let changed = cfg.load(&map, "", &device).unwrap();
        assert_ne!(a, weights_digest(&changed));
    }
}
