//! The training loop: `main_dino.py`'s `train_dino` and `train_one_epoch`. [`train`] reads
//! as the official loop does — check the run can start, open the data, build the schedules,
//! restore or create the networks, then for every iteration: the batch, the schedule values,
//! one step, the record, the checkpoints, the evaluation. Every file it writes goes through
//! `run_dir`; the step itself is `step`, its inputs `inputs`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use dino_model::{ModelConfig, Precision};
use indicatif::{ProgressBar, ProgressStyle};

use crate::data::masking::MaskingGenerator;
use crate::data::pipeline::{Batch, Loader, Shard, steps_per_epoch};
use crate::data::sources::Source;
use crate::distributed::{self, World};
use crate::loss::dino::{Diagnostics, collapse_indicator};
use crate::loss::gram::GramSchedule;
use crate::optim::schedule::Schedules;

use super::config::TrainConfig;
use super::inputs::{gram_input, step_inputs};
use super::interrupt::Interrupt;
use super::networks::Networks;
use super::run_dir::{RunDir, RunLock, RunWriter, read_training_checkpoint};
use super::step::{Dinov2Step, StepHyper, StepOutput, train_step};
use super::train_eval::{EvalSet, evaluate};

/// Options that do not change the result of a run (and may differ on resume).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stop after this many steps in total (across resumes).
    pub max_steps: Option<u64>,
    /// Save `last.safetensors` every N steps (and at each epoch end).
    pub checkpoint_every: u64,
    /// Keep the teacher of every Nth epoch (0, N, 2N, …) as `teacher_eEEEE.safetensors`
    /// (the official `--saveckp_freq`); 0 disables.
    pub saveckp_freq: usize,
    /// Write attention pictures and run evaluations every N steps (0 = each epoch end).
    pub eval_every: u64,
    /// Data of the periodic evaluation (see [`EvalSet`]).
    pub eval_data: Option<String>,
    /// Loader threads.
    pub workers: usize,
    /// No progress bar; one log line per `log_every` steps instead.
    pub quiet: bool,
    /// Human-readable name of the device, for logs.
    pub device_name: String,
    /// Resume even when the training data's fingerprint changed (`--allow-data-change`).
    pub allow_data_change: bool,
    /// Stop with a checkpoint when the teacher stays collapsed (`--stop-on-collapse`).
    pub stop_on_collapse: bool,
}

/// Consecutive collapsed steps after which `dino train` warns (and `--stop-on-collapse`
/// stops): long enough to pass over a noisy step or two, short enough to save the run.
pub const COLLAPSE_STEPS: u32 = 20;

/// What to tell a user whose teacher has stayed collapsed, by verdict: the signal and the
/// remedies the official code's defaults embody.
fn collapse_advice(verdict: &str) -> String {
    match verdict {
        "uniform" => format!(
            "the teacher's outputs have been nearly uniform (entropy above 95 % of ln K) for {COLLAPSE_STEPS} steps: \
             centering is winning over sharpening. Sharpen the teacher (--teacher-temp 0.04, the official value; a warmer \
             one is reached gradually, from --warmup-teacher-temp 0.04 over --warmup-teacher-temp-epochs 30), keep \
             the teacher momentum near 1 (--momentum-teacher 0.996) and use a larger --batch-size if you can"
        ),
        _ => format!(
            "every image's teacher output has sat on the same prototype (batch-mean entropy below 5 % of ln K) for \
             {COLLAPSE_STEPS} steps: sharpening is winning over centering. Keep centering on (--center-momentum 0.9, \
             the official value; 1 turns it off), keep the teacher colder than the student (--teacher-temp 0.04 \
             against --student-temp 0.1), or use Sinkhorn-Knopp targets (--method dinov2)"
        ),
    }
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Steps done in total.
    pub steps: u64,
    /// Loss of the first step run in this invocation.
    pub first_loss: f64,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Throughput of this invocation, images per second.
    pub images_per_sec: f64,
    /// Last collapse verdict.
    pub collapse: String,
    /// Whether a SIGINT or SIGTERM stopped the run early (with its checkpoint written).
    pub interrupted: bool,
    /// Why `--stop-on-collapse` stopped the run (with its checkpoint written).
    pub collapsed: Option<String>,
}

