//! The run directory: its config, training checkpoints (written atomically, read back for an
//! exact resume), metrics and the pictures drawn from them.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use burn::tensor::Device;
use dino_model::checkpoint::{KIND_TRAINING, read_checkpoint, write_checkpoint};
use dino_model::{ModelConfig, RawTensor, TensorMap};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::amp::LossScaler;
use crate::loss::DinoLoss;
use crate::optim::Optimizer;
use crate::step::Networks;
use crate::train::TrainConfig;

/// Where a run stands; saved in every training checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// The next step to run (= steps done).
    pub step: u64,
    /// AdamW step count per parameter.
    pub optimizer_steps: BTreeMap<String, u64>,
}

/// Paths inside a run directory.
pub struct RunDir {
    /// The root.
    pub root: PathBuf,
}

impl RunDir {
    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    /// `checkpoints/last.safetensors`, always resumable.
    pub fn last(&self) -> PathBuf {
        self.root.join("checkpoints").join("last.safetensors")
    }
    /// `checkpoints/teacher.safetensors`, the model the viewer opens.
    pub fn teacher(&self) -> PathBuf {
        self.root.join("checkpoints").join("teacher.safetensors")
    }
    /// `checkpoints/teacher_e<epoch>.safetensors`, the teacher kept at the end of `epoch`
    /// (0-based, as the official `checkpoint{epoch:04}.pth`).
    pub fn epoch_teacher(&self, epoch: usize) -> PathBuf {
        self.root
            .join("checkpoints")
            .join(format!("teacher_e{epoch:04}.safetensors"))
    }
    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    /// `attention/`.
    pub fn attention(&self) -> PathBuf {
        self.root.join("attention")
    }
}

/// The student's, teacher's and optimiser's full state as a training checkpoint.
pub fn training_checkpoint(
    cfg: &TrainConfig,
    mc: &ModelConfig,
    nets: &Networks,
    step: u64,
) -> Result<Vec<u8>> {
    let mut map = TensorMap::new();
    nets.teacher.save_tensors(&mut map, "");
    nets.student.save_tensors(&mut map, "student.");
    if let Some(gram) = &nets.gram {
        gram.save_tensors(&mut map, "gram_teacher.");
    }
    let (moments, steps) = nets.optim.export();
    let loss = &nets.loss;
    for (k, v) in moments {
        map.insert(format!("optim.{k}"), v);
    }
    map.insert(
        "dino_loss.center".into(),
        RawTensor::new(vec![1, loss.center.len()], loss.center.clone()),
    );
    if let Some(ibot) = &nets.ibot {
        map.insert(
            "ibot_loss.center".into(),
            RawTensor::new(vec![1, ibot.center.len()], ibot.center.clone()),
        );
    }
    let mut meta = BTreeMap::new();
    meta.insert(
        "dino.train_state".into(),
        serde_json::to_string(&TrainState {
            step,
            optimizer_steps: steps,
        })?,
    );
    meta.insert("dino.train_config".into(), serde_json::to_string(cfg)?);
    if let Some(scaler) = &nets.scaler {
        meta.insert("dino.loss_scaler".into(), serde_json::to_string(scaler)?);
    }
    Ok(write_checkpoint(mc, KIND_TRAINING, &map, &meta)?)
}

/// The networks and step of the run's last checkpoint (`last.safetensors`), for `--resume`.
pub fn read_training_checkpoint(
    cfg: &TrainConfig,
    mc: &ModelConfig,
    run: &RunDir,
    device: &Device,
) -> Result<(Networks, u64)> {
    let ad_device = device.clone().autodiff();
    let path = run.last();
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "--resume {}: no checkpoint at {} (was the run ever started?)",
            run.root.display(),
            path.display()
        )
    })?;
    let ckpt = read_checkpoint(&bytes).with_context(|| format!("reading {}", path.display()))?;
    let state: TrainState = serde_json::from_str(
        ckpt.metadata
            .get("dino.train_state")
            .context("checkpoint has no training state")?,
    )?;
    let student = mc
        .load(&ckpt.tensors, "student.", &ad_device)
        .with_context(|| format!("student weights in {}", path.display()))?;
    let teacher = mc
        .load(&ckpt.tensors, "", device)
        .with_context(|| format!("teacher weights in {}", path.display()))?;
    let moments: BTreeMap<String, RawTensor> = ckpt
        .tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("optim.").map(|s| (s.to_string(), v.clone())))
        .collect();
    let optim = Optimizer::import(cfg.optimizer, &moments, &state.optimizer_steps, device)
        .with_context(|| format!("optimizer state in {}", path.display()))?;
    let center = ckpt
        .tensors
        .get("dino_loss.center")
        .context("checkpoint has no DINO centre")?;
    let mut loss = DinoLoss::new(cfg.out_dim, cfg.student_temp, cfg.center_momentum);
    loss.center = center.data.clone();
    let scaler = match ckpt.metadata.get("dino.loss_scaler") {
        Some(json) => Some(
            serde_json::from_str::<LossScaler>(json)
                .with_context(|| format!("reading the loss scaler state in {}", path.display()))?,
        ),
        None => cfg.fresh_loss_scaler(),
    };
    let ibot = match cfg.fresh_ibot_loss() {
        Some(mut ibot) => {
            let center = ckpt.tensors.get("ibot_loss.center").with_context(|| {
                format!(
                    "{} has no iBOT centre, which a --method dinov2 run saves; it was not written by this run",
                    path.display()
                )
            })?;
            ibot.center = center.data.clone();
            Some(ibot)
        }
        None => None,
    };
    let gram = if ckpt.tensors.keys().any(|k| k.starts_with("gram_teacher.")) {
        let mut vit = mc.vit.init(device)?;
        vit.load_tensors(&ckpt.tensors, "gram_teacher.", device)
            .with_context(|| format!("Gram teacher weights in {}", path.display()))?;
        Some(vit.with_precision(cfg.precision))
    } else {
        None
    };
    Ok((
        Networks {
            student: student.with_precision(cfg.precision),
            teacher: teacher.with_precision(cfg.precision),
            optim,
            loss,
            scaler,
            ibot,
            gram,
        },
        state.step,
    ))
}

