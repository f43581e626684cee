//! The subcommands behind `dino`: `train`, `import`, `info`, `attention`, `synth`, `knn`,
//! `eval-seg` and `bench`, each parsing nothing itself (clap did) and handing its work to the
//! folder it belongs to.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::ValueEnum;
use dino_model::TensorMap;
use dino_model::checkpoint::{KIND_MODEL, write_checkpoint_as};
use dino_model::import::{SourceKind, Which};
use dino_model::preprocess::{Resize, decode_image, prepare_normalized};

use crate::cli::args::TrainArgs;
use crate::cli::device::{DeviceChoice, select};
use crate::eval::render::{attention_pictures, compute_maps, save_png};
use crate::io::weights::{LoadOptions, build_model, load_weights};
use crate::train::run::{RunOptions, train as train_run};
use crate::train::run_dir::{RunDir, load_run_config};

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

/// `dino import`: `backbone_only` drops the DINO head (all the viewer needs), `half` stores
/// f16 (half the size).
pub fn import(
    file: &Path,
    output: &Path,
    options: LoadOptions,
    backbone_only: bool,
    half: bool,
) -> Result<()> {
    let mut imported = load_weights(file, options)?;
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
    crate::io::files::write_atomic(output, &bytes)?;
    println!(
        "imported {} ({}) -> {} [{}, {} tensors{}]",
        file.display(),
        describe_source(&imported.source),
        output.display(),
        imported.config.vit.describe(),
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
        SourceKind::PthTraining(which) => format!("official training checkpoint, {which}"),
        SourceKind::HuggingFace(class) => format!("Hugging Face {class}"),
        SourceKind::Safetensors => "safetensors with official names".into(),
    }
}

fn count(map: &TensorMap, prefix: &str) -> (usize, usize) {
    let sel: Vec<_> = map.iter().filter(|(k, _)| k.starts_with(prefix)).collect();
    (sel.len(), sel.iter().map(|(_, t)| t.numel()).sum())
}