impl Summary {
    /// A run asked to continue past its end.
    fn nothing_to_do(steps: u64) -> Self {
        Self {
            steps,
            first_loss: f64::NAN,
            last_loss: f64::NAN,
            images_per_sec: 0.0,
            collapse: "n/a".into(),
            interrupted: false,
            collapsed: None,
        }
    }
}

/// What the steps of this invocation add up to, for the [`Summary`].
struct Tally {
    /// Images of one step, over every process.
    global_batch: usize,
    /// When the first step started.
    started: Instant,
    /// Steps taken.
    steps: u64,
    /// The first and the latest loss.
    losses: (f64, f64),
    /// The latest collapse verdict.
    collapse: String,
    /// Steps whose f16 update was skipped.
    skipped: u64,
    /// Consecutive steps with a collapsed verdict, up to now.
    collapsed_steps: u32,
    /// Whether the collapse warning was given.
    warned: bool,
}

impl Tally {
    fn new(global_batch: usize) -> Self {
        Self {
            global_batch,
            started: Instant::now(),
            steps: 0,
            losses: (f64::NAN, f64::NAN),
            collapse: "ok".into(),
            skipped: 0,
            collapsed_steps: 0,
            warned: false,
        }
    }

    /// The advice to give when the teacher has just stayed collapsed for
    /// [`COLLAPSE_STEPS`] steps (once per stretch), else `None`.
    fn collapse_alarm(&mut self) -> Option<String> {
        if self.collapse == "ok" {
            self.collapsed_steps = 0;
            self.warned = false;
            return None;
        }
        self.collapsed_steps += 1;
        (self.collapsed_steps >= COLLAPSE_STEPS && !std::mem::replace(&mut self.warned, true))
            .then(|| collapse_advice(&self.collapse))
    }

    /// Counts a finite step that started at `t0`; returns its images per second.
    fn add(&mut self, out: &StepOutput, out_dim: usize, t0: Instant) -> f64 {
        self.steps += 1;
        self.skipped += u64::from(out.skipped);
        self.collapse = collapse_indicator(&out.stats, out_dim).to_string();
        if self.losses.0.is_nan() {
            self.losses.0 = out.loss;
        }
        self.losses.1 = out.loss;
        self.global_batch as f64 / t0.elapsed().as_secs_f64()
    }

    /// The summary of a run now at `end_step` (`interrupted` by a signal or not), with what
    /// the user should know: skipped f16 updates, unreadable samples.
    fn finish(
        self,
        nets: &Networks,
        unreadable: usize,
        end_step: u64,
        (interrupted, collapsed): (bool, Option<String>),
    ) -> Summary {
        if self.skipped > 0 {
            log::info!(
                "{} of {} steps were skipped because an f16 gradient overflowed (the loss scale is now {}); a few early on are normal",
                self.skipped,
                self.steps,
                nets.scaler.map_or(f64::NAN, |s| s.scale)
            );
        }
        if unreadable > 0 {
            log::warn!(
                "{unreadable} samples could not be read and were replaced by the next readable ones (see the warnings above for which)"
            );
        }
        let images = self.steps as f64 * self.global_batch as f64;
        Summary {
            steps: end_step,
            first_loss: self.losses.0,
            last_loss: self.losses.1,
            images_per_sec: images / self.started.elapsed().as_secs_f64(),
            collapse: self.collapse,
            interrupted,
            collapsed,
        }
    }
}

/// The data of a run and how many steps its epochs hold.
struct RunData {
    /// The training images.
    source: Arc<dyn Source>,
    /// This process's share of them.
    shard: Shard,
    /// Iterations per epoch of each process.
    iters_per_epoch: usize,
}

/// One training iteration with what the method draws and loads around it: the schedule
/// values, the step's inputs (iBOT's masks, drop path), DINOv3's Gram teacher loaded and
/// refreshed on its schedule.
struct Stepper<'a> {
    /// The run.
    cfg: &'a TrainConfig,
    /// Its schedules.
    schedules: &'a Schedules,
    /// iBOT's mask generator (DINOv2 and DINOv3).
    masking: Option<MaskingGenerator>,
    /// When the Gram teacher is loaded and refreshed (DINOv3).
    gram: Option<GramSchedule>,
    /// DINOv2's terms and parameter groups.
    dinov2: Option<Dinov2Step<'a>>,
    /// The plain device.
    device: Device,
    /// The student's device.
    ad_device: Device,
}

