//! The inspection commands: `import`, `info`, `attention`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::ValueEnum;
use dino_model::checkpoint::{KIND_MODEL, write_checkpoint_as};
use dino_model::import::{Imported, SourceKind, Which, import_bytes};
use dino_model::preprocess::{Resize, decode_image, prepare};
use dino_model::{DinoModel, TensorMap};

use crate::device::{DeviceChoice, select};
use crate::render::{attention_pictures, compute_maps, save_png};

/// `--which` on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum WhichArg {
    /// The EMA teacher.
    Teacher,
    /// The student.
    Student,
}

impl From<WhichArg> for Which {
    fn from(w: WhichArg) -> Self {
        match w {
            WhichArg::Teacher => Which::Teacher,
            WhichArg::Student => Which::Student,
        }
    }
}

/// Reads and imports any supported weight file, naming it in every error.
pub fn load_weights(path: &Path, which: Which) -> Result<Imported> {
    let bytes = crate::io::read(path)?;
    import_bytes(&bytes, which).with_context(|| {
        format!(
            "{} is not a usable checkpoint (expected a dinoscope .safetensors, an official DINO .pth or Hugging Face ViT safetensors)",
            path.display()
        )
    })
}

/// Builds the model of an imported file on `device`.
pub fn build_model(imported: &Imported, path: &Path, device: &Device) -> Result<DinoModel> {
    imported
        .config
        .load(&imported.tensors, "", device)
        .with_context(|| format!("loading the weights of {}", path.display()))
}

/// `dino import`: `backbone_only` drops the DINO head (all the viewer needs), `half` stores
/// f16 (half the size).
pub fn import(
    file: &Path,
    output: &Path,
    which: WhichArg,
    backbone_only: bool,
    half: bool,
) -> Result<()> {
    let mut imported = load_weights(file, which.into())?;
    if backbone_only {
        imported.config.head = None;
        imported.tensors.retain(|k, _| !k.starts_with("head."));
    }
    // Building the model proves every tensor fits before anything is written.
    build_model(&imported, file, &Device::flex())?;
    let bytes = write_checkpoint_as(
        &imported.config,
        KIND_MODEL,
        &imported.tensors,
        &Default::default(),
        half,
    )?;
    crate::io::write_atomic(output, &bytes)?;
    println!(
        "imported {} ({}) -> {} [{} /{}, {} tensors{}]",
        file.display(),
        describe_source(&imported.source),
        output.display(),
        imported.config.vit.arch,
        imported.config.vit.patch_size,
        imported.tensors.len(),
        if imported.ignored.is_empty() {
            String::new()
        } else {
            format!(", {} unused tensors skipped", imported.ignored.len())
        }
    );
    Ok(())
}

fn describe_source(s: &SourceKind) -> String {
    match s {
        SourceKind::Dinoscope => "dinoscope checkpoint".into(),
        SourceKind::PthBackbone => "PyTorch backbone state dict".into(),
        SourceKind::PthTraining(which) => format!("official DINO training checkpoint, {which}"),
        SourceKind::HuggingFace => "Hugging Face ViT safetensors".into(),
        SourceKind::Safetensors => "safetensors with official names".into(),
    }
}

fn count(map: &TensorMap, prefix: &str) -> (usize, usize) {
    let sel: Vec<_> = map.iter().filter(|(k, _)| k.starts_with(prefix)).collect();
    (sel.len(), sel.iter().map(|(_, t)| t.numel()).sum())
}

