//! `dino`: train self-supervised Vision Transformers (DINO, Caron et al. 2021) on any GPU
//! through wgpu, or on the CPU, and inspect what they learned.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use dino_trainer::commands;
use dino_trainer::device::DeviceChoice;

/// Self-supervised DINO training and attention maps for Vision Transformers.
#[derive(Parser, Debug)]
#[command(name = "dino", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// Convert official DINO .pth files or Hugging Face ViT safetensors into a dinoscope checkpoint.
    Import {
        /// The weight file: dino_*_pretrain.pth, an official checkpoint.pth, HF model.safetensors, …
        file: PathBuf,
        /// Where to write the dinoscope checkpoint (.safetensors).
        #[arg(short, long)]
        output: PathBuf,
        /// Which network of a training checkpoint to take.
        #[arg(long, value_enum, default_value_t = commands::WhichArg::Teacher)]
        which: commands::WhichArg,
    },
    /// Show a checkpoint's architecture, parameter count and which weights are present.
    Info {
        /// A dinoscope checkpoint or any importable weight file.
        checkpoint: PathBuf,
    },
    /// Write per-head CLS attention maps, 60 %-mass masks and overlays for an image
    /// (the official visualize_attention.py).
    Attention {
        /// Checkpoint (dinoscope, official .pth or HF safetensors).
        #[arg(long)]
        checkpoint: PathBuf,
        /// The image to look at (PNG, JPEG, WebP, BMP).
        #[arg(long)]
        image: PathBuf,
        /// The image is resized to this square size first (the official default is 480).
        #[arg(long, default_value_t = 480)]
        image_size: u32,
        /// Share of the attention mass the masks keep.
        #[arg(long, default_value_t = 0.6)]
        threshold: f32,
        /// Block whose attention is shown (0-based; default: the last).
        #[arg(long)]
        layer: Option<usize>,
        /// Output folder for the PNGs.
        #[arg(short, long)]
        output: PathBuf,
        /// Compute device.
        #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
        device: DeviceChoice,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .filter_module("wgpu_core", log::LevelFilter::Warn)
        .filter_module("wgpu_hal", log::LevelFilter::Warn)
        .filter_module("naga", log::LevelFilter::Warn)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Import {
            file,
            output,
            which,
        } => commands::import(&file, &output, which),
        Command::Info { checkpoint } => commands::info(&checkpoint),
        Command::Attention {
            checkpoint,
            image,
            image_size,
            threshold,
            layer,
            output,
            device,
        } => commands::attention(&commands::AttentionArgs {
            checkpoint,
            image,
            image_size,
            threshold,
            layer,
            output,
            device,
        }),
    }
}
