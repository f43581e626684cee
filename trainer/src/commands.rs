//! The inspection commands: `import`, `info`, `attention`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::ValueEnum;
use dino_model::checkpoint::{KIND_MODEL, write_checkpoint};
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

/// `dino import`.
pub fn import(file: &Path, output: &Path, which: WhichArg) -> Result<()> {
    let imported = load_weights(file, which.into())?;
    // Building the model proves every tensor fits before anything is written.
    build_model(&imported, file, &Device::flex())?;
    let bytes = write_checkpoint(
        &imported.config,
        KIND_MODEL,
        &imported.tensors,
        &Default::default(),
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