impl<'a> Stepper<'a> {
    /// The machinery of `cfg`'s method for steps `range` of a `total_steps` run.
    fn new(
        cfg: &'a TrainConfig,
        schedules: &'a Schedules,
        nets: &Networks,
        run: &RunDir,
        total_steps: u64,
        range: (u64, u64),
        device: &Device,
    ) -> Result<Self> {
        let masking = cfg.objective.dinov2.as_ref().map(|_| {
            let size = cfg.data.crops.global_size as usize;
            MaskingGenerator::for_crops(size, cfg.model.patch_size, false)
        });
        let dinov2 = cfg.objective.dinov2.as_ref().map(|objective| Dinov2Step {
            objective,
            groups: cfg.optim.dinov2.unwrap_or_default(),
        });
        Ok(Self {
            cfg,
            schedules,
            masking,
            gram: gram_schedule(cfg, nets, run, total_steps, range)?,
            dinov2,
            device: device.clone(),
            ad_device: device.clone().autodiff(),
        })
    }

    /// Iteration `step` of `epoch` on `batch`; returns what the step produced, the schedule
    /// values it ran with and the Gram term's weight.
    fn step(
        &self,
        mut nets: Networks,
        batch: &Batch,
        step: u64,
        epoch: usize,
    ) -> (StepOutput, StepHyper, Option<f64>) {
        let cfg = self.cfg;
        if let Some(g) = &self.gram
            && g.active(step)
            && nets.gram.is_none()
        {
            // `gram_load_ema_teacher` before iteration `it_load_ema_teacher`.
            nets.gram = Some(nets.teacher.backbone.clone());
        }
        let hyper = step_hyper(cfg, self.schedules, step, epoch);
        let gram_weight = self
            .gram
            .filter(|g| g.active(step))
            .map(|g| g.weight_at(step));
        let mut inputs = step_inputs(
            cfg,
            &nets,
            batch,
            self.masking.as_ref(),
            step,
            &self.ad_device,
        );
        inputs.gram = gram_weight.map(|w| gram_input(cfg, batch, w, &self.device));
        let mut out = train_step(nets, inputs, &hyper, self.dinov2, &self.device);
        if let Some(g) = &self.gram
            && g.refresh_after(step)
        {
            // `update_gram` after the optimiser step and the EMA update.
            out.nets.gram = Some(out.nets.teacher.backbone.clone());
            log::info!(
                "the Gram teacher now copies the teacher of step {}",
                step + 1
            );
        }
        (out, hyper, gram_weight)
    }
}

/// Rank 0's checkpoints after step `done`: the teacher of a `finished_epoch` that
/// `--saveckp-freq` keeps, then `last.safetensors` when `saving`.
#[allow(clippy::too_many_arguments)]
fn save(
    w: &mut RunWriter,
    cfg: &TrainConfig,
    mc: &ModelConfig,
    nets: &Networks,
    opts: &RunOptions,
    done: u64,
    finished_epoch: Option<usize>,
    saving: bool,
) -> Result<()> {
    // The epoch's teacher goes before last.safetensors moves past the epoch, so that a kill
    // in between replays the epoch's end and writes it again.
    if let Some(epoch) = finished_epoch
        && opts.saveckp_freq > 0
        && (epoch - 1).is_multiple_of(opts.saveckp_freq)
    {
        w.save_epoch_teacher(mc, &nets.teacher, epoch - 1, done)?;
    }
    if saving {
        w.save_last(cfg, mc, nets, done)?;
    }
    Ok(())
}