/// `dino info`.
pub fn info(path: &Path) -> Result<()> {
    let bytes = crate::io::read(path)?;
    let imported = import_bytes(&bytes, Which::Teacher)
        .with_context(|| format!("{} is not a usable checkpoint", path.display()))?;
    let c = &imported.config;
    println!("file:        {} ({} bytes)", path.display(), bytes.len());
    println!("format:      {}", describe_source(&imported.source));
    println!(
        "backbone:    {} patch {}  dim {}  depth {}  heads {}  mlp {}  pos grid {}x{} ({} px)  qkv bias {}  LayerNorm eps {:e}",
        c.vit.arch,
        c.vit.patch_size,
        c.vit.embed_dim,
        c.vit.depth,
        c.vit.num_heads,
        c.vit.mlp_hidden_dim(),
        c.vit.pos_grid(),
        c.vit.pos_grid(),
        c.vit.img_size,
        c.vit.qkv_bias,
        c.vit.layer_norm_eps
    );
    let all = count(&imported.tensors, "");
    let head = count(&imported.tensors, "head.");
    println!(
        "backbone:    {} tensors, {} parameters",
        all.0 - head.0,
        all.1 - head.1
    );
    match &c.head {
        Some(h) => println!(
            "head:        {} tensors, {} parameters (out_dim {}, hidden {}, bottleneck {}, {} layers, norm_last_layer {})",
            head.0, head.1, h.out_dim, h.hidden_dim, h.bottleneck_dim, h.nlayers, h.norm_last_layer
        ),
        None => println!("head:        absent (backbone only)"),
    }
    println!("parameters:  {} total", all.1);
    if let Ok(ckpt) = dino_model::read_checkpoint(&bytes) {
        let student = count(&ckpt.tensors, "student.");
        if student.0 > 0 {
            println!("student:     {} tensors (training checkpoint)", student.0);
        }
        for (k, v) in ckpt
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with("dino.train"))
        {
            println!("{k}: {v}");
        }
    }
    if !imported.ignored.is_empty() {
        println!(
            "not used:    {} tensors (e.g. {})",
            imported.ignored.len(),
            imported.ignored[0]
        );
    }
    Ok(())
}

/// Arguments of `dino attention`.
pub struct AttentionArgs {
    /// Checkpoint file.
    pub checkpoint: PathBuf,
    /// Image file.
    pub image: PathBuf,
    /// Square resize.
    pub image_size: u32,
    /// Mass kept by the masks.
    pub threshold: f32,
    /// Block to show, default last.
    pub layer: Option<usize>,
    /// Output folder.
    pub output: PathBuf,
    /// Device choice.
    pub device: DeviceChoice,
}

/// `dino attention`.
pub fn attention(args: &AttentionArgs) -> Result<()> {
    if !(args.threshold > 0.0 && args.threshold <= 1.0) {
        bail!("--threshold must be in (0, 1], got {}", args.threshold);
    }
    let selected = select(args.device)?;
    let imported = load_weights(&args.checkpoint, Which::Teacher)?;
    let model = build_model(&imported, &args.checkpoint, &selected.device)?;
    let img_bytes = crate::io::read(&args.image)?;
    let img = decode_image(&img_bytes)
        .with_context(|| format!("{} is not a usable image", args.image.display()))?;
    let patch = imported.config.vit.patch_size;
    let prepared = prepare(&img, Resize::Square(args.image_size), patch)
        .with_context(|| format!("preparing {}", args.image.display()))?;
    let layer = args.layer.unwrap_or(model.backbone.depth() - 1);
    let maps = compute_maps(
        &model.backbone,
        &prepared,
        layer,
        args.threshold,
        &selected.device,
    )?;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let pictures = attention_pictures(&prepared.display, &maps, patch, args.threshold);
    for (name, picture) in &pictures {
        save_png(picture, &args.output.join(name))?;
    }
    println!(
        "{} heads of block {layer} on {} ({}x{} px, {}x{} patches, {}) -> {} PNGs in {}",
        maps.heads.len(),
        args.image.display(),
        prepared.width,
        prepared.height,
        maps.grid_w,
        maps.grid_h,
        selected.name,
        pictures.len(),
        args.output.display()
    );
    Ok(())
}

