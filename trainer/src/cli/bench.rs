//! `dino bench`: speed of the DINO training step, of the data pipeline and of the viewer's
//! inference, as JSON lines so runs on different machines and builds can be compared.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::tensor::{Device, Distribution, Tensor};
use dino_model::ModelConfig;
use dino_model::cpu::linear as cpu_linear;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::data::augment::AugmentConfig;
use crate::data::masking::{MaskingGenerator, sample_batch_masks};
use crate::loss::objective::StepInputs;
use crate::train::config::TrainConfig;
use crate::train::networks::Networks;
use crate::train::step::{Dinov2Step, StepHyper, train_step};

/// The compute pool's size: burn's CPU backend runs its kernels on rayon's global pool, which
/// takes `RAYON_NUM_THREADS` or else one thread per logical core.
pub fn compute_threads() -> usize {
    rayon::current_num_threads()
}

/// The SIMD extensions this CPU offers to the CPU backend's kernels (gemm and macerator pick
/// the widest at run time).
pub fn simd_features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut found = Vec::new();
        macro_rules! probe {
            ($($f:tt),*) => {$(if std::arch::is_x86_feature_detected!($f) { found.push($f); })*};
        }
        probe!("sse4.2", "avx2", "fma", "avx512f");
        found.join("+")
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon".to_string()
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "none".to_string()
    }
}

/// Fields every `dino bench` line carries, so lines from different machines and builds can be
/// told apart and paired with the official code's (scripts/benchmarks.py).
fn common_fields(line: &mut serde_json::Value) {
    line["impl"] = json!("dinoscope");
    line["threads"] = json!(compute_threads());
    line["simd"] = json!(simd_features());
    line["backends"] = json!(compiled_backends());
}

/// The backends this binary was built with (`--features`), so a carried binary can be checked.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut b = vec!["cpu"];
    if cfg!(feature = "wgpu") {
        b.push("wgpu");
    }
    if cfg!(feature = "vulkan") {
        b.push("vulkan");
    }
    b
}

/// Forward FLOPs of the backbone for one image of `tokens` tokens (multiply-adds × 2).
pub fn backbone_flops(c: &ModelConfig, tokens: usize) -> f64 {
    let (d, n) = (c.vit.embed_dim as f64, tokens as f64);
    let h = c.vit.mlp_hidden_dim() as f64;
    let patch_in = (3 * c.vit.patch_size * c.vit.patch_size) as f64;
    let per_block = 2.0 * n * (4.0 * d * d + 2.0 * d * h) + 4.0 * n * n * d;
    2.0 * (n - 1.0) * patch_in * d + c.vit.depth as f64 * per_block
}

/// Forward FLOPs of the DINO head for one image.
pub fn head_flops(c: &ModelConfig) -> f64 {
    let Some(h) = &c.head else { return 0.0 };
    let (i, hid, b, k) = (
        h.in_dim as f64,
        h.hidden_dim as f64,
        h.bottleneck_dim as f64,
        h.out_dim as f64,
    );
    2.0 * (i * hid + hid * hid * (h.nlayers.saturating_sub(2)) as f64 + hid * b + b * k)
}

/// FLOPs of one DINO step per image: student forward + backward (≈ 3× forward) on every
/// crop, teacher forward on the two global crops.
pub fn step_flops_per_image(cfg: &TrainConfig) -> Result<f64> {
    let c = cfg.model_config()?;
    let tokens = |side: u32| 1 + (side as usize / cfg.model.patch_size).pow(2);
    let g = backbone_flops(&c, tokens(cfg.data.crops.global_size)) + head_flops(&c);
    let l = backbone_flops(&c, tokens(cfg.data.crops.local_size)) + head_flops(&c);
    let student = 3.0 * (2.0 * g + cfg.data.crops.local_crops as f64 * l);
    Ok(student + 2.0 * g)
}