/// Runs training in `run` (fresh, or resumed when `resume` is set); rank 0, which writes the
/// run's files, holds the folder's `lock`.
pub fn train(
    cfg: TrainConfig,
    (run, lock): (&RunDir, Option<&RunLock>),
    resume: bool,
    opts: &RunOptions,
    device: &Device,
) -> Result<Summary> {
    let mc = cfg.model_config()?;
    let world = distributed::world();
    if world.is_main() && lock.is_none() {
        bail!(
            "rank 0 trains {} without holding its lock",
            run.root.display()
        );
    }
    preflight(&cfg, run, opts, &world, device)?;
    let data = open_data(&cfg, &world)?;
    let fingerprint = data.source.fingerprint();
    let eval_set = EvalSet::new(&cfg, opts.eval_data.as_deref(), data.source.clone())?;
    // lr = base × batch_size_per_gpu × world_size / 256 (DINOv2: √(… / 1024)).
    let global_batch = cfg.data.batch_size * world.size;
    let schedules = Schedules::new(
        &cfg.schedule,
        data.iters_per_epoch,
        global_batch,
        cfg.schedule_rule(),
    );
    let total_steps = (cfg.schedule.epochs * data.iters_per_epoch) as u64;
    let end_step = opts.max_steps.map_or(total_steps, |m| m.min(total_steps));
    let (mut nets, start_step) = restore_or_create(
        &cfg,
        &mc,
        run,
        resume,
        (&fingerprint, opts),
        (&world, lock),
        device,
    )?;
    if world.is_main() {
        run.write_config(&cfg)?;
    }
    if start_step >= end_step {
        log::info!("nothing to do: the run is at step {start_step} of {end_step}");
        return Ok(Summary::nothing_to_do(start_step));
    }
    log_start(
        &cfg,
        &mc,
        &data,
        opts,
        &world,
        (start_step, end_step, total_steps),
    );
    let mut writer = match world.is_main() {
        true => Some(RunWriter::open(run, start_step, fingerprint)?),
        false => None,
    };
    let interrupt = Interrupt::install()?;
    let mut loader = data.loader(&cfg, (start_step, end_step), opts.workers);
    let bar = progress_bar(opts, &world, start_step, end_step);
    if start_step == 0
        && let Some(w) = writer.as_mut()
    {
        // The random-init model on the same held-out scenes: the baseline every later
        // evaluation (and the paper's 2x claim) is read against, and the "before" picture.
        evaluate(&nets.teacher, &cfg, &eval_set, run, 0, device, w.metrics())?;
    }
    let stepper = Stepper::new(
        &cfg,
        &schedules,
        &nets,
        run,
        total_steps,
        (start_step, end_step),
        device,
    )?;
    let mut tally = Tally::new(global_batch);
    let mut stopped_at = None;
    let mut collapsed = None;
    for step in start_step..end_step {
        distributed::set_step(step);
        let t0 = Instant::now();
        let batch = loader.next_batch().expect("loader covers the step range")?;
        let epoch = (step / data.iters_per_epoch as u64) as usize;
        let (out, hyper, gram_weight) = stepper.step(nets, &batch, step, epoch);
        if !out.loss.is_finite() || out.diverged {
            bar.abandon();
            let what = match out.diverged {
                true => "the gradients became NaN or infinite".to_string(),
                false => format!("the loss became {}", out.loss),
            };
            let last_saved = match writer.as_mut() {
                Some(w) => {
                    w.discard();
                    w.last_saved()
                }
                None => run.last().exists().then_some(start_step),
            };
            return Err(run.diverged(&what, step, last_saved, cfg.schedule.lr));
        }
        // The state this step started from gave a finite loss and gradients: it may be kept.
        if let Some(w) = writer.as_mut() {
            w.commit().inspect_err(|_| bar.abandon())?;
        }
        let img_per_sec = tally.add(&out, cfg.model.out_dim, t0);
        let alarm = tally.collapse_alarm();
        if let Some(advice) = &alarm {
            bar.suspend(|| log::warn!("step {step}: {advice}"));
        }
        let record = step_record(&cfg, &out, &hyper, step, epoch, img_per_sec, gram_weight);
        if let Some(w) = writer.as_mut() {
            w.record(&record)?;
        }
        nets = out.nets;
        bar.set_position(step + 1);
        let said = format!(
            "epoch {epoch} loss {:.4} lr {:.2e} {img_per_sec:.1} img/s",
            out.loss, hyper.lr
        );
        if opts.quiet && (step % 10 == 0 || step + 1 == end_step) {
            log::info!("step {step} {said} teacher {}", tally.collapse);
        }
        bar.set_message(said);
        let done = step + 1;
        let epoch_end = done.is_multiple_of(data.iters_per_epoch as u64);
        let collapse_stop = alarm.filter(|_| opts.stop_on_collapse);
        let stop = stop_requested(&interrupt, collapse_stop.is_some(), &world)?;
        let saving =
            done % opts.checkpoint_every.max(1) == 0 || epoch_end || done == end_step || stop;
        if saving && world.size > 1 {
            // The EMA is the same on every rank exactly when the averaged gradients were;
            // checked before the one copy on disk stands for all of them.
            distributed::ensure_agree(
                weights_digest(&nets),
                &format!("the weights after step {done}"),
            )?;
        }
        if let Some(w) = writer.as_mut() {
            let finished_epoch = epoch_end.then_some((done / data.iters_per_epoch as u64) as usize);
            save(w, &cfg, &mc, &nets, opts, done, finished_epoch, saving)
                .inspect_err(|_| bar.abandon())?;
            let eval_due = match opts.eval_every {
                0 => epoch_end,
                every => done.is_multiple_of(every),
            };
            if (eval_due || done == end_step) && !stop {
                evaluate(
                    &nets.teacher,
                    &cfg,
                    &eval_set,
                    run,
                    done,
                    device,
                    w.metrics(),
                )?;
            }
        }
        if stop {
            stopped_at = Some(done);
            collapsed = collapse_stop;
            break;
        }
    }
    bar.finish();
    if let Some(w) = writer.as_mut() {
        w.finish(&mc, &nets.teacher)?;
    }
    let unreadable = loader.unreadable.load(std::sync::atomic::Ordering::Relaxed);
    drop(loader);
    Ok(tally.finish(
        &nets,
        unreadable,
        stopped_at.unwrap_or(end_step),
        (stopped_at.is_some() && collapsed.is_none(), collapsed),
    ))
}