/// `dino train`.
pub fn train(args: &crate::cli_train::TrainArgs) -> Result<()> {
    use crate::train::{RunDir, RunOptions, load_run_config, train};
    let (run, cfg, resume) = match &args.resume {
        Some(dir) => {
            let run = RunDir { root: dir.clone() };
            let saved = load_run_config(&run)?;
            let cfg = args.for_resume(saved)?;
            (run, cfg, true)
        }
        None => {
            let run = RunDir {
                root: args.output.clone(),
            };
            if run.last().exists() {
                bail!(
                    "{} already holds a run; continue it with `dino train --resume {}` or choose another -o",
                    run.root.display(),
                    run.root.display()
                );
            }
            (
                run,
                args.apply(crate::train::TrainConfig::default())?.0,
                false,
            )
        }
    };
    if args.loss_scale.is_some() && cfg.precision != dino_model::Precision::F16 {
        bail!("--loss-scale only applies to mixed precision; add --precision f16 or drop it");
    }
    let selected = select(args.device)?;
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let opts = RunOptions {
        max_steps: args.max_steps,
        checkpoint_every: args.checkpoint_every,
        saveckp_freq: args.saveckp_freq,
        eval_every: args.eval_every,
        eval_data: args.eval_data.clone(),
        workers,
        quiet: args.quiet,
        device_name: selected.name.clone(),
    };
    let summary = train(cfg, &run, resume, &opts, &selected.device)?;
    println!(
        "trained to step {} on {}: loss {:.4} -> {:.4}, {:.1} img/s, teacher {}; checkpoint {}, viewer model {}, metrics {}",
        summary.steps,
        selected.name,
        summary.first_loss,
        summary.last_loss,
        summary.images_per_sec,
        summary.collapse,
        run.last().display(),
        run.teacher().display(),
        run.metrics().display()
    );
    Ok(())
}

/// A bar with count, rate and ETA on stderr (hidden when stderr is not a terminal).
fn work_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} ({per_sec}) ETA {eta}",
        )
        .expect("valid template"),
    );
    bar.set_message(what.to_string());
    bar
}

/// `dino synth`.
pub fn synth(output: &Path, n: usize, size: u32, seed: u64) -> Result<()> {
    if size < 16 {
        bail!("--size must be at least 16 pixels");
    }
    let bar = work_bar(n as u64, "scenes");
    for i in 0..n {
        let scene = crate::synth::scene(seed, i as u64, size);
        let dir = output.join(crate::synth::CLASSES[scene.label]);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let save =
            |img: &dyn Fn(&mut Vec<u8>) -> image::ImageResult<()>, name: String| -> Result<()> {
                let mut bytes = Vec::new();
                img(&mut bytes).with_context(|| format!("encoding {name}"))?;
                crate::io::write_atomic(&dir.join(&name), &bytes)
            };
        save(
            &|b| {
                scene
                    .image
                    .write_to(&mut std::io::Cursor::new(b), image::ImageFormat::Png)
            },
            format!("{i:06}.png"),
        )?;
        save(
            &|b| {
                scene
                    .mask
                    .write_to(&mut std::io::Cursor::new(b), image::ImageFormat::Png)
            },
            format!("{i:06}_mask.png"),
        )?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "wrote {n} scenes ({} classes, {size}px, seed {seed}) with masks to {}",
        crate::synth::CLASSES.len(),
        output.display()
    );
    Ok(())
}

fn open_source(spec: &str) -> Result<Box<dyn crate::data::Source>> {
    crate::data::open(spec, 600, 128, 1).with_context(|| format!("opening {spec}"))
}

