//! The CPU backend computes the same training run whatever the size of its thread pool:
//! rayon splits the kernels' work, never the order of a reduction that matters at 1e-6.

mod common;

use std::path::Path;
use std::process::Command;

fn train(dir: &Path, threads: &str) -> Vec<f64> {
    let out = Command::new(env!("CARGO_BIN_EXE_dino"))
        .arg("train")
        .arg("-o")
        .arg(dir)
        // common::TINY_VIT at 32 px with a wider head: big enough GEMMs to be split.
        .args(["--arch", "vit_tiny", "--depth", "1", "--patch-size", "8"])
        .args([
            "--image-size",
            "32",
            "--local-size",
            "16",
            "--local-crops",
            "2",
        ])
        .args([
            "--out-dim",
            "256",
            "--head-hidden-dim",
            "256",
            "--head-bottleneck-dim",
            "32",
        ])
        .args([
            "--batch-size",
            "8",
            "--synthetic-count",
            "16",
            "--synthetic-size",
            "32",
        ])
        .args([
            "--max-steps",
            "3",
            "--device",
            "cpu",
            "--workers",
            "1",
            "--quiet",
        ])
        .env("RAYON_NUM_THREADS", threads)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dino train with {threads} threads: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::losses(dir)
}

#[test]
fn one_and_two_threads_train_the_same_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let one = train(&tmp.path().join("one"), "1");
    let two = train(&tmp.path().join("two"), "2");
    assert_eq!(one.len(), 3, "{one:?}");
    assert_eq!(one.len(), two.len());
    for (step, (a, b)) in one.iter().zip(&two).enumerate() {
        let rel = (a - b).abs() / a.abs().max(1e-12);
        assert!(
            rel <= 1e-6,
            "step {step}: {a} (1 thread) vs {b} (2 threads), rel {rel:e}"
        );
    }
}
