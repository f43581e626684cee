//! The training loop and what it owns. Floors, from the top: `run` (the loop, as
//! `train_one_epoch`) → `train_eval` (evaluation during training) → `run_dir` (every file a
//! run writes), `step` (one iteration) and `inputs` (a step's crops and random draws) →
//! `networks` (the state a step updates) → `init` (fine-tuning from released weights) →
//! `config` (the run's configuration in sections); `interrupt` (SIGINT/SIGTERM) beside them.
//! May import every folder below it: `loss`,
//! `eval`, `data`, `optim`, `distributed`, `io`.

pub mod config;
pub mod init;
pub mod inputs;
pub mod interrupt;
pub mod networks;
pub mod run;
pub mod run_dir;
pub mod step;
pub mod train_eval;