/// Times `steps` training steps of the run's method (DINO, or DINOv2 with masks drawn as in
/// training) on random crops after `warmup` untimed ones.
pub fn bench_step(
    cfg: &TrainConfig,
    device: &Device,
    device_name: &str,
    warmup: usize,
    steps: usize,
) -> Result<serde_json::Value> {
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    let mc = cfg.model_config()?;
    let ad = device.clone().autodiff();
    let mut nets = Networks::fresh(cfg, &mc, device)?;
    let (b, a) = (cfg.data.batch_size, &cfg.data.crops);
    let hyper = StepHyper {
        lr: 1e-4,
        weight_decay: 0.04,
        momentum: 0.996,
        teacher_temp: 0.04,
        clip_grad: cfg.optim.clip_grad,
        freeze_last_layer: false,
    };
    let masking =
        cfg.objective.dinov2.as_ref().map(|_| {
            MaskingGenerator::for_crops(a.global_size as usize, cfg.model.patch_size, false)
        });
    let rng = std::cell::RefCell::new(ChaCha8Rng::seed_from_u64(cfg.run.seed));
    let dinov2 = cfg.objective.dinov2.as_ref().map(|objective| Dinov2Step {
        objective,
        groups: cfg.optim.dinov2.unwrap_or_default(),
    });
    let run = |nets: Networks| {
        let g = Tensor::<4>::random(
            [2 * b, 3, a.global_size as usize, a.global_size as usize],
            Distribution::Normal(0.0, 1.0),
            &ad,
        );
        let l = (a.local_crops > 0).then(|| {
            Tensor::<4>::random(
                [
                    a.local_crops * b,
                    3,
                    a.local_size as usize,
                    a.local_size as usize,
                ],
                Distribution::Normal(0.0, 1.0),
                &ad,
            )
        });
        let masks = masking.as_ref().map(|m| {
            sample_batch_masks(
                m,
                2 * b,
                &cfg.objective
                    .dinov2
                    .as_ref()
                    .expect("masking implies DINOv2")
                    .mask,
                &mut rng.borrow_mut(),
            )
        });
        let inputs = StepInputs {
            globals: g,
            locals: l,
            drop: [None, None],
            masks,
            gram: None,
        };
        // The loss is read back every step (NaN check), which synchronises the device.
        let out = train_step(nets, inputs, &hyper, dinov2, device);
        (out.nets, out.skipped)
    };
    // The first step pays for shader compilation and autotuning on a GPU (cold cache).
    let mut first_step_secs = None;
    for _ in 0..warmup {
        let start = Instant::now();
        nets = run(nets).0;
        first_step_secs.get_or_insert(start.elapsed().as_secs_f64());
    }
    let start = Instant::now();
    let mut skipped = 0;
    for _ in 0..steps {
        let (n, s) = run(nets);
        nets = n;
        skipped += usize::from(s);
    }
    let secs = start.elapsed().as_secs_f64();
    drop(nets);
    let img_per_sec = (steps * b) as f64 / secs;
    let flops = step_flops_per_image(cfg)?;
    let mut line = json!({
        "mode": "step", "method": cfg.method(), "device": device_name, "arch": cfg.model.arch, "patch": cfg.model.patch_size, "depth": mc.vit.depth,
        "batch": b, "global_crops": 2, "local_crops": a.local_crops, "global_size": a.global_size, "local_size": a.local_size,
        "out_dim": cfg.model.out_dim, "precision": cfg.optim.precision, "skipped_steps": skipped, "warmup_steps": warmup, "steps": steps, "first_step_secs": first_step_secs,
        "img_per_sec": img_per_sec, "ms_per_step": 1000.0 * secs / steps as f64,
        "gflop_per_image": flops / 1e9, "achieved_tflops": img_per_sec * flops / 1e12,
        "peak_device_memory_bytes": serde_json::Value::Null,
    });
    common_fields(&mut line);
    Ok(line)
}

