//! dino-trainer: the DINO training loop, data pipeline, evaluation and the commands behind
//! the `dino` binary. A library so that end-to-end tests can drive it directly.
//!
//! The folders are the architecture, and every import points down:
//! `cli` → `train` → {`loss`, `eval`} → `data` → {`distributed`, `optim`, `io`}. Each folder's
//! `mod.rs` says what it holds and what it may import.

pub mod cli;
pub mod data;
pub mod distributed;
pub mod eval;
pub mod io;
pub mod loss;
pub mod optim;
pub mod train;
