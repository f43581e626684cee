//! `dino linear`: the linear evaluation of `eval_linear.py` as a resumable run. The folder is
//! locked while the probe trains; after every epoch the classifiers, their momentum and the
//! best accuracies are written atomically to `linear.safetensors`, one line is appended to
//! `metrics.jsonl` and `linear.png` is redrawn. Started again on the same folder with the same
//! settings, it continues from the last finished epoch and ends where the uninterrupted run
//! ends (views and order are seeded per epoch and image).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;

use crate::cli::device::{DeviceChoice, select};
use crate::data::sources::Source;
use crate::eval::knn::{EvalTransform, labels_of, select_per_class};
use crate::eval::linear::{Classifier, Probe, ProbeInput, SeededViews, Validation};
use crate::eval::plot::{legend, line_plot, line_plot_in};
use crate::eval::render::save_png;
use crate::io::files::write_atomic;
use crate::io::weights::{LoadOptions, build_model, load_weights};
use crate::train::run_dir::RunDir;

/// The learning rates DINOv2's `linear.py` tries (`--lr-grid`), at batch size 256.
pub const DINOV2_LR_GRID: [f64; 13] = [
    1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1,
];

/// The options of `dino linear`.
#[derive(Debug, Clone)]
pub struct LinearArgs {
    /// Weights to evaluate.
    pub checkpoint: PathBuf,
    /// Labelled training split.
    pub train: String,
    /// Labelled validation split.
    pub val: String,
    /// Run folder (default: `linear/` in the checkpoint's run folder).
    pub output: Option<PathBuf>,
    /// Epochs (the official 100).
    pub epochs: usize,
    /// Learning rates at batch size 256; one classifier each.
    pub lrs: Vec<f64>,
    /// Images per step.
    pub batch: usize,
    /// Which tokens feed the classifier.
    pub input: ProbeInput,
    /// Shorter side of the validation resize.
    pub resize: u32,
    /// Crop side (training views and validation).
    pub crop: u32,
    /// At most this many images per split, shared by the classes.
    pub limit: Option<usize>,
    /// Seed of the views, the order and the initial classifiers.
    pub seed: u64,
    /// Validate every this many epochs (and after the last).
    pub val_freq: usize,
    /// Compute device.
    pub device: DeviceChoice,
}

const CHECKPOINT: &str = "linear.safetensors";
const SETTINGS_KEY: &str = "dino.linear_settings";
const STATE_KEY: &str = "dino.linear_state";

/// What a resumed run must share with the one that wrote the folder.
fn settings_text(args: &LinearArgs, train: &dyn Source, val: &dyn Source) -> String {
    let size = std::fs::metadata(&args.checkpoint).map(|m| m.len()).ok();
    serde_json::json!({
        "checkpoint": args.checkpoint.file_name().map(|n| n.to_string_lossy().into_owned()),
        "checkpoint_bytes": size,
        "train": train.fingerprint(),
        "val": val.fingerprint(),
        "epochs": args.epochs,
        "lrs": args.lrs,
        "batch": args.batch,
        "input": args.input,
        "resize": args.resize,
        "crop": args.crop,
        "limit": args.limit,
        "seed": args.seed,
    })
    .to_string()
}

/// Progress saved after each epoch.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct State {
    /// Epochs finished.
    epoch: usize,
    /// Best validation top-1 of each classifier so far.
    best: Vec<f64>,
}

fn host(t: Tensor<2>) -> Result<Vec<f32>> {
    t.into_data().try_to_vec().context("reading the classifier")
}