/// One matrix product of the DINO step: `[m, k] × [k, n]`, with the operand that the backward
/// reads transposed (a strided view, as autodiff hands it to the CPU backend).
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    /// Which layer and pass, e.g. `block fc1 dW (global)`.
    pub name: String,
    /// Rows of the output.
    pub m: usize,
    /// Shared dimension.
    pub k: usize,
    /// Columns of the output.
    pub n: usize,
    /// 0: both operands contiguous; 1: the left one transposed; 2: the right one transposed.
    pub transposed: u8,
    /// How often one step computes it: once per block for the backbone's layers.
    pub count: usize,
}

/// The linear layers' products of one DINO step (student forward and both backward products on
/// every crop, teacher forward on the global crops): where a CPU step spends most of its time.
pub fn step_products(cfg: &TrainConfig) -> Result<Vec<Product>> {
    let c = cfg.model_config()?;
    let (b, a) = (cfg.data.batch_size, &cfg.data.crops);
    let tokens = |side: u32| 1 + (side as usize / cfg.model.patch_size).pow(2);
    let (d, h) = (c.vit.embed_dim, c.vit.mlp_hidden_dim());
    let layers = [
        ("qkv", d, 3 * d),
        ("proj", d, d),
        ("fc1", d, h),
        ("fc2", h, d),
    ];
    let mut head_layers = Vec::new();
    if let Some(hc) = &c.head {
        head_layers.push(("head in", hc.in_dim, hc.hidden_dim));
        for _ in 2..hc.nlayers {
            head_layers.push(("head hidden", hc.hidden_dim, hc.hidden_dim));
        }
        head_layers.push(("head bottleneck", hc.hidden_dim, hc.bottleneck_dim));
        head_layers.push(("head last", hc.bottleneck_dim, hc.out_dim));
    }
    let mut out = Vec::new();
    let mut add = |prefix: &str,
                   crops: &str,
                   rows: usize,
                   (name, din, dout): (&str, usize, usize),
                   backward: bool,
                   count: usize| {
        let mut push = |pass: &str, m, k, n, transposed| {
            out.push(Product {
                name: format!("{prefix}{name} {pass} ({crops})"),
                m,
                k,
                n,
                transposed,
                count,
            });
        };
        push("fwd", rows, din, dout, 0);
        if backward {
            push("dX", rows, dout, din, 2);
            push("dW", din, rows, dout, 1);
        }
    };
    let crops = [
        ("teacher", 2 * b, a.global_size, false),
        ("global", 2 * b, a.global_size, true),
        ("local", a.local_crops * b, a.local_size, true),
    ];
    for (label, images, side, backward) in crops {
        if images == 0 {
            continue;
        }
        for &layer in &layers {
            add(
                "block ",
                label,
                images * tokens(side),
                layer,
                backward,
                c.vit.depth,
            );
        }
    }
    // The backbone runs once per crop size; the student's head once on all its crops' CLS
    // tokens together (the official MultiCropWrapper concatenates them).
    for (label, images, backward) in [
        ("teacher", 2 * b, false),
        ("student", (2 + a.local_crops) * b, true),
    ] {
        for &layer in &head_layers {
            add("", label, images, layer, backward, 1);
        }
    }
    Ok(out)
}

