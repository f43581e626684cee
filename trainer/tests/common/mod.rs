//! Helpers shared by the trainer's integration tests.

use std::path::Path;

/// The loss of every step recorded in a run's `metrics.jsonl`, in order.
pub fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["loss"].as_f64())
        .collect()
}