/// Whether a SIGINT or SIGTERM (or, with `collapsed`, --stop-on-collapse) asks this run to
/// stop after the current step; on several ranks, whether any rank asks (all stop at the
/// same step).
fn stop_requested(interrupt: &Interrupt, collapsed: bool, world: &World) -> Result<bool> {
    // Each rank judges collapse on its own share of the batch: the stop goes through the
    // same collective as a signal, so no rank waits for one that stopped.
    let mine = interrupt.requested() || collapsed;
    if world.size == 1 {
        return Ok(mine);
    }
    let mut any = [f32::from(u8::from(mine))];
    distributed::all_reduce_sum(&mut any, "the stop signal");
    Ok(any[0] > 0.0)
}

impl RunData {
    /// The loader of steps `range`, on `workers` threads.
    fn loader(&self, cfg: &TrainConfig, range: (u64, u64), workers: usize) -> Loader {
        let seed = cfg.run.seed;
        let augment = cfg.loader_augment();
        Loader::start(
            self.source.clone(),
            augment,
            seed,
            cfg.data.batch_size,
            self.shard,
            range,
            workers,
            2,
        )
    }
}

/// Refuses a run that cannot start here: another number of processes than it was trained
/// with, f16 where the device has no f16 arithmetic.
fn preflight(
    cfg: &TrainConfig,
    run: &RunDir,
    opts: &RunOptions,
    world: &World,
    device: &Device,
) -> Result<()> {
    let trained_by = cfg.run.world_size;
    if trained_by != world.size {
        bail!(
            "{} was trained by {trained_by} process{} and this is one of {}: the data order and the learning rate depend on it; \
             resume it with `mpirun -np {trained_by} dino train --resume {}`{}",
            run.root.display(),
            if trained_by == 1 { "" } else { "es" },
            world.size,
            run.root.display(),
            if trained_by == 1 {
                " (or without mpirun)"
            } else {
                ""
            }
        );
    }
    if cfg.optim.precision == Precision::F16 && !device.supports_dtype(burn::tensor::DType::F16) {
        bail!(
            "--precision f16 needs f16 arithmetic, which {} does not offer (on wgpu: an adapter with shader-f16); train with --precision f32",
            opts.device_name
        );
    }
    Ok(())
}

/// The most steps a run's schedules may span (they hold a value per step).
const MAX_SCHEDULE_STEPS: usize = 10_000_000;

