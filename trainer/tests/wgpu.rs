//! The wgpu backend trains the same numbers as the CPU backend: three DINO steps of a tiny
//! ViT on `--device wgpu` (lavapipe in CI: Mesa's CPU Vulkan driver, a real shader path)
//! against `--device cpu`, loss by loss.
//!
//! Needs a Vulkan/Metal/DX12 adapter; `scripts/setup-tests.sh` installs lavapipe. Set
//! `DINOSCOPE_SKIP_WGPU_TEST=1` to skip explicitly on a machine without any adapter.

mod common;

use std::process::Command;

#[test]
fn wgpu_and_cpu_backends_give_the_same_losses() {
    if std::env::var("DINOSCOPE_SKIP_WGPU_TEST").is_ok_and(|v| v == "1") {
        println!("skipped on request (DINOSCOPE_SKIP_WGPU_TEST=1)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut curves = Vec::new();
    for device in ["cpu", "wgpu"] {
        let run = dir.path().join(device);
        let out = Command::new(env!("CARGO_BIN_EXE_dino"))
            .args([
                "train",
                "-o",
                run.to_str().unwrap(),
                "--device",
                device,
                "--quiet",
            ])
            .args([
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
            ])
            .args([
                "--local-crops",
                "1",
                "--out-dim",
                "32",
                "--head-hidden-dim",
                "32",
                "--head-bottleneck-dim",
                "16",
            ])
            .args([
                "--batch-size",
                "4",
                "--synthetic-count",
                "16",
                "--synthetic-size",
                "16",
                "--epochs",
                "2",
            ])
            .args(["--max-steps", "3", "--eval-every", "100000"])
            // Keep lavapipe's shader compilation and autotuning short.
            .env("CUBECL_AUTOTUNE_LEVEL", "minimal")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "dino train --device {device} failed (no wgpu adapter? install mesa-vulkan-drivers):\n{stderr}"
        );
        curves.push(common::losses(&run));
    }
    println!("cpu  {:?}\nwgpu {:?}", curves[0], curves[1]);
    assert_eq!(curves[0].len(), 3);
    for (a, b) in curves[0].iter().zip(&curves[1]) {
        assert!(
            (a - b).abs() < 1e-4,
            "losses differ between backends: {a} vs {b}"
        );
    }
}
