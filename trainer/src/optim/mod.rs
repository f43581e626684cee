//! How the student is updated: AdamW, SGD and LARS with the official parameter groups
//! (`optimizer`, `param_groups`), the schedules of learning rate, weight decay, teacher
//! momentum and temperature (`schedule`), and mixed precision's loss scaling (`amp`).
//! Imports nothing of the crate.

pub mod amp;
pub mod optimizer;
pub mod param_groups;
pub mod schedule;