/// Opens the training data and this process's shard of it; refuses data smaller than one
/// batch per process, and schedules longer than [`MAX_SCHEDULE_STEPS`].
fn open_data(cfg: &TrainConfig, world: &World) -> Result<RunData> {
    let d = &cfg.data;
    let source: Arc<dyn Source> = Arc::from(
        d.open(cfg.run.seed)
            .with_context(|| format!("opening --data {}", d.source))?,
    );
    if source.len().div_ceil(world.size) < d.batch_size {
        bail!(
            "{} has {} images, fewer than one batch of {} per process ({} process{}); lower --batch-size",
            source.describe(),
            source.len(),
            d.batch_size,
            world.size,
            if world.size == 1 { "" } else { "es" }
        );
    }
    let iters_per_epoch = steps_per_epoch(source.len(), d.batch_size, world.size);
    // The schedules hold a value per step: an absurd --epochs would allocate without bound.
    let steps = cfg.schedule.epochs.checked_mul(iters_per_epoch);
    if steps.is_none_or(|s| s > MAX_SCHEDULE_STEPS) {
        bail!(
            "--epochs {} of {iters_per_epoch} steps each is more than {MAX_SCHEDULE_STEPS} steps, about ten times the longest official schedule (DINOv3 trains past a million iterations); lower --epochs (schedule.epochs)",
            cfg.schedule.epochs
        );
    }
    Ok(RunData {
        source,
        shard: Shard::of_this_process(),
        iters_per_epoch,
    })
}

/// The networks of the run's last checkpoint when resuming (refused when it was trained on
/// other data, unless allowed), else fresh ones; on several ranks, checked to be the same
/// everywhere.
fn restore_or_create(
    cfg: &TrainConfig,
    mc: &ModelConfig,
    run: &RunDir,
    resume: bool,
    (fingerprint, opts): (&str, &RunOptions),
    (world, lock): (&World, Option<&RunLock>),
    device: &Device,
) -> Result<(Networks, u64)> {
    if let Some(lock) = lock {
        run.remove_stale_temp_files(lock);
    }
    let saved = run.last().exists();
    if resume && !saved {
        log::warn!(
            "{} has no checkpoint yet (the run stopped before its first save); starting it from step 0",
            run.root.display()
        );
    }
    let (nets, step) = if resume && saved {
        let restored = read_training_checkpoint(cfg, mc, run, device)?;
        if let Some(was) = &restored.data_fingerprint
            && was != fingerprint
        {
            let what = format!(
                "{} was trained on other data than {} holds now (fingerprint {was}, now {fingerprint}: files were added, removed or renamed)",
                run.root.display(),
                cfg.data.source
            );
            if !opts.allow_data_change {
                bail!(
                    "{what}; a resumed run would see other batches than the uninterrupted one. Restore the data, or add --allow-data-change to continue on it anyway"
                );
            }
            log::warn!(
                "{what}; continuing on it (--allow-data-change): the run is no longer the one an uninterrupted training would give"
            );
        }
        (restored.nets, restored.step)
    } else {
        (Networks::fresh(cfg, mc, device)?, 0)
    };
    // `init_distributed_mode` and `fix_random_seeds` give every rank the same weights;
    // checked here rather than trusted (a rank built from other sources, another checkpoint).
    if world.size > 1 {
        distributed::ensure_agree(weights_digest(&nets), "the initial weights")?;
    }
    Ok((nets, step))
}

/// One number for student and teacher together, compared across ranks.
fn weights_digest(nets: &Networks) -> u64 {
    use crate::distributed::ddp::weights_digest;
    weights_digest(&nets.student) ^ weights_digest(&nets.teacher).rotate_left(1)
}

/// The line that says what is about to train, on what, for how long.
fn log_start(
    cfg: &TrainConfig,
    mc: &ModelConfig,
    data: &RunData,
    opts: &RunOptions,
    world: &World,
    (start_step, end_step, total_steps): (u64, u64, u64),
) {
    let b = cfg.data.batch_size;
    let batch = if world.size > 1 {
        format!(
            "{} ({b} per process × {} processes)",
            b * world.size,
            world.size
        )
    } else {
        b.to_string()
    };
    log::info!(
        "training {} /{} ({} blocks) on {} with {}: steps {start_step}..{end_step} of {total_steps} ({} per epoch), batch {batch}, {} crops",
        cfg.model.arch,
        cfg.model.patch_size,
        mc.vit.depth,
        data.source.describe(),
        opts.device_name,
        data.iters_per_epoch,
        cfg.data.ncrops()
    );
}

/// The bar on stderr (hidden with `--quiet` and on every rank but 0).
fn progress_bar(opts: &RunOptions, world: &World, start_step: u64, end_step: u64) -> ProgressBar {
    if opts.quiet || !world.is_main() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(end_step);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} ETA {eta}",
        )
        .expect("valid template"),
    );
    bar.set_position(start_step);
    bar
}

