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

/// The tiny labelled folder of `scripts/make_knn_fixtures.py` (6 classes, 10 training and
/// 17 validation images each, of several sizes), drawn the same way.
pub fn knn_fixture_folder(root: &Path) {
    for (split, per_class, salt) in [("train", 10u32, 0u32), ("val", 17, 1)] {
        for c in 0..6u32 {
            let dir = root.join(split).join(format!("class{c}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                let (w, h) = (
                    20 + (i * 7 + c * 3 + salt) % 13,
                    16 + (i * 5 + c + salt * 2) % 11,
                );
                let img = image::RgbImage::from_fn(w, h, |x, y| {
                    image::Rgb(std::array::from_fn(|ch| {
                        let ch = ch as u32;
                        let stripes = (x * (c + 1) * 13 + y * (3 + c) * 7) % 256;
                        let noise = (x * 31 + y * 17 + i * 101 + salt * 57 + ch * 43) % 61;
                        ((stripes + noise + ch * 50 + c * 40) % 256) as u8
                    }))
                });
                img.save(dir.join(format!("img{i:02}.png"))).unwrap();
            }
        }
    }
}
