//! dino-trainer: the DINO training loop, data pipeline, evaluation and the commands behind
//! the `dino` binary. A library so that end-to-end tests can drive it directly.

pub mod amp;
pub mod augment;
pub mod autotune_cache;
pub mod bench;
pub mod cli_train;
pub mod commands;
pub mod data;
pub mod ddp;
pub mod device;
pub mod dist;
pub mod eval;
pub mod gram;
pub mod ibot;
pub mod init;
pub mod io;
pub mod koleo;
pub mod loss;
pub mod masking;
pub mod npy;
pub mod objective;
pub mod optim;
pub mod param_groups;
pub mod pipeline;
pub mod plot;
pub mod render;
pub mod run_dir;
pub mod schedule;
pub mod sinkhorn;
pub mod step;
pub mod synth;
pub mod train;
pub mod train_eval;