/// Draws `loss.png` (the loss per step, and each DINOv2 term beside the total) and, when
/// evaluations ran, `eval.png` (Jaccard and k-NN).
pub fn plot_metrics(run: &RunDir) -> Result<()> {
    let text = std::fs::read_to_string(run.metrics())
        .with_context(|| format!("reading {}", run.metrics().display()))?;
    let mut loss = Vec::new();
    let (mut dino, mut ibot, mut koleo, mut gram) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut best, mut mean_map, mut knn) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(s), Some(l)) = (v["step"].as_f64(), v["loss"].as_f64()) {
            loss.push((s, l));
            for (key, series) in [
                ("ibot_loss", &mut ibot),
                ("koleo_loss", &mut koleo),
                ("dino_loss", &mut dino),
                ("gram_loss", &mut gram),
            ] {
                if let Some(y) = v[key].as_f64() {
                    series.push((s, y));
                }
            }
        }
        if let Some(s) = v["eval"].as_f64() {
            for (key, series, scale) in [
                ("jaccard_best_head", &mut best, 1.0),
                ("jaccard_head_mean_map", &mut mean_map, 1.0),
                ("knn_top1", &mut knn, 0.01),
            ] {
                if let Some(y) = v[key].as_f64() {
                    series.push((s, y * scale));
                }
            }
        }
    }
    let blue = [30, 90, 200];
    let png = if ibot.is_empty() {
        let mut png = crate::plot::line_plot(&[(&loss, blue)], 640, 360);
        crate::plot::legend(&mut png, &[("DINO loss", blue)]);
        png
    } else {
        let (black, orange, green, purple) =
            ([20, 20, 20], [230, 150, 20], [30, 150, 60], [140, 60, 170]);
        let mut series: Vec<crate::plot::Series> = vec![
            (&loss, black),
            (&dino, blue),
            (&ibot, orange),
            (&koleo, green),
        ];
        let mut entries = vec![
            ("total loss", black),
            ("DINO term", blue),
            ("iBOT term", orange),
            ("KoLeo term (unweighted)", green),
        ];
        if !gram.is_empty() {
            series.push((&gram, purple));
            entries.push(("Gram term (unweighted)", purple));
        }
        let mut png = crate::plot::line_plot(&series, 640, 360);
        crate::plot::legend(&mut png, &entries);
        png
    };
    crate::render::save_png(&png, &run.root.join("loss.png"))?;
    if !best.is_empty() || !knn.is_empty() {
        // The paper's yardstick: twice the random-init model's Jaccard (the step-0 evaluation).
        let goal: Vec<(f64, f64)> = best
            .first()
            .filter(|p| p.0 == 0.0)
            .map(|p| vec![(0.0, 2.0 * p.1), (best.last().unwrap().0, 2.0 * p.1)])
            .unwrap_or_default();
        let (red, orange, green, grey) = (
            [200, 40, 30],
            [230, 150, 20],
            [30, 150, 60],
            [150, 150, 150],
        );
        let mut png = crate::plot::line_plot_in(
            &[
                (&goal, grey),
                (&mean_map, orange),
                (&knn, green),
                (&best, red),
            ],
            640,
            360,
            Some((0.0, 1.0)),
        );
        let mut entries = vec![
            ("Jaccard best head", red),
            ("Jaccard head-mean mask", orange),
            ("kNN top-1 / 100", green),
        ];
        if !goal.is_empty() {
            entries.push(("2x random init", grey));
        }
        crate::plot::legend(&mut png, &entries);
        crate::render::save_png(&png, &run.root.join("eval.png"))?;
    }
    Ok(())
}

/// Keeps only the metrics of steps before `step` (those after the last checkpoint will be
/// run again), and drops a line cut short by a kill.
pub fn truncate_metrics(path: &std::path::Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v) => {
                v["step"].as_u64().is_none_or(|s| s < step)
                    && v["eval"].as_u64().is_none_or(|s| s <= step)
            }
            Err(_) => false,
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    crate::io::write_atomic(path, out.as_bytes())
}

/// Deletes temporary files that a killed process left behind while writing a checkpoint;
/// they are never read, but they should not pile up.
pub fn remove_stale_temp_files(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Reads the config of an existing run (for `--resume`).
pub fn load_run_config(run: &RunDir) -> Result<TrainConfig> {
    let path = run.config();
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "--resume {}: no {} (is this a run directory?)",
            run.root.display(),
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}
