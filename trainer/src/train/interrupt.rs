//! Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (Slurm's preemption, `kill`): the
//! loop finishes the step it is in, writes its checkpoint and exits 0, so that no more than
//! one step is lost. A second signal while that happens ends the process at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

/// Whether a stop was asked for, set from the signal handlers.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    flag: Arc<AtomicBool>,
}

impl Interrupt {
    /// Catches SIGINT and SIGTERM for the rest of the process.
    pub fn install() -> Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        #[cfg(unix)]
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Registered first, so it sees the flag before the second handler sets it: a
            // signal that finds the flag already set exits with the shell's 128 + signal.
            signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, flag.clone())
                .and_then(|_| signal_hook::flag::register(signal, flag.clone()))
                .context("installing the SIGINT/SIGTERM handlers")?;
        }
        Ok(Self { flag })
    }

    /// Whether a signal arrived.
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}
