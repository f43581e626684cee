//! Schedules of `main_dino.py` / `utils.py`: learning rate, weight decay, teacher momentum
//! (per iteration, `cosine_scheduler`) and teacher temperature (per epoch); and DINOv2's
//! (`train/train.py` `build_schedulers`, `CosineScheduler`): the same shapes, the learning
//! rate scaled by `√(batch / 1024)` and the temperature warmed up per iteration.

/// `utils.cosine_scheduler`: linear warm-up from `start_warmup_value` to `base_value` over
/// `warmup_epochs`, then a half cosine from `base_value` to `final_value`; one value per
/// iteration, `epochs * iters_per_epoch` in all.
pub fn cosine_scheduler(
    base_value: f64,
    final_value: f64,
    epochs: usize,
    iters_per_epoch: usize,
    warmup_epochs: usize,
    start_warmup_value: f64,
) -> Vec<f64> {
    let total = epochs * iters_per_epoch;
    let warmup_iters = (warmup_epochs * iters_per_epoch).min(total);
    let mut out = Vec::with_capacity(total);
    // np.linspace(start, base, n): n points, both ends included.
    for i in 0..warmup_iters {
        out.push(if warmup_iters == 1 {
            start_warmup_value
        } else {
            start_warmup_value
                + (base_value - start_warmup_value) * i as f64 / (warmup_iters - 1) as f64
        });
    }
    let rest = total - warmup_iters;
    for i in 0..rest {
        let cos = (std::f64::consts::PI * i as f64 / rest as f64).cos();
        out.push(final_value + 0.5 * (base_value - final_value) * (1.0 + cos));
    }
    out
}

/// The teacher temperature of each epoch: `linspace(warmup, final, warmup_epochs)` then `final`.
pub fn teacher_temp_schedule(
    warmup_temp: f64,
    temp: f64,
    warmup_epochs: usize,
    epochs: usize,
) -> Vec<f64> {
    let warm = warmup_epochs.min(epochs);
    let mut out = Vec::with_capacity(epochs);
    for i in 0..warm {
        out.push(if warm == 1 {
            warmup_temp
        } else {
            warmup_temp + (temp - warmup_temp) * i as f64 / (warm - 1) as f64
        });
    }
    out.extend(std::iter::repeat_n(temp, epochs - warm));
    out
}

/// Every schedule of one run, indexed by global iteration (or epoch for the temperature).
#[derive(Debug, Clone)]
pub struct Schedules {
    /// Learning rate per iteration (`lr × batch / 256` warm-up then cosine to `min_lr`).
    pub lr: Vec<f64>,
    /// Weight decay per iteration (cosine `weight_decay → weight_decay_end`).
    pub wd: Vec<f64>,
    /// Teacher EMA momentum per iteration (cosine `momentum_teacher → 1`).
    pub momentum: Vec<f64>,
    /// Teacher temperature per epoch (DINO) or per iteration (DINOv2).
    pub teacher_temp: Vec<f64>,
    /// Whether `teacher_temp` is indexed by iteration; past its end the final value holds.
    pub temp_per_iteration: bool,
    /// The temperature after the warm-up.
    pub final_teacher_temp: f64,
}

/// The run's schedule section (`schedule` in `config.json`): the values every schedule
/// starts and ends at, and how long each warm-up lasts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Epochs the schedules span.
    pub epochs: usize,
    /// Base learning rate, before the batch scaling (DINO: × batch / 256; DINOv2: ×
    /// √(batch / 1024)).
    pub lr: f64,
    /// Final learning rate of the cosine.
    pub min_lr: f64,
    /// Linear warm-up epochs of the learning rate.
    pub warmup_epochs: usize,
    /// Initial weight decay.
    pub weight_decay: f64,
    /// Final weight decay.
    pub weight_decay_end: f64,
    /// Epochs during which the head's last layer is frozen.
    pub freeze_last_layer: usize,
    /// Initial teacher EMA momentum (cosine to 1).
    pub momentum_teacher: f64,
    /// Teacher temperature at the start of its warm-up.
    pub warmup_teacher_temp: f64,
    /// Teacher temperature after the warm-up.
    pub teacher_temp: f64,
    /// Epochs of teacher-temperature warm-up.
    pub warmup_teacher_temp_epochs: usize,
}

impl Default for ScheduleConfig {
    /// `main_dino.py`'s defaults.
    fn default() -> Self {
        Self {
            epochs: 100,
            lr: 0.0005,
            min_lr: 1e-6,
            warmup_epochs: 10,
            weight_decay: 0.04,
            weight_decay_end: 0.4,
            freeze_last_layer: 1,
            momentum_teacher: 0.996,
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.04,
            warmup_teacher_temp_epochs: 0,
        }
    }
}

impl ScheduleConfig {
    /// DINOv2's `ssl_default_config.yaml` (ViT-S/16 here): learning rate 0.004 for a batch of
    /// 1024 under the square-root rule, teacher momentum 0.992, temperature 0.04 → 0.07 over 30
    /// epochs.
    pub fn dinov2() -> Self {
        Self {
            lr: 0.004,
            momentum_teacher: 0.992,
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.07,
            warmup_teacher_temp_epochs: 30,
            ..Self::default()
        }
    }