fn save(path: &Path, settings: &str, state: &State, classifiers: &[Classifier]) -> Result<()> {
    let mut owned: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for (i, c) in classifiers.iter().enumerate() {
        let [classes, _] = c.weight.dims();
        let mut push = |name: &str, t: Tensor<2>| -> Result<()> {
            let dims = t.dims().to_vec();
            let bytes = host(t)?.iter().flat_map(|v| v.to_le_bytes()).collect();
            owned.push((format!("c{i}.{name}"), bytes, dims));
            Ok(())
        };
        push("weight", c.weight.clone())?;
        push("bias", c.bias.clone().reshape([1, classes]))?;
        if let Some((mw, mb)) = &c.momentum {
            push("momentum_weight", mw.clone())?;
            push("momentum_bias", mb.clone().reshape([1, classes]))?;
        }
    }
    let views = owned
        .iter()
        .map(|(n, b, s)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.as_str(), v))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let meta = std::collections::HashMap::from([
        (SETTINGS_KEY.to_string(), settings.to_string()),
        (STATE_KEY.to_string(), serde_json::to_string(state)?),
    ]);
    write_atomic(path, &safetensors::serialize(views, Some(meta))?)
}

/// The saved state and classifiers, if the folder holds a probe with these settings.
fn restore(
    path: &Path,
    settings: &str,
    lrs: &[f64],
    device: &burn::tensor::Device,
) -> Result<Option<(State, Vec<Classifier>)>> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(None);
    };
    let (meta, tensors) = dino_model::checkpoint::read_safetensors(&bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if meta.get(SETTINGS_KEY).map(String::as_str) != Some(settings) {
        bail!(
            "{} holds a linear probe of other weights, data or settings; pass another --output, or delete the folder to start over",
            path.display()
        );
    }
    let state: State = serde_json::from_str(
        meta.get(STATE_KEY)
            .with_context(|| format!("{} has no saved state", path.display()))?,
    )?;
    let mut out = Vec::new();
    for (i, &lr) in lrs.iter().enumerate() {
        let get = |name: &str| tensors.get(&format!("c{i}.{name}"));
        let (w, b) = (
            get("weight").with_context(|| format!("{}: no classifier {i}", path.display()))?,
            get("bias").with_context(|| format!("{}: no classifier {i}", path.display()))?,
        );
        let (classes, width) = (w.shape[0], w.shape[1]);
        let mut c = Classifier::from_values(&w.data, &b.data, classes, width, lr, device);
        if let (Some(mw), Some(mb)) = (get("momentum_weight"), get("momentum_bias")) {
            c.momentum = Some((
                Tensor::from_data(TensorData::new(mw.data.clone(), [classes, width]), device),
                Tensor::from_data(TensorData::new(mb.data.clone(), [classes]), device),
            ));
        }
        out.push(c);
    }
    Ok(Some((state, out)))
}

/// Keeps the metrics of the epochs before `epoch` (the rest will be run again).
fn truncate_metrics(path: &Path, epoch: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["epoch"].as_u64())
                .is_some_and(|e| (e as usize) < epoch)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}

/// `linear.png`: the mean training loss per epoch and the validation top-1 of each learning rate.
fn plot(run: &Path, lrs: &[f64]) -> Result<()> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    let mut loss: Vec<Vec<(f64, f64)>> = vec![Vec::new(); lrs.len()];
    let mut acc: Vec<Vec<(f64, f64)>> = vec![Vec::new(); lrs.len()];
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let Some(e) = v["epoch"].as_f64() else {
            continue;
        };
        for (i, r) in v["runs"].as_array().into_iter().flatten().enumerate() {
            if i >= lrs.len() {
                break;
            }
            if let Some(l) = r["train_loss"].as_f64() {
                loss[i].push((e + 1.0, l));
            }
            if let Some(a) = r["val_acc1"].as_f64() {
                acc[i].push((e + 1.0, a / 100.0));
            }
        }
    }
    const COLORS: [[u8; 3]; 6] = [
        [30, 90, 200],
        [200, 40, 30],
        [30, 150, 60],
        [230, 150, 20],
        [140, 60, 170],
        [20, 20, 20],
    ];
    let labels: Vec<String> = lrs.iter().map(|lr| format!("lr {lr}")).collect();
    let entries: Vec<(&str, [u8; 3])> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), COLORS[i % COLORS.len()]))
        .collect();
    fn series(s: &[Vec<(f64, f64)>]) -> Vec<crate::eval::plot::Series<'_>> {
        s.iter()
            .enumerate()
            .map(|(i, v)| (v.as_slice(), COLORS[i % COLORS.len()]))
            .collect()
    }
    let (lsr, accr) = (series(&loss), series(&acc));
    let mut top = line_plot(&lsr, 640, 300);
    legend(&mut top, &[("training loss per epoch", [20, 20, 20])]);
    let mut bottom = line_plot_in(&accr, 640, 300, Some((0.0, 1.0)));
    let mut with_title = entries.clone();
    with_title.insert(0, ("validation top-1 / 100", [20, 20, 20]));
    legend(&mut bottom, &with_title);
    let mut png = image::RgbImage::new(640, 600);
    image::imageops::replace(&mut png, &top, 0, 0);
    image::imageops::replace(&mut png, &bottom, 0, 300);
    save_png(&png, &run.join("linear.png"))
}

