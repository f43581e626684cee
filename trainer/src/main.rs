//! `dino`: train self-supervised Vision Transformers (DINO, Caron et al. 2021) on any GPU
//! through wgpu, or on the CPU, and inspect what they learned.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use dino_trainer::cli::commands;
use dino_trainer::cli::device::DeviceChoice;
use dino_trainer::io::weights::LoadOptions;

/// Self-supervised DINO training and attention maps for Vision Transformers.
#[derive(Parser, Debug)]
#[command(name = "dino", version, about, long_about = None, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// Train a ViT with DINO (defaults: the official main_dino.py on the synthetic objects set).
    Train(Box<dino_trainer::cli::args::TrainArgs>),
    /// Measure speed: the DINO step on random tensors, the data pipeline, or viewer inference (JSON lines).
    Bench {
        /// step, data, viewer or matmul.
        #[arg(long, value_enum, default_value_t = dino_trainer::cli::commands::BenchMode::Step)]
        mode: dino_trainer::cli::commands::BenchMode,
        /// Model, crops and data flags as for `dino train`.
        #[command(flatten)]
        train: Box<dino_trainer::cli::args::TrainArgs>,
        /// Untimed steps first (shader compilation, autotuning).
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Timed steps (or batches for `--mode data`, inferences for `--mode viewer`).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Input side for `--mode viewer`.
        #[arg(long, default_value_t = 480)]
        viewer_size: usize,
        /// `--mode viewer` on this weight file (any importable one, e.g. a DINOv2 ViT-S/14)
        /// instead of a fresh model of the training flags.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Write the synthetic objects set to a folder: <class>/<n>.png with <n>_mask.png beside.
    Synth {
        /// Output folder.
        #[arg(short, long)]
        output: PathBuf,
        /// Number of scenes.
        #[arg(long, default_value_t = 600)]
        n: usize,
        /// Side of each scene in pixels.
        #[arg(long, default_value_t = 128)]
        size: u32,
        /// Seed; different seeds give different scenes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Weighted k-NN classification as eval_knn.py: Resize 256 + CenterCrop 224, L2-normalised
    /// CLS features, k = 10 20 100 200 reported together.
    Knn {
        /// Checkpoint to evaluate (ours, an official release, or a Hugging Face file).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Labelled training images (folder with class subfolders, CIFAR-10/STL-10 binaries, or `synthetic`).
        #[arg(long)]
        train: String,
        /// Labelled validation images.
        #[arg(long)]
        val: String,
        /// Neighbours; several values are evaluated from the same features.
        #[arg(long, alias = "nb-knn", num_args = 1.., default_values_t = [10, 20, 100, 200])]
        k: Vec<usize>,
        /// Temperature of the neighbour weights exp(sim / T).
        #[arg(long, default_value_t = 0.07)]
        temperature: f64,
        /// Shorter side after the bicubic resize.
        #[arg(long, default_value_t = 256)]
        resize: u32,
        /// Side of the centre crop the network sees.
        #[arg(long, default_value_t = 224)]
        crop: u32,
        /// Shorthand for `--resize S --crop S` (small images, e.g. 32 px CIFAR at its own size).
        #[arg(long, conflicts_with_all = ["resize", "crop"])]
        image_size: Option<u32>,
        /// Keep at most this many images of each split, shared equally by the classes (default: all).
        #[arg(long)]
        limit: Option<usize>,
        /// Images per forward pass.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Folder of the feature cache (default: the run folder of a training checkpoint, else the checkpoint's folder).
        #[arg(long, conflicts_with = "no_cache")]
        cache: Option<PathBuf>,
        /// Neither read nor write cached features.
        #[arg(long)]
        no_cache: bool,
        /// Compute device.
        #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
        device: DeviceChoice,
    },
    /// Linear probe on frozen features as eval_linear.py (resumable run folder, metrics, plot).
    Linear {
        /// Checkpoint to evaluate (ours, an official release, or a Hugging Face file).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Labelled training images (folder with class subfolders, CIFAR-10/STL-10 binaries, or `synthetic`).
        #[arg(long)]
        train: String,
        /// Labelled validation images.
        #[arg(long)]
        val: String,
        /// Run folder; started again with the same settings, it resumes (default: linear/ in the checkpoint's run folder).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Epochs (eval_linear.py: 100).
        #[arg(long, default_value_t = 100)]
        epochs: usize,
        /// Learning rate at batch size 256; several values train one classifier each on the same batches.
        #[arg(long, num_args = 1.., default_values_t = [0.001])]
        lr: Vec<f64>,
        /// Train one classifier per learning rate of DINOv2's grid (1e-5 … 0.1) and report the best.
        #[arg(long, conflicts_with = "lr")]
        lr_grid: bool,
        /// Images per step.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// CLS tokens of this many last blocks, concatenated (eval_linear.py: 4 for ViT-S, 1 for ViT-B).
        #[arg(long, default_value_t = 4)]
        n_last_blocks: usize,
        /// Also the average of the patch tokens (eval_linear.py: with --n-last-blocks 1, for ViT-B).
        #[arg(long)]
        avgpool_patchtokens: bool,
        /// Shorter side of the validation resize.
        #[arg(long, default_value_t = 256)]
        resize: u32,
        /// Side of the training crops and the validation centre crop.
        #[arg(long, default_value_t = 224)]
        crop: u32,
        /// Keep at most this many images of each split, shared equally by the classes (default: all).
        #[arg(long)]
        limit: Option<usize>,
        /// Seed of the crops, the order and the initial classifier.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Validate every this many epochs (and after the last).
        #[arg(long, default_value_t = 1)]
        val_freq: usize,
        /// Compute device.
        #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
        device: DeviceChoice,
    },
    /// Jaccard between the 60 %-mass CLS-attention masks and ground-truth masks (<image>_mask.png).
    EvalSeg {
        /// Checkpoint to evaluate.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Folder written by `dino synth` (or any images with <name>_mask.png beside them).
        #[arg(long)]
        data: String,
        /// Share of the attention mass the masks keep.
        #[arg(long, default_value_t = 0.6)]
        threshold: f32,
        /// Block whose CLS attention is evaluated (default: the last, as in the paper).
        #[arg(long)]
        layer: Option<usize>,
        /// Images are resized to this square size (default: the checkpoint's training size).
        #[arg(long)]
        image_size: Option<u32>,
        /// Use at most this many images, shared equally by the classes of a labelled set (default: all).
        #[arg(long)]
        limit: Option<usize>,
        /// Compute device.
        #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
        device: DeviceChoice,
    },
    /// Convert official DINO / DINOv2 / DINOv3 .pth files or Hugging Face weights into a
    /// dinoscope checkpoint.
    Import {
        /// The weight file: dino_*_pretrain.pth, dinov2_vits14_reg4_pretrain.pth,
        /// dinov3_vits16_pretrain_*.pth, an official training checkpoint, HF model.safetensors
        /// (its config.json is read when it sits beside it), …
        file: PathBuf,
        /// Where to write the dinoscope checkpoint (.safetensors).
        #[arg(short, long)]
        output: PathBuf,
        /// Which network of a training checkpoint to take.
        #[arg(long, value_enum, default_value_t = commands::WhichArg::Teacher)]
        which: commands::WhichArg,
        #[command(flatten)]
        load: LoadArgs,
        /// Keep only the ViT (drop the DINO head): all the viewer and `attention` need.
        #[arg(long)]
        backbone_only: bool,
        /// Store the weights as f16 (half the file size; read back as f32).
        #[arg(long)]
        half: bool,
    },
    /// Redraw a run's loss.png, eval.png (Jaccard and k-NN over training) and collapse.png
    /// (the collapse diagnostics) from metrics.jsonl.
    Plot {
        /// The run directory.
        run: PathBuf,
    },
    /// Show a checkpoint's architecture, parameter count and which weights are present.
    Info {
        /// A dinoscope checkpoint or any importable weight file.
        checkpoint: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Write per-head CLS attention maps, 60 %-mass masks and overlays for an image
    /// (the official visualize_attention.py).
    Attention {
        /// Checkpoint (dinoscope, official .pth or HF safetensors).
        #[arg(long)]
        checkpoint: PathBuf,
        /// The image to look at (PNG, JPEG, WebP, BMP, GIF, TIFF).
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
        /// Also write attention.npy, cls_attention.npy and patch_features.npy for NumPy.
        #[arg(long)]
        save_arrays: bool,
        #[command(flatten)]
        load: LoadArgs,
    },
}

/// Import options shared by every command that reads a weight file.
#[derive(Debug, Clone, clap::Args)]
struct LoadArgs {
    /// Import even if the file holds tensors dinoscope does not understand (they are skipped);
    /// by default such a file is refused, because its maps could be wrong.
    #[arg(long)]
    allow_unused: bool,
    /// Attention heads of a custom .pth model whose heads are not 64 wide (official releases
    /// and Hugging Face files need not say).
    #[arg(long)]
    heads: Option<usize>,
}

impl LoadArgs {
    fn options(&self, which: dino_model::import::Which) -> LoadOptions {
        LoadOptions {
            which,
            allow_unused: self.allow_unused,
            heads: self.heads,
        }
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .filter_module("wgpu_core", log::LevelFilter::Warn)
        .filter_module("wgpu_hal", log::LevelFilter::Warn)
        .filter_module("naga", log::LevelFilter::Warn)
        .init();
    let cli = Cli::parse();
    if let Err(e) = dino_trainer::cli::autotune_cache::configure_from_env().and_then(|_| run(cli)) {
        let world = dino_trainer::distributed::world();
        if world.size > 1 {
            eprintln!("error: rank {} of {}: {e:#}", world.rank, world.size);
        } else {
            eprintln!("error: {e:#}");
        }
        // Under mpirun the other ranks would wait for this one's next message: abort them all.
        dino_trainer::distributed::finalize(true);
        std::process::exit(1);
    }
    dino_trainer::distributed::finalize(false);
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => commands::train(&args),
        Command::Bench {
            mode,
            train,
            warmup,
            steps,
            viewer_size,
            checkpoint,
        } => commands::bench(
            mode,
            &train,
            warmup,
            steps,
            viewer_size,
            checkpoint.as_deref(),
        ),
        Command::Synth {
            output,
            n,
            size,
            seed,
        } => commands::synth(&output, n, size, seed),
        Command::Knn {
            checkpoint,
            train,
            val,
            k,
            temperature,
            resize,
            crop,
            image_size,
            limit,
            batch,
            cache,
            no_cache,
            device,
        } => commands::knn(&commands::KnnArgs {
            checkpoint,
            train,
            val,
            ks: k,
            temperature,
            resize: image_size.unwrap_or(resize),
            crop: image_size.unwrap_or(crop),
            limit,
            batch,
            cache: if no_cache {
                commands::CacheChoice::Off
            } else {
                cache.map_or(commands::CacheChoice::Default, commands::CacheChoice::In)
            },
            device,
        }),
        Command::Linear {
            checkpoint,
            train,
            val,
            output,
            epochs,
            lr,
            lr_grid,
            batch,
            n_last_blocks,
            avgpool_patchtokens,
            resize,
            crop,
            limit,
            seed,
            val_freq,
            device,
        } => dino_trainer::cli::linear::linear(&dino_trainer::cli::linear::LinearArgs {
            checkpoint,
            train,
            val,
            output,
            epochs,
            lrs: if lr_grid {
                dino_trainer::cli::linear::DINOV2_LR_GRID.to_vec()
            } else {
                lr
            },
            batch,
            input: dino_trainer::eval::linear::ProbeInput {
                n_last_blocks,
                avgpool: avgpool_patchtokens,
            },
            resize,
            crop,
            limit,
            seed,
            val_freq,
            device,
        }),
        Command::EvalSeg {
            checkpoint,
            data,
            threshold,
            layer,
            image_size,
            limit,
            device,
        } => commands::eval_seg(
            &checkpoint,
            &data,
            threshold,
            layer,
            image_size,
            limit,
            device,
        ),
        Command::Import {
            file,
            output,
            which,
            load,
            backbone_only,
            half,
        } => commands::import(
            &file,
            &output,
            load.options(which.into()),
            backbone_only,
            half,
        ),
        Command::Plot { run } => {
            let run = dino_trainer::train::run_dir::RunDir { root: run };
            dino_trainer::train::run_dir::plot_metrics(&run)?;
            for f in ["loss.png", "eval.png", "collapse.png"] {
                let p = run.root.join(f);
                if p.exists() {
                    println!("wrote {}", p.display());
                }
            }
            Ok(())
        }
        Command::Info { checkpoint, load } => {
            commands::info(&checkpoint, load.options(Default::default()))
        }
        Command::Attention {
            checkpoint,
            image,
            image_size,
            threshold,
            layer,
            output,
            device,
            save_arrays,
            load,
        } => commands::attention(&commands::AttentionArgs {
            checkpoint,
            image,
            image_size,
            threshold,
            layer,
            output,
            device,
            save_arrays,
            load: load.options(Default::default()),
        }),
    }
}