/// `dino knn`.
#[allow(clippy::too_many_arguments)]
pub fn knn(
    checkpoint: &Path,
    train: &str,
    val: &str,
    k: usize,
    temperature: f64,
    image_size: Option<u32>,
    limit: usize,
    device: DeviceChoice,
) -> Result<()> {
    let selected = select(device)?;
    let imported = load_weights(checkpoint, Which::Teacher)?;
    let model = build_model(&imported, checkpoint, &selected.device)?;
    let size = image_size.unwrap_or(imported.config.vit.img_size as u32);
    let (train_src, val_src) = (open_source(train)?, open_source(val)?);
    let classes = train_src.classes().len().max(val_src.classes().len());
    let (ti, tl) = crate::eval::labelled(train_src.as_ref(), limit)?;
    let (vi, vl) = crate::eval::labelled(val_src.as_ref(), limit)?;
    let bar = work_bar((ti.len() + vi.len()) as u64, "CLS features");
    let ft = crate::eval::features(&model.backbone, &ti, size, &selected.device, &bar)?;
    let fv = crate::eval::features(&model.backbone, &vi, size, &selected.device, &bar)?;
    bar.finish_and_clear();
    let r = crate::eval::knn(&ft, &tl, &fv, &vl, k, temperature, classes);
    println!(
        "{{\"knn_top1\": {:.2}, \"knn_top5\": {:.2}, \"chance\": {:.2}, \"k\": {k}, \"temperature\": {temperature}, \"train\": {}, \"val\": {}, \"classes\": {classes}}}",
        r.top1,
        r.top5,
        r.chance,
        ti.len(),
        vi.len()
    );
    Ok(())
}

/// `dino eval-seg`.
pub fn eval_seg(
    checkpoint: &Path,
    data: &str,
    threshold: f32,
    layer: Option<usize>,
    image_size: Option<u32>,
    limit: usize,
    device: DeviceChoice,
) -> Result<()> {
    if !(threshold > 0.0 && threshold <= 1.0) {
        bail!("--threshold must be in (0, 1], got {threshold}");
    }
    let selected = select(device)?;
    let imported = load_weights(checkpoint, Which::Teacher)?;
    let model = build_model(&imported, checkpoint, &selected.device)?;
    let size = image_size.unwrap_or(imported.config.vit.img_size as u32);
    let source = open_source(data)?;
    let layer = layer.unwrap_or(model.backbone.depth() - 1);
    let bar = work_bar(source.len().min(limit) as u64, "attention masks");
    let r = crate::eval::segmentation_at(
        &model.backbone,
        layer,
        source.as_ref(),
        limit,
        size,
        threshold,
        &selected.device,
        &bar,
    )?;
    bar.finish_and_clear();
    println!(
        "{}",
        serde_json::to_string(&serde_json::json!({
            "jaccard_best_head": r.best_head, "jaccard_mean_heads": r.mean_heads, "jaccard_head_mean_map": r.head_mean_map,
            "per_head": r.per_head, "images": r.images, "threshold": threshold, "layer": layer,
        }))?
    );
    Ok(())
}

/// What `dino bench` measures.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchMode {
    /// The full DINO training step on random tensors.
    Step,
    /// Decoding + multi-crop augmentation through the real loader.
    Data,
    /// The viewer's forward pass with attention.
    Viewer,
}

/// `dino bench`: prints one JSON line.
pub fn bench(
    mode: BenchMode,
    args: &crate::cli_train::TrainArgs,
    warmup: usize,
    steps: usize,
    viewer_size: usize,
) -> Result<()> {
    let (cfg, _) = args.apply(crate::train::TrainConfig::default())?;
    let line = match mode {
        BenchMode::Step => {
            let selected = select(args.device)?;
            crate::bench::bench_step(&cfg, &selected.device, &selected.name, warmup, steps)?
        }
        BenchMode::Data => {
            let workers = args
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            crate::bench::bench_data(&cfg, workers, steps as u64)?
        }
        BenchMode::Viewer => {
            let selected = select(args.device)?;
            crate::bench::bench_viewer(
                &cfg,
                &selected.device,
                &selected.name,
                viewer_size,
                steps.max(1),
            )?
        }
    };
    println!("{line}");
    Ok(())
}