/// `dino info`.
pub fn info(path: &Path, options: LoadOptions) -> Result<()> {
    let imported = load_weights(path, options)?;
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    let c = &imported.config;
    let v = &c.vit;
    println!("file:        {} ({size} bytes)", path.display());
    println!("format:      {}", describe_source(&imported.source));
    println!("model:       {}", v.describe());
    let position = match v.position {
        dino_model::Position::Learned { interp } => format!(
            "pos grid {}x{} ({} px, {})",
            v.pos_grid(),
            v.pos_grid(),
            v.img_size,
            match interp {
                dino_model::PosInterp::Offset => "bicubic +0.1 offset",
                dino_model::PosInterp::Antialias => "antialiased bicubic",
            }
        ),
        dino_model::Position::Rope { base } => format!("RoPE base {base}"),
    };
    let ffn = match v.ffn {
        dino_model::Ffn::Mlp => format!("mlp {}", v.mlp_hidden_dim()),
        _ => format!("swiglu {}", v.mlp_hidden_dim()),
    };
    println!(
        "backbone:    {} patch {}  dim {}  depth {}  heads {}  {ffn}  {position}  qkv bias {}{}  LayerNorm eps {:e}",
        v.arch,
        v.patch_size,
        v.embed_dim,
        v.depth,
        v.num_heads,
        v.qkv_bias,
        if v.mask_k_bias {
            " (key part masked)"
        } else {
            ""
        },
        v.layer_norm_eps
    );
    let all = count(&imported.tensors, "");
    let head = count(&imported.tensors, "head.");
    let ibot_head = count(&imported.tensors, "ibot_head.");
    println!(
        "backbone:    {} tensors, {} parameters",
        all.0 - head.0 - ibot_head.0,
        all.1 - head.1 - ibot_head.1
    );
    let last_layer = |h: &dino_model::HeadConfig| {
        if h.weight_norm {
            format!("norm_last_layer {}", h.norm_last_layer)
        } else {
            "plain last layer".to_string()
        }
    };
    match &c.head {
        Some(h) => println!(
            "head:        {} tensors, {} parameters (out_dim {}, hidden {}, bottleneck {}, {} layers, {})",
            head.0,
            head.1,
            h.out_dim,
            h.hidden_dim,
            h.bottleneck_dim,
            h.nlayers,
            last_layer(h)
        ),
        None => println!("head:        absent (backbone only)"),
    }
    if let Some(h) = &c.ibot_head {
        println!(
            "iBOT head:   {} tensors, {} parameters (out_dim {}, hidden {}, bottleneck {}, {} layers, {})",
            ibot_head.0,
            ibot_head.1,
            h.out_dim,
            h.hidden_dim,
            h.bottleneck_dim,
            h.nlayers,
            last_layer(h)
        );
    }
    println!("parameters:  {} total", all.1);
    if imported.source == SourceKind::Dinoscope {
        let student = imported
            .ignored
            .iter()
            .filter(|k| k.starts_with("student."))
            .count();
        if student > 0 {
            println!("student:     {student} tensors (training checkpoint)");
        }
        // The header alone: the tensors are not read a second time.
        let metadata = crate::io::weights::safetensors_metadata(path)?;
        for (k, v) in metadata.iter().filter(|(k, _)| k.starts_with("dino.train")) {
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
    /// Also write the raw attention and patch features as `.npy`.
    pub save_arrays: bool,
    /// How to import the checkpoint.
    pub load: LoadOptions,
}

/// `dino attention`.
pub fn attention(args: &AttentionArgs) -> Result<()> {
    if !(args.threshold > 0.0 && args.threshold <= 1.0) {
        bail!("--threshold must be in (0, 1], got {}", args.threshold);
    }
    let selected = select(args.device)?;
    let imported = load_weights(&args.checkpoint, args.load)?;
    let model = build_model(&imported, &args.checkpoint, &selected.device)?;
    let img_bytes = crate::io::files::read(&args.image)?;
    let img = decode_image(&img_bytes)
        .with_context(|| format!("{} is not a usable image", args.image.display()))?;
    let patch = imported.config.vit.patch_size;
    let prepared = prepare_normalized(
        &img,
        Resize::Square(args.image_size),
        patch,
        imported.config.vit.normalization(),
    )
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
    if args.save_arrays {
        save_arrays(&maps, &args.output)?;
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

/// Writes the raw maps for NumPy: `attention.npy` (`[heads, tokens, tokens]` softmax
/// attention of the block, tokens = CLS, registers, patches), `cls_attention.npy`
/// (`[heads, grid_h, grid_w]`, register columns skipped) and `patch_features.npy`
/// (`[grid_h, grid_w, dim]`, normed patch tokens of the last block).
fn save_arrays(maps: &crate::eval::render::AttentionMaps, dir: &Path) -> Result<()> {
    use crate::io::npy::npy_f32;
    let (gh, gw) = (maps.grid_h, maps.grid_w);
    let heads = maps.heads.len();
    let tokens = maps.prefix + gh * gw;
    let cls: Vec<f32> = maps.heads.iter().flatten().copied().collect();
    for (name, bytes) in [
        (
            "attention.npy",
            npy_f32(&[heads, tokens, tokens], &maps.attention),
        ),
        ("cls_attention.npy", npy_f32(&[heads, gh, gw], &cls)),
        (
            "patch_features.npy",
            npy_f32(&[gh, gw, maps.dim], &maps.patch_features),
        ),
    ] {
        crate::io::files::write_atomic(&dir.join(name), &bytes)?;
    }
    Ok(())
}

/// `dino train`.
pub fn train(args: &TrainArgs) -> Result<()> {
    let world = crate::distributed::init()?;
    crate::distributed::set_timeout(args.dist_timeout);
    if world.size > 1 {
        log::info!(
            "rank {} of {} (local rank {}, pid {}) on {}",
            world.rank,
            world.size,
            world.local_rank,
            std::process::id(),
            std::fs::read_to_string("/etc/hostname")
                .map_or_else(|_| "this host".into(), |h| h.trim().to_string())
        );
        if !world.is_main() {
            // Rank 0 speaks for the run; the others report only trouble.
            log::set_max_level(log::LevelFilter::Warn);
        }
    }
    // Rank 0 writes the run's files: it takes the folder before deciding it is free (and a
    // new run's settings are checked before the folder is made).
    let take = |run: &RunDir| world.is_main().then(|| run.lock()).transpose();
    let selected = crate::cli::device::select_for_rank(args.device, world.local_rank)?;
    let loss_scale_applies = |cfg: &crate::train::config::TrainConfig| {
        if args.loss_scale.is_some() && cfg.optim.precision != dino_model::Precision::F16 {
            bail!("--loss-scale only applies to mixed precision; add --precision f16 or drop it");
        }
        Ok(())
    };
    let (run, mut cfg, resume, lock) = match &args.resume {
        Some(dir) => {
            let run = RunDir { root: dir.clone() };
            let saved = load_run_config(&run)?;
            let lock = take(&run)?;
            let cfg = args.for_resume(saved)?;
            loss_scale_applies(&cfg)?;
            (run, cfg, true, lock)
        }
        None => {
            let run = RunDir {
                root: args.output.clone(),
            };
            let (mut cfg, given) = args.new_run()?;
            if let Some(file) = &args.init {
                crate::train::init::resolve(&mut cfg, file, &given)?;
            }
            crate::cli::args::check(&cfg)?;
            loss_scale_applies(&cfg)?;
            // Under mpirun the launch is deliberate, and one rank's timing is not the world's.
            if world.size == 1 {
                crate::cli::plan::confirm(&cfg, args.max_steps, &selected, args.yes)?;
            }
            let lock = take(&run)?;
            if run.last().exists() {
                bail!(
                    "{} already holds a run; continue it with `dino train --resume {}` or choose another -o",
                    run.root.display(),
                    run.root.display()
                );
            }
            (run, cfg, false, lock)
        }
    };
    if !resume {
        cfg.run.world_size = world.size;
    }
    if world.size > 1 {
        crate::distributed::set_resume_hint(format!(
            "mpirun -np {} dino train --resume {}",
            world.size,
            run.root.display()
        ));
    }
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
        allow_data_change: args.allow_data_change,
        stop_on_collapse: args.stop_on_collapse,
    };
    let summary = train_run(cfg, (&run, lock.as_ref()), resume, &opts, &selected.device)?;
    if !world.is_main() {
        return Ok(());
    }
    if let Some(advice) = &summary.collapsed {
        bail!(
            "stopped after step {} because the teacher collapsed (--stop-on-collapse): {advice}. Checkpoint {}; fix the settings and start again, or continue anyway with `dino train --resume {}`",
            summary.steps,
            run.last().display(),
            run.root.display()
        );
    }
    if summary.interrupted {
        println!(
            "stopped by a signal after step {}: checkpoint {}; continue with `dino train --resume {}`",
            summary.steps,
            run.last().display(),
            run.root.display()
        );
        return Ok(());
    }
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
    if let Some(said) = std::fs::read_to_string(run.metrics())
        .ok()
        .and_then(|t| crate::train::train_eval::against_init(&t))
    {
        println!("{said}");
    }
    Ok(())
}

/// `dino synth`.
pub fn synth(output: &Path, n: usize, size: u32, seed: u64) -> Result<()> {
    if size < 16 {
        bail!("--size must be at least 16 pixels");
    }
    let bar = crate::cli::progress::work_bar(n as u64, "scenes");
    for i in 0..n {
        let scene = crate::data::synth::scene(seed, i as u64, size);
        let dir = output.join(crate::data::synth::CLASSES[scene.label]);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let save =
            |img: &dyn Fn(&mut Vec<u8>) -> image::ImageResult<()>, name: String| -> Result<()> {
                let mut bytes = Vec::new();
                img(&mut bytes).with_context(|| format!("encoding {name}"))?;
                crate::io::files::write_atomic(&dir.join(&name), &bytes)
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
        crate::data::synth::CLASSES.len(),
        output.display()
    );
    Ok(())
}

fn open_source(spec: &str) -> Result<Box<dyn crate::data::sources::Source>> {
    crate::data::sources::open(spec, 600, 128, 1).with_context(|| format!("opening {spec}"))
}

/// Where `dino knn` keeps its features.
#[derive(Debug, Clone)]
pub enum CacheChoice {
    /// The run folder of a training checkpoint (`<run>/checkpoints/…`), else the checkpoint's folder.
    Default,
    /// This folder.
    In(PathBuf),
    /// No cache.
    Off,
}

/// The options of `dino knn`.
#[derive(Debug, Clone)]
pub struct KnnArgs {
    /// Weights to evaluate.
    pub checkpoint: PathBuf,
    /// Labelled training split.
    pub train: String,
    /// Labelled validation split.
    pub val: String,
    /// Neighbour counts, all evaluated from one set of features.
    pub ks: Vec<usize>,
    /// Vote temperature.
    pub temperature: f64,
    /// Shorter side after resizing.
    pub resize: u32,
    /// Centre-crop side.
    pub crop: u32,
    /// At most this many images per split, shared by the classes.
    pub limit: Option<usize>,
    /// Images per forward.
    pub batch: usize,
    /// Feature cache.
    pub cache: CacheChoice,
    /// Compute device.
    pub device: DeviceChoice,
}

/// `dino knn`.
pub fn knn(args: &KnnArgs) -> Result<()> {
    use crate::eval::knn::{
        EvalTransform, FeatureCache, classify, extract, labels_of, select_per_class,
    };
    if args.ks.is_empty() {
        bail!("--k needs at least one value");
    }
    let selected = select(args.device)?;
    let imported = load_weights(&args.checkpoint, LoadOptions::default())?;
    let model = build_model(&imported, &args.checkpoint, &selected.device)?;
    let transform = EvalTransform {
        resize: args.resize,
        crop: args.crop,
        norm: imported.config.vit.normalization(),
    };
    let (train_src, val_src) = (open_source(&args.train)?, open_source(&args.val)?);
    let classes = train_src.classes().len().max(val_src.classes().len());
    let (train_labels, val_labels) = (labels_of(train_src.as_ref())?, labels_of(val_src.as_ref())?);
    let train_kept = select_per_class(&train_labels, classes, args.limit);
    let val_kept = select_per_class(&val_labels, classes, args.limit);
    eprintln!(
        "{}",
        crate::eval::knn::kept_account("train", &train_labels, &train_kept, classes)
    );
    eprintln!(
        "{}",
        crate::eval::knn::kept_account("val", &val_labels, &val_kept, classes)
    );
    let cache_dir = match &args.cache {
        CacheChoice::Off => None,
        CacheChoice::In(dir) => Some(dir.clone()),
        CacheChoice::Default => {
            Some(crate::train::run_dir::run_folder_of(&args.checkpoint).join("knn-features"))
        }
    };
    let cache = cache_dir.map(|dir| {
        FeatureCache::new(
            &dir,
            &args.checkpoint,
            [
                (train_src.as_ref(), &train_kept),
                (val_src.as_ref(), &val_kept),
            ],
            &transform,
        )
    });
    let (train, val) = match cache.as_ref().and_then(|c| c.load().map(|f| (c, f))) {
        Some((c, features)) => {
            eprintln!("features read from {}", c.path().display());
            features
        }
        None => {
            let bar = crate::cli::progress::work_bar(
                (train_kept.len() + val_kept.len()) as u64,
                "CLS features",
            );
            let go = |src: &dyn crate::data::sources::Source, kept: &[usize], labels: &[usize]| {
                let picks: Vec<(usize, usize)> = kept.iter().map(|&i| (i, labels[i])).collect();
                extract(
                    &model.backbone,
                    src,
                    &picks,
                    &transform,
                    args.batch,
                    &selected.device,
                    &bar,
                )
            };
            let train = go(train_src.as_ref(), &train_kept, &train_labels)?;
            let val = go(val_src.as_ref(), &val_kept, &val_labels)?;
            bar.finish_and_clear();
            if let Some(c) = &cache {
                match c.save(&train, &val) {
                    Ok(()) => eprintln!("features saved to {}", c.path().display()),
                    Err(e) => log::warn!(
                        "could not cache the features ({e:#}); pass --cache DIR or --no-cache"
                    ),
                }
            }
            (train, val)
        }
    };
    // eval_knn.py stops on a k larger than the training split; the other ks still say
    // something, so only those are dropped, with a word.
    let (ks, dropped): (Vec<usize>, Vec<usize>) = args.ks.iter().partition(|&&k| k <= train.len());
    if ks.is_empty() {
        bail!(
            "every --k ({:?}) is larger than the {} training images; pass a smaller --k",
            args.ks,
            train.len()
        );
    }
    if !dropped.is_empty() {
        eprintln!(
            "k = {dropped:?} skipped: the training split has only {} images",
            train.len()
        );
    }
    let results = classify(
        &train,
        &val,
        &ks,
        args.temperature,
        classes,
        &selected.device,
    )?;
    let chance = 100.0 / classes.max(1) as f64;
    eprintln!(
        "weighted k-NN, T = {}, Resize {} + CenterCrop {}, {} train / {} val images, {classes} classes (chance {chance:.2} %)",
        args.temperature,
        args.resize,
        args.crop,
        train.len(),
        val.len()
    );
    eprintln!("{:>6} {:>8} {:>8}", "k", "top-1", "top-5");
    for r in &results {
        eprintln!("{:>6} {:>7.2}% {:>7.2}%", r.k, r.top1, r.top5);
    }
    // Scripts read one k: the paper's 20 when evaluated, else the first.
    let main = results.iter().find(|r| r.k == 20).unwrap_or(&results[0]);
    let json = serde_json::json!({
        "knn": results,
        "knn_k": main.k,
        "knn_top1": main.top1,
        "knn_top5": main.top5,
        "chance": chance,
        "temperature": args.temperature,
        "resize": args.resize,
        "crop": args.crop,
        "train": train.len(),
        "val": val.len(),
        "classes": classes,
    });
    println!("{json}");
    Ok(())
}

/// `dino eval-seg`.
pub fn eval_seg(
    checkpoint: &Path,
    data: &str,
    threshold: f32,
    layer: Option<usize>,
    image_size: Option<u32>,
    limit: Option<usize>,
    device: DeviceChoice,
) -> Result<()> {
    if !(threshold > 0.0 && threshold <= 1.0) {
        bail!("--threshold must be in (0, 1], got {threshold}");
    }
    let selected = select(device)?;
    let imported = load_weights(checkpoint, LoadOptions::default())?;
    let model = build_model(&imported, checkpoint, &selected.device)?;
    let size = image_size.unwrap_or(imported.config.vit.img_size as u32);
    let source = open_source(data)?;
    let layer = layer.unwrap_or(model.backbone.depth() - 1);
    // A limit is shared by the classes of a labelled set and spread evenly over any other,
    // never the first files of a sorted folder.
    let classes = source.classes().len();
    let labels: Option<Vec<usize>> = (classes > 0)
        .then(|| crate::eval::knn::labels_of(source.as_ref()))
        .transpose()?;
    let kept = match &labels {
        Some(l) => crate::eval::knn::select_per_class(l, classes, limit),
        None => crate::eval::knn::select_per_class(&vec![0; source.len()], 1, limit),
    };
    match &labels {
        Some(l) => eprintln!(
            "{}",
            crate::eval::knn::kept_account("data", l, &kept, classes)
        ),
        None => eprintln!("data: kept {} of {} images", kept.len(), source.len()),
    }
    let bar = crate::cli::progress::work_bar(kept.len() as u64, "attention masks");
    let r = crate::eval::probes::segmentation_at(
        &model.backbone,
        layer,
        source.as_ref(),
        &kept,
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
    /// Each matrix product of the step's linear layers on its own (GFLOP/s per shape).
    Matmul,
}

/// `dino bench`: prints one JSON line.
pub fn bench(
    mode: BenchMode,
    args: &TrainArgs,
    warmup: usize,
    steps: usize,
    viewer_size: usize,
    checkpoint: Option<&Path>,
) -> Result<()> {
    if checkpoint.is_some() && !matches!(mode, BenchMode::Viewer) {
        bail!("--checkpoint only applies to --mode viewer");
    }
    let (cfg, _) = args.new_run()?;
    crate::cli::args::check(&cfg)?;
    let line = match mode {
        BenchMode::Matmul => {
            let selected = select(args.device)?;
            crate::cli::bench::bench_matmul(&cfg, &selected.device, &selected.name, steps.max(1))?
        }
        BenchMode::Step => {
            let selected = select(args.device)?;
            crate::cli::bench::bench_step(&cfg, &selected.device, &selected.name, warmup, steps)?
        }
        BenchMode::Data => {
            let workers = args
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            crate::cli::bench::bench_data(&cfg, workers, steps as u64)?
        }
        BenchMode::Viewer => {
            let selected = select(args.device)?;
            let model = match checkpoint {
                Some(path) => {
                    let imported = load_weights(path, LoadOptions::default())?;
                    let model = build_model(&imported, path, &selected.device)?;
                    Some((model, imported.config))
                }
                None => None,
            };
            crate::cli::bench::bench_viewer(
                &cfg,
                model,
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
