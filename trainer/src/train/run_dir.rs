//! The run directory and every file training writes into it: its config, training
//! checkpoints (written atomically, read back for an exact resume), the kept teachers,
//! metrics and the pictures drawn from them, and the messages that say, when a write fails
//! or the loss stops being finite, what still holds and how to go on.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use burn::tensor::Device;
use dino_model::checkpoint::{
    KIND_TRAINING, model_checkpoint_bytes, read_checkpoint, write_checkpoint,
};
use dino_model::{DinoModel, ModelConfig, RawTensor, TensorMap};
use serde::{Deserialize, Serialize};

use crate::eval::plot::{Series, legend, line_plot, line_plot_in};
use crate::eval::render::save_png;
use crate::io::files::{is_temp_name, write_atomic};
use crate::optim::amp::LossScaler;
use crate::optim::optimizer::Optimizer;

use super::config::TrainConfig;
use super::networks::{Networks, fresh_dino_loss, fresh_ibot_loss, fresh_loss_scaler};

/// Metadata key of the training data's fingerprint in training checkpoints.
pub const DATA_FINGERPRINT_KEY: &str = "dino.data_fingerprint";

/// What a training checkpoint restores.
pub struct Restored {
    /// The networks and their optimiser and loss state.
    pub nets: Networks,
    /// The next step to run.
    pub step: u64,
    /// The fingerprint of the data it was trained on (absent in older checkpoints).
    pub data_fingerprint: Option<String>,
}

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

    /// `.lock`, held by the process that trains the run.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(".lock")
    }

    /// Takes the run for this process: an exclusive lock on `.lock` (released by the kernel
    /// when the process ends, however it ends), or an error naming the process that holds it.
    pub fn lock(&self) -> Result<RunLock> {
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        let path = self.lock_file();
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            anyhow::bail!(
                "{} is a symbolic link; dinoscope will not write through it. Remove it and start again",
                path.display()
            );
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = std::io::Read::read_to_string(&mut file, &mut holder);
                anyhow::bail!(
                    "{} is in use by another `dino train` (process {}); wait for it to finish, or train into another folder with -o",
                    self.root.display(),
                    holder
                        .trim()
                        .parse::<u32>()
                        .map_or("unknown".into(), |p| p.to_string())
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|_| write!(file, "{}", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(RunLock { _file: file })
    }

    /// Deletes the temporary files a killed process left while writing into the run; they are
    /// never read, but they should not pile up. Only names our writes make are touched, and
    /// only under the run's lock, so no live write loses its file.
    pub fn remove_stale_temp_files(&self, _lock: &RunLock) {
        for dir in [self.root.clone(), self.root.join("checkpoints")] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if is_temp_name(&name) && e.file_type().is_ok_and(|t| t.is_file()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Writes `config.json` (and creates `checkpoints/`).
    pub fn write_config(&self, cfg: &TrainConfig) -> Result<()> {
        std::fs::create_dir_all(self.root.join("checkpoints"))
            .with_context(|| format!("creating {}", self.root.display()))?;
        write_atomic(
            &self.config(),
            serde_json::to_string_pretty(cfg)?.as_bytes(),
        )
    }

    /// The error of a step whose loss (`loss`) or gradients were NaN or infinite: where the
    /// last good state is (`last_saved`, when a checkpoint exists) and how to go on from it at
    /// a learning rate below `lr`.
    pub fn diverged(
        &self,
        what: &str,
        step: u64,
        last_saved: Option<u64>,
        lr: f64,
    ) -> anyhow::Error {
        let lower = format!("{:e}", lr / 4.0);
        match last_saved {
            Some(saved) => anyhow!(
                "{what} at step {step}; training stopped before applying it. The last good checkpoint is {} (step {saved}: every checkpoint written had a finite loss and gradients). \
                 Continue at a lower learning rate with `dino train --resume {} --lr {lower}` (now --lr {lr}), or with a longer --warmup-epochs or a --clip-grad",
                self.last().display(),
                self.root.display()
            ),
            None => anyhow!(
                "{what} at step {step}, before any checkpoint; training stopped. Start the run again at a lower learning rate (now --lr {lr}, e.g. --lr {lower}), or with a longer --warmup-epochs or a --clip-grad"
            ),
        }
    }
}

/// One process's hold on a run directory (see [`RunDir::lock`]); dropped, it lets go.
pub struct RunLock {
    /// The locked `.lock`.
    _file: std::fs::File,
}

/// Rank 0's writes during training: a line of `metrics.jsonl` per step and evaluation, the
/// checkpoints, and at the end the viewer's teacher and the plots.
pub struct RunWriter<'a> {
    /// The run.
    run: &'a RunDir,
    /// `metrics.jsonl`, open for appending.
    metrics: std::fs::File,
    /// The step `last.safetensors` holds, when it exists.
    last_saved: Option<u64>,
    /// A checkpoint waiting for its step's loss and gradients: written once they are finite
    /// (or at the end of the run), dropped when they are not, so that `last.safetensors`
    /// always holds a state that trains.
    pending: Option<(u64, Vec<u8>)>,
    /// The training data's fingerprint, saved with every checkpoint.
    data_fingerprint: String,
}

impl<'a> RunWriter<'a> {
    /// Opens `metrics.jsonl` of a run starting at `start_step`: the lines of steps after the
    /// checkpoint go (they run again); a run from step 0 starts it empty (a resumed run killed
    /// before its first checkpoint, or a new run in a folder an earlier one left).
    pub fn open(run: &'a RunDir, start_step: u64, data_fingerprint: String) -> Result<Self> {
        if start_step > 0 {
            truncate_metrics(&run.metrics(), start_step)?;
        } else {
            write_atomic(&run.metrics(), b"")?;
        }
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.metrics())
            .with_context(|| format!("opening {}", run.metrics().display()))?;
        Ok(Self {
            run,
            metrics,
            last_saved: run.last().exists().then_some(start_step),
            pending: None,
            data_fingerprint,
        })
    }

    /// The step `last.safetensors` holds, when it exists.
    pub fn last_saved(&self) -> Option<u64> {
        self.last_saved
    }

    /// Appends one record to `metrics.jsonl`.
    pub fn record(&mut self, record: &serde_json::Value) -> Result<()> {
        writeln!(self.metrics, "{record}")
            .with_context(|| format!("writing {}", self.run.metrics().display()))
    }

    /// `metrics.jsonl`, for the evaluation's records.
    pub fn metrics(&mut self) -> &mut std::fs::File {
        &mut self.metrics
    }

    /// Keeps the teacher of `epoch` (finished at step `done`) as `teacher_eEEEE.safetensors`.
    pub fn save_epoch_teacher(
        &self,
        mc: &ModelConfig,
        teacher: &DinoModel,
        epoch: usize,
        done: u64,
    ) -> Result<()> {
        let path = self.run.epoch_teacher(epoch);
        let bytes = model_checkpoint_bytes(mc, teacher)?;
        write_atomic(&path, &bytes).with_context(|| {
            format!(
                "saving the teacher of epoch {epoch} at step {done} ({}) failed; {} still holds {}. \
                 Free some disk space, then continue with `dino train --resume {}`",
                path.display(),
                self.run.last().display(),
                self.last_saved
                    .map_or("nothing".into(), |s| format!("step {s}")),
                self.run.root.display()
            )
        })
    }

    /// Everything a resume needs after step `done`, for `last.safetensors`: held until
    /// [`RunWriter::commit`] (once the next step's loss and gradients are known finite).
    pub fn save_last(
        &mut self,
        cfg: &TrainConfig,
        mc: &ModelConfig,
        nets: &Networks,
        done: u64,
    ) -> Result<()> {
        let bytes = training_checkpoint(cfg, mc, nets, done, &self.data_fingerprint)?;
        self.pending = Some((done, bytes));
        Ok(())
    }

    /// Writes the held checkpoint.
    pub fn commit(&mut self) -> Result<()> {
        let Some((done, bytes)) = self.pending.take() else {
            return Ok(());
        };
        write_atomic(&self.run.last(), &bytes).with_context(|| {
            format!(
                "saving the checkpoint of step {done} failed; {} still holds {}. \
                 Free some disk space, then continue with `dino train --resume {}`",
                self.run.last().display(),
                self.last_saved
                    .map_or("nothing".into(), |s| format!("step {s}")),
                self.run.root.display()
            )
        })?;
        self.last_saved = Some(done);
        Ok(())
    }

    /// Drops the held checkpoint: its state gave a NaN or an infinity.
    pub fn discard(&mut self) {
        self.pending = None;
    }

    /// Writes the held checkpoint, the viewer's `teacher.safetensors` and redraws the plots.
    pub fn finish(&mut self, mc: &ModelConfig, teacher: &DinoModel) -> Result<()> {
        self.commit()?;
        write_atomic(&self.run.teacher(), &model_checkpoint_bytes(mc, teacher)?)?;
        plot_metrics(self.run)
    }
}

/// The student's, teacher's and optimiser's full state as a training checkpoint.
pub fn training_checkpoint(
    cfg: &TrainConfig,
    mc: &ModelConfig,
    nets: &Networks,
    step: u64,
    data_fingerprint: &str,
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
    meta.insert(DATA_FINGERPRINT_KEY.into(), data_fingerprint.to_string());
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
) -> Result<Restored> {
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
    let optim = Optimizer::import(
        cfg.optim.optimizer,
        &moments,
        &state.optimizer_steps,
        device,
    )
    .with_context(|| format!("optimizer state in {}", path.display()))?;
    let center = ckpt
        .tensors
        .get("dino_loss.center")
        .context("checkpoint has no DINO centre")?;
    let mut loss = fresh_dino_loss(cfg);
    loss.center = center.data.clone();
    let scaler = match ckpt.metadata.get("dino.loss_scaler") {
        Some(json) => Some(
            serde_json::from_str::<LossScaler>(json)
                .with_context(|| format!("reading the loss scaler state in {}", path.display()))?,
        ),
        None => fresh_loss_scaler(cfg),
    };
    let ibot = match fresh_ibot_loss(cfg) {
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
        Some(vit.with_precision(cfg.optim.precision))
    } else {
        None
    };
    Ok(Restored {
        nets: Networks {
            student: student.with_precision(cfg.optim.precision),
            teacher: teacher.with_precision(cfg.optim.precision),
            optim,
            loss,
            scaler,
            ibot,
            gram,
        },
        step: state.step,
        data_fingerprint: ckpt.metadata.get(DATA_FINGERPRINT_KEY).cloned(),
    })
}

/// Draws `loss.png` (the loss per step, and each DINOv2 term beside the total), when
/// evaluations ran `eval.png` (Jaccard and k-NN), and `collapse.png` (the diagnostics).
pub fn plot_metrics(run: &RunDir) -> Result<()> {
    let text = std::fs::read_to_string(run.metrics())
        .with_context(|| format!("reading {}", run.metrics().display()))?;
    let mut loss = Vec::new();
    let (mut dino, mut ibot, mut koleo, mut gram) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut best, mut mean_map, mut knn) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ratio, mut used, mut kl) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(s), Some(l)) = (v["step"].as_f64(), v["loss"].as_f64()) {
            loss.push((s, l));
            // Every diagnostic as a fraction of its collapsed extreme: ln K and K, where
            // ln K = entropy / ratio.
            if let (Some(r), Some(h), Some(e)) = (
                v["teacher_entropy_ratio"].as_f64(),
                v["teacher_entropy"].as_f64(),
                v["effective_prototypes"].as_f64(),
            ) && r > 0.0
            {
                let ln_k = h / r;
                ratio.push((s, r));
                used.push((s, e / ln_k.exp()));
                if let Some(d) = v["kl_teacher_student"].as_f64() {
                    kl.push((s, (d / ln_k).clamp(0.0, 1.0)));
                }
            }
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
        let mut png = line_plot(&[(&loss, blue)], 640, 360);
        legend(&mut png, &[("DINO loss", blue)]);
        png
    } else {
        let (black, orange, green, purple) =
            ([20, 20, 20], [230, 150, 20], [30, 150, 60], [140, 60, 170]);
        let mut series: Vec<Series> = vec![
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
        let mut png = line_plot(&series, 640, 360);
        legend(&mut png, &entries);
        png
    };
    save_png(&png, &run.root.join("loss.png"))?;
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
        let mut png = line_plot_in(
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
        legend(&mut png, &entries);
        save_png(&png, &run.root.join("eval.png"))?;
    }
    if !ratio.is_empty() {
        let (red, green, blue) = ([200, 40, 30], [30, 150, 60], [30, 90, 200]);
        let mut png = line_plot_in(
            &[(&ratio, red), (&used, green), (&kl, blue)],
            640,
            360,
            Some((0.0, 1.0)),
        );
        legend(
            &mut png,
            &[
                ("teacher entropy / ln K (1: uniform)", red),
                ("prototypes used / K (1/K: one)", green),
                ("KL teacher to student / ln K", blue),
            ],
        );
        save_png(&png, &run.root.join("collapse.png"))?;
    }
    Ok(())
}

/// Keeps only the metrics of steps before `step` (those after the last checkpoint will be
/// run again), and drops a line cut short by a kill.
pub fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
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
    write_atomic(path, out.as_bytes())
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
    TrainConfig::from_json(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The folder a checkpoint's evaluations go to: its run folder for `<run>/checkpoints/…`,
/// `runs/<owner>--<name>` for a Hub repository, else the checkpoint's own folder.
pub fn run_folder_of(checkpoint: &Path) -> PathBuf {
    if let Some(repo) = checkpoint
        .to_str()
        .filter(|s| !checkpoint.exists() && dino_hub::is_repo_name(s))
    {
        return Path::new("runs").join(repo.replace('/', "--"));
    }
    let parent = checkpoint
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if parent.file_name().is_some_and(|n| n == "checkpoints") {
        parent.parent().map(Path::to_path_buf).unwrap_or(parent)
    } else {
        parent
    }
}