    /// DINOv3's: DINOv2's with a learning rate of 0.001.
    pub fn dinov3() -> Self {
        Self {
            lr: 0.001,
            ..Self::dinov2()
        }
    }
}

/// How the schedules scale and step: DINO's rules, or DINOv2's (`sqrt_wrt_1024` learning-rate
/// scaling, the temperature warmed up per iteration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleRule {
    /// `main_dino.py`.
    Dino,
    /// DINOv2 and DINOv3.
    Dinov2,
}

impl Schedules {
    /// Builds all schedules exactly as the official code does, for `iters_per_epoch` steps
    /// an epoch of `batch_size` images in all (every process's).
    pub fn new(
        p: &ScheduleConfig,
        iters_per_epoch: usize,
        batch_size: usize,
        rule: ScheduleRule,
    ) -> Self {
        let dinov2 = rule == ScheduleRule::Dinov2;
        let lr = if dinov2 {
            p.lr * (batch_size as f64 / 1024.0).sqrt()
        } else {
            p.lr * batch_size as f64 / 256.0
        };
        let teacher_temp = if dinov2 {
            // CosineScheduler(temp, temp, W, warmup_iters=W, start_warmup_value=warmup): a
            // linspace over the W = epochs × length warm-up iterations, then `temp`.
            teacher_temp_schedule(
                p.warmup_teacher_temp,
                p.teacher_temp,
                p.warmup_teacher_temp_epochs * iters_per_epoch,
                p.warmup_teacher_temp_epochs * iters_per_epoch,
            )
        } else {
            teacher_temp_schedule(
                p.warmup_teacher_temp,
                p.teacher_temp,
                p.warmup_teacher_temp_epochs,
                p.epochs,
            )
        };
        Self {
            lr: cosine_scheduler(
                lr,
                p.min_lr,
                p.epochs,
                iters_per_epoch,
                p.warmup_epochs,
                0.0,
            ),
            wd: cosine_scheduler(
                p.weight_decay,
                p.weight_decay_end,
                p.epochs,
                iters_per_epoch,
                0,
                0.0,
            ),
            momentum: cosine_scheduler(p.momentum_teacher, 1.0, p.epochs, iters_per_epoch, 0, 0.0),
            teacher_temp,
            temp_per_iteration: dinov2,
            final_teacher_temp: p.teacher_temp,
        }
    }

    /// The teacher temperature of iteration `it` in `epoch`.
    pub fn teacher_temp_at(&self, it: usize, epoch: usize) -> f64 {
        let i = if self.temp_per_iteration { it } else { epoch };
        match self.teacher_temp.get(i) {
            Some(&t) => t,
            None if self.temp_per_iteration => self.final_teacher_temp,
            None => *self.teacher_temp.last().unwrap_or(&self.final_teacher_temp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_has_the_official_shape() {
        let s = cosine_scheduler(1.0, 0.0, 4, 5, 1, 0.0);
        assert_eq!(s.len(), 20);
        assert_eq!(s[0], 0.0);
        assert_eq!(s[4], 1.0);
        assert_eq!(s[5], 1.0);
        assert!(s[19] > 0.0 && s[19] < 0.02);
        assert!(s[5..].windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn dinov2_scales_the_rate_by_the_square_root_and_warms_the_temperature_per_iteration() {
        let p = ScheduleConfig {
            lr: 0.004,
            min_lr: 1e-6,
            warmup_epochs: 1,
            weight_decay: 0.04,
            weight_decay_end: 0.4,
            freeze_last_layer: 1,
            momentum_teacher: 0.992,
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.07,
            warmup_teacher_temp_epochs: 2,
            epochs: 4,
        };
        let s = Schedules::new(&p, 3, 256, ScheduleRule::Dinov2);
        // Warm-up ends at the base value: 0.004 × √(256 / 1024).
        assert!((s.lr[2] - 0.002).abs() < 1e-15);
        // linspace(0.04, 0.07, 6) over iterations 0..6, then 0.07.
        assert!((s.teacher_temp_at(0, 0) - 0.04).abs() < 1e-15);
        assert!((s.teacher_temp_at(1, 0) - 0.046).abs() < 1e-12);
        assert!((s.teacher_temp_at(5, 1) - 0.07).abs() < 1e-15);
        assert_eq!(s.teacher_temp_at(11, 3), 0.07);
        let v1 = Schedules::new(&p, 3, 256, ScheduleRule::Dino);
        assert!((v1.lr[2] - 0.004).abs() < 1e-15);
        assert!((v1.teacher_temp_at(1, 0) - 0.04).abs() < 1e-15);
        assert!((v1.teacher_temp_at(3, 1) - 0.07).abs() < 1e-15);
    }

    #[test]
    fn teacher_temperature_warms_up_then_holds() {
        let t = teacher_temp_schedule(0.04, 0.07, 3, 5);
        assert_eq!(t.len(), 5);
        assert!((t[0] - 0.04).abs() < 1e-12 && (t[2] - 0.07).abs() < 1e-12 && t[4] == 0.07);
    }
}