/// Times every product of [`step_products`] on `device` as the step computes it (on the CPU
/// backend `cpu_linear`, elsewhere burn's matmul on the strided views), `runs` times each
/// after one untimed run; one line with each product's GFLOP/s and the step's total, each
/// product counted as often as the step computes it.
pub fn bench_matmul(
    cfg: &TrainConfig,
    device: &Device,
    device_name: &str,
    runs: usize,
) -> Result<serde_json::Value> {
    let products = step_products(cfg)?;
    let mut rows = Vec::new();
    let (mut total_flop, mut total_secs) = (0.0, 0.0);
    for p in &products {
        let normal = Distribution::Normal(0.0, 1.0);
        let (lhs_dims, rhs_dims) = (
            if p.transposed == 1 {
                [p.k, p.m]
            } else {
                [p.m, p.k]
            },
            if p.transposed == 2 {
                [p.n, p.k]
            } else {
                [p.k, p.n]
            },
        );
        let lhs = Tensor::<2>::random(lhs_dims, normal, device);
        let rhs = Tensor::<2>::random(rhs_dims, normal, device);
        // On the CPU backend the step's linear layers run `cpu_linear` (the same views, one
        // output buffer); elsewhere burn's matmul on the transposed views autodiff hands it.
        let on_cpu = dino_model::cpu::fused::applies(&lhs);
        let values = |t: &Tensor<2>| {
            t.clone()
                .into_data()
                .try_to_vec::<f32>()
                .expect("the CPU kernels take f32")
        };
        let (lhs_v, rhs_v) = if on_cpu {
            (values(&lhs), values(&rhs))
        } else {
            (Vec::new(), Vec::new())
        };
        let view = |t: &Tensor<2>, transposed: bool| {
            if transposed {
                t.clone().transpose()
            } else {
                t.clone()
            }
        };
        let (lhs, rhs) = (view(&lhs, p.transposed == 1), view(&rhs, p.transposed == 2));
        let mut times = Vec::new();
        for i in 0..=runs {
            let start = Instant::now();
            if on_cpu {
                let y = cpu_linear::product(&lhs_v, &rhs_v, (p.m, p.k, p.n), p.transposed);
                std::hint::black_box(y);
            } else {
                let y = lhs.clone().matmul(rhs.clone());
                // One element read back waits for the product without timing a copy of it.
                let _ = y.slice([0..1, 0..1]).into_data();
            }
            if i > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        let secs = times[times.len() / 2];
        let flop = 2.0 * (p.m * p.k * p.n) as f64;
        total_flop += flop * p.count as f64;
        total_secs += secs * p.count as f64;
        rows.push(
            json!({"name": p.name, "m": p.m, "k": p.k, "n": p.n, "transposed": p.transposed, "count": p.count, "gflop_per_s": flop / secs / 1e9}),
        );
    }
    let mut line = json!({
        "mode": "matmul", "device": device_name, "arch": cfg.model.arch, "patch": cfg.model.patch_size, "depth": cfg.model_config()?.vit.depth,
        "batch": cfg.data.batch_size, "global_size": cfg.data.crops.global_size, "local_size": cfg.data.crops.local_size,
        "local_crops": cfg.data.crops.local_crops, "out_dim": cfg.model.out_dim, "runs": runs,
        "products": rows, "total_ms": total_secs * 1000.0, "gflop_per_s": total_flop / total_secs / 1e9,
    });
    common_fields(&mut line);
    Ok(line)
}

/// Decoding + multi-crop augmentation throughput of the real loader, per core.
pub fn bench_data(cfg: &TrainConfig, workers: usize, batches: u64) -> Result<serde_json::Value> {
    let source: Arc<dyn crate::data::sources::Source> = Arc::from(cfg.data.open(cfg.run.seed)?);
    let aug: AugmentConfig = cfg.data.crops.clone();
    let mut loader = crate::data::pipeline::Loader::start(
        source,
        aug,
        cfg.run.seed,
        cfg.data.batch_size,
        crate::data::pipeline::Shard::ALL,
        (0, batches),
        workers,
        2,
    );
    let start = Instant::now();
    let mut images = 0usize;
    while let Some(batch) = loader.next_batch() {
        images += batch?.labels.len();
    }
    let secs = start.elapsed().as_secs_f64();
    let mut line = json!({
        "mode": "data", "data": cfg.data.source, "workers": workers, "batch": cfg.data.batch_size, "images": images,
        "local_crops": cfg.data.crops.local_crops, "global_size": cfg.data.crops.global_size, "local_size": cfg.data.crops.local_size,
        "img_per_sec": images as f64 / secs, "img_per_sec_per_core": images as f64 / secs / workers as f64,
    });
    common_fields(&mut line);
    Ok(line)
}

/// The viewer's work for one image: forward with the last block's attention at `size` px,
/// for a fresh model of `cfg` or for `loaded` (a model read from a file, with its config).
pub fn bench_viewer(
    cfg: &TrainConfig,
    loaded: Option<(dino_model::DinoModel, dino_model::ModelConfig)>,
    device: &Device,
    device_name: &str,
    size: usize,
    runs: usize,
) -> Result<serde_json::Value> {
    let (model, mc) = match loaded {
        Some((model, mc)) => (model.with_precision(cfg.optim.precision), mc),
        None => {
            let mc = cfg.model_config()?;
            (mc.init(device)?.with_precision(cfg.optim.precision), mc)
        }
    };
    let size = size / mc.vit.patch_size * mc.vit.patch_size;
    let depth = model.backbone.depth();
    let mut times = Vec::new();
    for i in 0..=runs {
        let x = Tensor::<4>::random([1, 3, size, size], Distribution::Normal(0.0, 1.0), device);
        let start = Instant::now();
        let out = model.backbone.forward_with_attention(x, depth - 1)?;
        let _ = out.attention.into_data();
        if i > 0 {
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    let mut line = json!({
        "mode": "viewer", "device": device_name, "arch": mc.vit.arch, "model": mc.vit.describe(), "patch": mc.vit.patch_size, "image_size": size,
        "precision": cfg.optim.precision, "heads": mc.vit.num_heads, "runs": runs, "median_ms": times[times.len() / 2], "min_ms": times[0],
    });
    common_fields(&mut line);
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_products_cover_the_linear_flops_of_the_step() {
        // Forward products of one image's crops = the backbone's and head's linear FLOPs; the
        // student's two backward products cost twice its forward.
        let cfg = TrainConfig::default();
        let c = cfg.model_config().unwrap();
        let products = step_products(&cfg).unwrap();
        let flop = |pass: &str, crops: &str| -> f64 {
            products
                .iter()
                .filter(|p| p.name.contains(pass) && p.name.ends_with(&format!("({crops})")))
                .map(|p| 2.0 * (p.m * p.k * p.n * p.count) as f64)
                .sum()
        };
        let (d, h) = (c.vit.embed_dim as f64, c.vit.mlp_hidden_dim() as f64);
        let tokens = 1.0 + (224.0f64 / 16.0).powi(2);
        let linear = c.vit.depth as f64 * 2.0 * tokens * (4.0 * d * d + 2.0 * d * h);
        let globals = (2 * cfg.data.batch_size) as f64;
        assert!((flop("fwd", "global") / (linear * globals) - 1.0).abs() < 1e-12);
        let teacher = flop("fwd", "teacher");
        assert!((teacher / ((linear + head_flops(&c)) * globals) - 1.0).abs() < 1e-12);
        let crops = ((2 + cfg.data.crops.local_crops) * cfg.data.batch_size) as f64;
        assert!((flop("fwd", "student") / (head_flops(&c) * crops) - 1.0).abs() < 1e-12);
        for crops in ["local", "student"] {
            let backward = flop("dX", crops) + flop("dW", crops);
            assert!(
                (backward / flop("fwd", crops) - 2.0).abs() < 1e-12,
                "{crops}"
            );
        }
        assert!(
            products
                .iter()
                .all(|p| p.name.contains("fwd") || p.transposed > 0)
        );
    }

    #[test]
    fn vit_small_step_costs_about_113_gflop_per_image() {
        // The reference figure for ViT-S/16, 2×224 + 8×96, out_dim 65536.
        let g = step_flops_per_image(&TrainConfig::default()).unwrap() / 1e9;
        println!("{g:.1} GFLOP per image");
        assert!((100.0..126.0).contains(&g), "{g} GFLOP");
    }
}