/// When DINOv3's Gram teacher is loaded and refreshed in this run, said in the log; refuses a
/// checkpoint past the start of anchoring without a Gram teacher.
fn gram_schedule(
    cfg: &TrainConfig,
    nets: &Networks,
    run: &RunDir,
    total_steps: u64,
    (start_step, end_step): (u64, u64),
) -> Result<Option<GramSchedule>> {
    let Some(g) = cfg.gram().map(|g| g.schedule(total_steps)) else {
        return Ok(None);
    };
    if start_step > g.from && nets.gram.is_none() {
        bail!(
            "{} is at step {start_step}, past the start of Gram anchoring (step {}), but holds no Gram teacher; it was not written by this run",
            run.last().display(),
            g.from
        );
    }
    log::info!(
        "Gram anchoring from step {} (weight ramping to {} over {} steps), the Gram teacher refreshed every {} steps at most {} times, on {} px crops",
        g.from,
        g.weight,
        g.ramp,
        g.every,
        g.max_refreshes,
        cfg.gram_crop_size().unwrap_or(cfg.data.crops.global_size)
    );
    if g.from >= end_step {
        // The default start is 5/6 of the epochs' schedule, which --max-steps cuts short.
        log::warn!(
            "Gram anchoring starts at step {} of the {total_steps}-step schedule, but this run stops at step {end_step} (--max-steps): it trains no Gram term; set --gram-from-step below {end_step} to anchor",
            g.from
        );
    }
    Ok(Some(g))
}

/// The schedules' values at `step` of `epoch` (`lr_schedule[it]`, `wd_schedule[it]`,
/// `momentum_schedule[it]`, the teacher temperature, the last layer frozen or not).
fn step_hyper(cfg: &TrainConfig, schedules: &Schedules, step: u64, epoch: usize) -> StepHyper {
    let it = step as usize;
    StepHyper {
        lr: schedules.lr[it],
        weight_decay: schedules.wd[it],
        momentum: schedules.momentum[it],
        teacher_temp: schedules.teacher_temp_at(it, epoch),
        clip_grad: cfg.optim.clip_grad,
        freeze_last_layer: epoch < cfg.schedule.freeze_last_layer,
    }
}

/// A step's line of `metrics.jsonl`.
fn step_record(
    cfg: &TrainConfig,
    out: &StepOutput,
    hyper: &StepHyper,
    step: u64,
    epoch: usize,
    img_per_sec: f64,
    gram_weight: Option<f64>,
) -> serde_json::Value {
    let stats = &out.stats;
    let mut record = serde_json::json!({
        "step": step, "epoch": epoch, "loss": out.loss, "lr": hyper.lr, "wd": hyper.weight_decay,
        "momentum": hyper.momentum, "teacher_temp": hyper.teacher_temp, "img_per_sec": img_per_sec,
        "teacher_entropy": stats.entropy, "teacher_batch_entropy": stats.mean_entropy,
        "collapse": collapse_indicator(stats, cfg.model.out_dim),
    });
    // The DINO cross-entropy: the loss itself, or DINOv2's unweighted DINO term.
    let ce = match cfg.objective.dinov2 {
        None => out.loss,
        Some(_) => out
            .terms
            .iter()
            .find(|(name, _)| *name == "dino_loss")
            .map_or(f64::NAN, |t| t.1),
    };
    let d = Diagnostics::of(ce, stats, cfg.model.out_dim, &out.nets.loss.center);
    record["teacher_entropy_ratio"] = d.entropy_ratio.into();
    record["effective_prototypes"] = d.effective_prototypes.into();
    record["center_norm"] = d.center_norm.into();
    if d.kl.is_finite() {
        record["kl_teacher_student"] = d.kl.into();
    }
    if cfg.objective.dinov2.is_some() {
        for (name, v) in &out.terms {
            record[*name] = (*v).into();
        }
        if let Some(w) = gram_weight {
            record["gram_weight"] = w.into();
        }
    }
    if let Some(scaler) = &out.nets.scaler {
        // The scale after this step's update, and whether the update was skipped.
        record["loss_scale"] = scaler.scale.into();
        record["skipped"] = out.skipped.into();
    }
    let world = distributed::world();
    if world.size > 1 {
        record["world_size"] = world.size.into();
        record["allreduce_ms"] = out.allreduce_ms.into();
    }
    record
}
