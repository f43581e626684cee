//! dino-trainer: the DINO training loop, data pipeline, evaluation and the commands behind
//! the `dino` binary. A library so that end-to-end tests can drive it directly.

pub mod amp;
pub mod augment;
pub mod bench;
pub mod cli_train;
pub mod commands;
pub mod data;
pub mod device;
pub mod eval;
pub mod io;
pub mod loss;
pub mod npy;
pub mod optim;
pub mod pipeline;
pub mod plot;
pub mod render;
pub mod schedule;
pub mod synth;
pub mod train;
