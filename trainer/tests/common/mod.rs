//! Helpers shared by the trainer's integration tests.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

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

/// A ViT of one block on 16 px crops with a small head: a training step takes milliseconds.
pub const TINY_VIT: &[&str] = &[
    "--arch",
    "vit_tiny",
    "--depth",
    "1",
    "--patch-size",
    "8",
    "--image-size",
    "16",
    "--local-size",
    "8",
    "--local-crops",
    "2",
    "--out-dim",
    "64",
    "--head-hidden-dim",
    "64",
    "--head-bottleneck-dim",
    "32",
];
