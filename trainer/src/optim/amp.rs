//! Dynamic loss scaling for `--precision f16`: PyTorch's `torch.cuda.amp.GradScaler` with its
//! defaults, which `main_dino.py --use_fp16` relies on.
//!
//! f16 gradients below 2⁻²⁴ flush to zero, so the loss is multiplied by a large scale before
//! the backward pass and the gradients divided by it afterwards. When any gradient overflowed
//! (inf or NaN) the optimiser step is skipped and the scale halved; after `GROWTH_INTERVAL`
//! clean steps in a row it doubles again.

use serde::{Deserialize, Serialize};

/// `GradScaler(init_scale=2.**16)`.
pub const INIT_SCALE: f64 = 65536.0;
/// `growth_factor`.
pub const GROWTH_FACTOR: f64 = 2.0;
/// `backoff_factor`.
pub const BACKOFF_FACTOR: f64 = 0.5;
/// `growth_interval`.
pub const GROWTH_INTERVAL: u32 = 2000;

/// The scaler's state, saved in training checkpoints so a resumed run scales as the
/// uninterrupted one would (the official checkpoint holds `fp16_scaler.state_dict()`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// Current multiplier of the loss.
    pub scale: f64,
    /// Clean steps since the last change of scale.
    pub growth_tracker: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: INIT_SCALE,
            growth_tracker: 0,
        }
    }
}

impl LossScaler {
    /// `GradScaler.update()` after a step whose unscaled gradients were (not) all finite.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= BACKOFF_FACTOR;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == GROWTH_INTERVAL {
                let grown = self.scale * GROWTH_FACTOR;
                // PyTorch keeps the old scale rather than grow it to infinity.
                if grown.is_finite() {
                    self.scale = grown;
                }
                self.growth_tracker = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sequence `torch.cuda.amp.GradScaler` (defaults) goes through: halve on every
    /// overflow, double after 2000 clean steps in a row, the count restarting at each change.
    #[test]
    fn follows_grad_scaler_defaults() {
        let mut s = LossScaler::default();
        assert_eq!(s.scale, 65536.0);
        s.update(true);
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker), (16384.0, 0));
        for _ in 0..1999 {
            s.update(false);
        }
        assert_eq!((s.scale, s.growth_tracker), (16384.0, 1999));
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker), (32768.0, 0));
        for _ in 0..1500 {
            s.update(false);
        }
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker), (16384.0, 0));
        let mut big = LossScaler {
            scale: f64::MAX,
            growth_tracker: GROWTH_INTERVAL - 1,
        };
        big.update(false);
        assert_eq!((big.scale, big.growth_tracker), (f64::MAX, 0));
    }
}
