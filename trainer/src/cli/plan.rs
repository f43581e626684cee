//! A new run's plan before anything is written: images, steps and, when the run could take
//! more than an hour on this device, the time one measured step predicts. Such a run asks
//! first (`--yes` answers in advance), so that `dino train` with the official defaults does
//! not start days of work on a laptop unannounced.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result, bail};

use crate::cli::bench::{bench_step, compute_threads, step_flops_per_image};
use crate::cli::device::Selected;
use crate::data::pipeline::steps_per_epoch;
use crate::train::config::TrainConfig;

/// Runs estimated above this many seconds ask before they start.
pub const ASK_ABOVE_SECS: f64 = 3600.0;

/// More than one CPU core computes per second in f32 (two AVX-512 FMA units at 3+ GHz give
/// about 2e11): a run that cannot finish within the hour even at this speed is timed.
const CPU_PEAK_FLOPS_PER_THREAD: f64 = 2e11;

/// More than any GPU computes per second (an H200's dense fp16 tensor-core peak is about 1e15).
const GPU_PEAK_FLOPS: f64 = 2e15;

/// What a new run will do, and how long it is expected to take.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The data set, as the run's log names it.
    pub data: String,
    /// Images in it.
    pub images: usize,
    /// Training steps the run will take (`--max-steps` included).
    pub steps: u64,
    /// Images per step.
    pub batch: usize,
    /// Measured images per second of one step, when the run was timed.
    pub img_per_sec: Option<f64>,
}

impl Plan {
    /// Seconds of training the measured speed predicts (evaluation not counted).
    pub fn seconds(&self) -> Option<f64> {
        self.img_per_sec
            .map(|r| self.steps as f64 * self.batch as f64 / r)
    }
}

/// What to do with a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start: short enough, or `--yes` was given.
    Start,
    /// Ask on the terminal.
    Ask,
    /// Nobody can answer: stop and say how to start it.
    Refuse,
}

/// Whether a run expected to take `seconds` starts, asks, or is refused.
pub fn decide(seconds: Option<f64>, yes: bool, terminal: bool) -> Decision {
    match seconds {
        _ if yes => Decision::Start,
        Some(s) if s > ASK_ABOVE_SECS => match terminal {
            true => Decision::Ask,
            false => Decision::Refuse,
        },
        _ => Decision::Start,
    }
}

/// "41 min", "5.2 h", "3.1 days".
pub fn human_duration(seconds: f64) -> String {
    match seconds {
        s if s < 5400.0 => format!("{:.0} min", s / 60.0),
        s if s < 2.0 * 86400.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} days", s / 86400.0),
    }
}

/// The plan of a new run of `cfg` on `selected`: timed with one step (at a batch of at most 2,
/// after one untimed) only when even the device's peak speed leaves it above the hour.
pub fn plan(cfg: &TrainConfig, max_steps: Option<u64>, selected: &Selected) -> Result<Plan> {
    let d = &cfg.data;
    let source = d
        .open(cfg.run.seed)
        .with_context(|| format!("opening --data {}", d.source))?;
    let images = source.len();
    let total =
        (cfg.schedule.epochs).saturating_mul(steps_per_epoch(images, d.batch_size, 1)) as u64;
    let steps = max_steps.map_or(total, |m| m.min(total));
    let mut plan = Plan {
        data: source.describe(),
        images,
        steps,
        batch: d.batch_size,
        img_per_sec: None,
    };
    let flops = step_flops_per_image(cfg)? * steps as f64 * d.batch_size as f64;
    let peak = match selected.on_cpu {
        true => CPU_PEAK_FLOPS_PER_THREAD * compute_threads() as f64,
        false => GPU_PEAK_FLOPS,
    };
    if flops / peak <= ASK_ABOVE_SECS {
        return Ok(plan);
    }
    let mut probe = cfg.clone();
    probe.data.batch_size = d.batch_size.min(2);
    log::info!(
        "timing one step at batch {} to estimate this run ({} steps of {})",
        probe.data.batch_size,
        steps,
        d.batch_size
    );
    let line = bench_step(&probe, &selected.device, &selected.name, 1, 1)?;
    plan.img_per_sec = line["img_per_sec"].as_f64();
    Ok(plan)
}

/// Starts a new run only when its plan allows: above an hour it asks on the terminal, and
/// without one it stops, printing the plan and how to start it anyway.
pub fn confirm(
    cfg: &TrainConfig,
    max_steps: Option<u64>,
    selected: &Selected,
    yes: bool,
) -> Result<()> {
    if yes {
        return Ok(());
    }
    let plan = plan(cfg, max_steps, selected)?;
    let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let decision = decide(plan.seconds(), yes, terminal);
    if decision == Decision::Start {
        return Ok(());
    }
    let depth = cfg.model_config()?.vit.depth;
    let text = format!(
        "this run trains {}/{} ({depth} blocks) on {} ({} images): {} steps of {} images; one step here ran at {:.2} img/s on {}, so training alone takes about {}",
        cfg.model.arch,
        cfg.model.patch_size,
        plan.data,
        plan.images,
        plan.steps,
        plan.batch,
        plan.img_per_sec.unwrap_or(0.0),
        selected.name,
        human_duration(plan.seconds().unwrap_or(0.0)),
    );
    let shorter = "shorten it with --max-steps or --epochs, train a smaller model (--arch vit_tiny --depth 4 --image-size 64 --local-size 32, the README's main job), or use a GPU";
    if decision == Decision::Ask {
        eprint!("{text}.\nStart it? [y/N] ");
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
            return Ok(());
        }
        bail!("not started; {shorter}");
    }
    bail!("{text}; add --yes to start it anyway, or {shorter}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_above_an_hour_ask_on_a_terminal_and_stop_without_one() {
        assert_eq!(decide(None, false, false), Decision::Start);
        assert_eq!(decide(Some(3000.0), false, false), Decision::Start);
        assert_eq!(decide(Some(4000.0), false, true), Decision::Ask);
        assert_eq!(decide(Some(4000.0), false, false), Decision::Refuse);
        assert_eq!(decide(Some(4000.0), true, false), Decision::Start);
        assert_eq!(decide(Some(4000.0), true, true), Decision::Start);
    }

    #[test]
    fn durations_read_in_the_unit_that_fits() {
        assert_eq!(human_duration(41.0 * 60.0), "41 min");
        assert_eq!(human_duration(5.2 * 3600.0), "5.2 h");
        assert_eq!(human_duration(3.1 * 86400.0), "3.1 days");
    }

    #[test]
    fn the_official_defaults_on_two_cpu_threads_are_timed() {
        // ViT-S/16, 2048 synthetic scenes, 100 epochs of 64: 3200 steps of ~113 GFLOP per
        // image cannot fit an hour on two threads even at their peak.
        let cfg = TrainConfig::default();
        let d = &cfg.data;
        let steps = cfg.schedule.epochs * steps_per_epoch(d.synthetic_count, d.batch_size, 1);
        assert_eq!((steps, d.batch_size), (3200, 64));
        let flops = step_flops_per_image(&cfg).unwrap() * (steps * d.batch_size) as f64;
        assert!(flops / (2.0 * CPU_PEAK_FLOPS_PER_THREAD) > ASK_ABOVE_SECS);
    }
}