/// `dino linear`.
pub fn linear(args: &LinearArgs) -> Result<()> {
    if args.lrs.is_empty() || args.lrs.iter().any(|&lr| !(lr > 0.0 && lr.is_finite())) {
        bail!("--lr needs positive learning rates, got {:?}", args.lrs);
    }
    if args.epochs == 0 || args.batch == 0 || args.val_freq == 0 {
        bail!("--epochs, --batch and --val-freq must be at least 1");
    }
    let selected = select(args.device)?;
    let device = &selected.device;
    let imported = load_weights(&args.checkpoint, LoadOptions::default())?;
    let model = build_model(&imported, &args.checkpoint, device)?;
    args.input.check(&model.backbone)?;
    let transform = EvalTransform {
        resize: args.resize,
        crop: args.crop,
        norm: imported.config.vit.normalization(),
    };
    if !args.crop.is_multiple_of(model.backbone.patch_size() as u32) {
        bail!(
            "--crop {} is not a multiple of the model's {}-pixel patches",
            args.crop,
            model.backbone.patch_size()
        );
    }
    let open = |spec: &str| {
        crate::data::sources::open(spec, 600, 128, 1).with_context(|| format!("opening {spec}"))
    };
    let (train_src, val_src) = (open(&args.train)?, open(&args.val)?);
    let classes = train_src.classes().len().max(val_src.classes().len());
    let (train_labels, val_labels) = (labels_of(train_src.as_ref())?, labels_of(val_src.as_ref())?);
    let pick = |labels: &[usize]| -> Vec<(usize, usize)> {
        select_per_class(labels, classes, args.limit)
            .into_iter()
            .map(|i| (i, labels[i]))
            .collect()
    };
    let (train_picks, val_picks) = (pick(&train_labels), pick(&val_labels));
    for (name, labels, picks) in [
        ("train", &train_labels, &train_picks),
        ("val", &val_labels, &val_picks),
    ] {
        let kept: Vec<usize> = picks.iter().map(|p| p.0).collect();
        eprintln!(
            "{}",
            crate::eval::knn::kept_account(name, labels, &kept, classes)
        );
    }

    let out = args
        .output
        .clone()
        .unwrap_or_else(|| crate::train::run_dir::run_folder_of(&args.checkpoint).join("linear"));
    let run = RunDir { root: out.clone() };
    let lock = run.lock()?;
    run.remove_stale_temp_files(&lock);
    let settings = settings_text(args, train_src.as_ref(), val_src.as_ref());
    let ckpt = out.join(CHECKPOINT);
    let width = args.input.width(&model.backbone);
    let (mut state, mut classifiers) = match restore(&ckpt, &settings, &args.lrs, device)? {
        Some((s, c)) => {
            eprintln!(
                "resuming {} after epoch {} of {}",
                out.display(),
                s.epoch,
                args.epochs
            );
            (s, c)
        }
        None => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
            let c = args
                .lrs
                .iter()
                .map(|&lr| Classifier::new(width, classes, lr, &mut rng, device))
                .collect();
            (
                State {
                    epoch: 0,
                    best: vec![0.0; args.lrs.len()],
                },
                c,
            )
        }
    };
    let metrics_path = out.join("metrics.jsonl");
    truncate_metrics(&metrics_path, state.epoch)?;
    let probe = Probe {
        backbone: &model.backbone,
        input: args.input,
        transform,
        batch: args.batch,
        device,
    };
    let views = SeededViews { seed: args.seed };
    let val_only: Vec<usize> = val_picks.iter().map(|p| p.1).collect();
    let bar = crate::cli::progress::work_bar(val_picks.len() as u64, "validation features");
    let val_inputs = probe.val_inputs(val_src.as_ref(), &val_picks, &bar)?;
    bar.finish_and_clear();
    let mut last: Vec<Option<Validation>> = vec![None; args.lrs.len()];
    for epoch in state.epoch..args.epochs {
        let bar = crate::cli::progress::work_bar(
            train_picks.len() as u64,
            &format!("epoch {}/{}", epoch + 1, args.epochs),
        );
        let losses = probe.train_epoch(
            train_src.as_ref(),
            &train_picks,
            classes,
            &mut classifiers,
            &views,
            epoch,
            args.epochs,
            &bar,
        )?;
        bar.finish_and_clear();
        let validate = epoch % args.val_freq == 0 || epoch + 1 == args.epochs;
        let mut runs = Vec::new();
        for (i, c) in classifiers.iter().enumerate() {
            let mean = losses[i].iter().sum::<f64>() / losses[i].len().max(1) as f64;
            if !mean.is_finite() {
                bail!(
                    "the linear probe with lr {} diverged at epoch {} (loss {mean}); lower --lr",
                    c.lr,
                    epoch + 1
                );
            }
            let lr = crate::eval::linear::cosine_lr(
                c.lr * args.batch as f64 / 256.0,
                epoch,
                args.epochs,
            );
            let mut r = serde_json::json!({ "lr": c.lr, "lr_epoch": lr, "train_loss": mean });
            if validate {
                let v = probe.validate(&val_inputs, &val_only, classes, c)?;
                state.best[i] = state.best[i].max(v.acc1);
                r["val_acc1"] = v.acc1.into();
                r["val_acc5"] = v.acc5.into();
                r["val_loss"] = v.loss.into();
                last[i] = Some(v);
            }
            runs.push(r);
        }
        state.epoch = epoch + 1;
        // The epoch's line first, then the checkpoint: a kill between the two leaves a line
        // that the resume drops and writes again, never a finished epoch without its line.
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .with_context(|| format!("opening {}", metrics_path.display()))?;
        writeln!(f, "{}", serde_json::json!({ "epoch": epoch, "runs": runs }))?;
        f.sync_data()
            .with_context(|| format!("flushing {}", metrics_path.display()))?;
        save(&ckpt, &settings, &state, &classifiers)?;
        plot(&out, &args.lrs)?;
        let best = state.best.iter().copied().fold(0.0, f64::max);
        eprintln!(
            "epoch {}/{}: loss {:.4}{}",
            epoch + 1,
            args.epochs,
            runs[0]["train_loss"].as_f64().unwrap_or(f64::NAN),
            if validate {
                format!(", best top-1 so far {best:.2} %")
            } else {
                String::new()
            }
        );
    }
    let (best_i, best) = state
        .best
        .iter()
        .copied()
        .enumerate()
        .fold((0, f64::MIN), |a, (i, b)| if b > a.1 { (i, b) } else { a });
    let per_lr: BTreeMap<String, f64> = args
        .lrs
        .iter()
        .zip(&state.best)
        .map(|(lr, b)| (lr.to_string(), *b))
        .collect();
    eprintln!(
        "linear probe: best top-1 {best:.2} % (lr {}), chance {:.2} %; curves in {}",
        args.lrs[best_i],
        100.0 / classes.max(1) as f64,
        out.join("linear.png").display()
    );
    println!(
        "{}",
        serde_json::json!({
            "linear_top1": best,
            "linear_top1_last": last[best_i].map(|v| v.acc1),
            "linear_top5_last": last[best_i].and_then(|v| v.acc5),
            "lr": args.lrs[best_i],
            "best_top1_per_lr": per_lr,
            "epochs": args.epochs,
            "chance": 100.0 / classes.max(1) as f64,
            "train": train_picks.len(),
            "val": val_picks.len(),
            "classes": classes,
            "output": out.display().to_string(),
        })
    );
    Ok(())
}
