//! The wgpu backend trains the same numbers as the CPU backend: three DINO steps of a tiny
//! ViT on `--device wgpu` (lavapipe in CI: Mesa's CPU Vulkan driver, a real shader path)
//! against `--device cpu`, loss by loss, in f32 and in mixed precision (`--precision f16`,
//! WGSL's f16 through wgpu's shader-f16, which lavapipe offers). The runs keep CubeCL's autotune
//! results in `DINO_AUTOTUNE_CACHE`, and a second run of the same shapes loads them from there.
//! The DINOv2 and DINOv3 objectives (masked iBOT tokens, KoLeo, Sinkhorn-Knopp, registers,
//! RoPE, the Gram teacher) give the same loss terms on both backends too.
//!
//! Needs a Vulkan/Metal/DX12 adapter; `scripts/setup-tests.sh` installs lavapipe. Set
//! `DINOSCOPE_SKIP_WGPU_TEST=1` to skip explicitly on a machine without any adapter.

mod common;

use std::process::Command;

/// Runs the tiny 3-step training on `device` in `precision` (run folder `<device>-<precision>
/// <tag>`, CubeCL's autotune results in `dir/autotune`); returns each step's (loss, loss scale,
/// skipped) from metrics.jsonl and what the run logged.
fn three_steps(
    dir: &std::path::Path,
    device: &str,
    precision: &str,
    tag: &str,
) -> (Vec<(f64, f64, bool)>, String) {
    let (steps, _, log) = three_steps_with(dir, device, precision, tag, &[]);
    (steps, log)
}

/// [`three_steps`] with `extra` flags (a method and its options); also returns every step's
/// metrics.jsonl record.
fn three_steps_with(
    dir: &std::path::Path,
    device: &str,
    precision: &str,
    tag: &str,
    extra: &[&str],
) -> (Vec<(f64, f64, bool)>, Vec<serde_json::Value>, String) {
    let run = dir.join(format!("{device}-{precision}{tag}"));
    let out = Command::new(env!("CARGO_BIN_EXE_dino"))
        .args([
            "train",
            "-o",
            run.to_str().unwrap(),
            "--device",
            device,
            "--precision",
            precision,
            "--quiet",
        ])
        // Low enough that this tiny head's f16 gradients do not overflow (see the README's
        // mixed-precision notes), so the f16 backward pass and AdamW steps are compared too.
        .args(if precision == "f16" {
            &["--loss-scale", "16"][..]
        } else {
            &[]
        })
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
        .args(extra)
        // Keep lavapipe's shader compilation and autotuning short.
        .env("CUBECL_AUTOTUNE_LEVEL", "minimal")
        .env("DINO_AUTOTUNE_CACHE", dir.join("autotune"))
        .env("RUST_LOG", "warn,cubecl_runtime::tune=info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dino train --device {device} --precision {precision} failed (no wgpu adapter? install mesa-vulkan-drivers):\n{stderr}"
    );
    let losses = common::losses(&run);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .collect();
    let steps: Vec<(f64, f64, bool)> = records
        .iter()
        .map(|v| {
            (
                v["loss"].as_f64().unwrap(),
                v["loss_scale"].as_f64().unwrap_or(1.0),
                v["skipped"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps.iter().map(|s| s.0).collect::<Vec<_>>(), losses);
    (steps, records, stderr.into_owned())
}

/// Tuned kernel choices CubeCL says it loaded from its cache ("Loaded N autotune cached
/// entries", one line per tuner).
fn loaded_tunings(log: &str) -> usize {
    log.lines()
        .filter_map(|l| {
            let rest = l.split("Loaded ").nth(1)?;
            rest.strip_suffix(" autotune cached entries")?
                .parse::<usize>()
                .ok()
        })
        .sum()
}

/// Whether `DINOSCOPE_SKIP_WGPU_TEST=1` asks to skip (a machine without any adapter).
fn skipped_on_request() -> bool {
    let skip = std::env::var("DINOSCOPE_SKIP_WGPU_TEST").is_ok_and(|v| v == "1");
    if skip {
        println!("skipped on request (DINOSCOPE_SKIP_WGPU_TEST=1)");
    }
    skip
}

#[test]
fn wgpu_and_cpu_backends_give_the_same_losses() {
    if skipped_on_request() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // f32 agrees to accumulation order; f16 keeps 11 significant bits, so a loss near 3
    // moves by a few 1e-3 when the two backends sum products in different orders.
    for (precision, tolerance) in [("f32", 1e-4), ("f16", 2e-2)] {
        let (cpu, _) = three_steps(dir.path(), "cpu", precision, "");
        let (wgpu, log) = three_steps(dir.path(), "wgpu", precision, "");
        if precision == "f32" {
            // The first wgpu run of this test tuned every kernel into DINO_AUTOTUNE_CACHE.
            assert_eq!(
                loaded_tunings(&log),
                0,
                "a fresh cache loaded tunings:\n{log}"
            );
            let cached = std::fs::read_dir(dir.path().join("autotune"))
                .map(|d| d.count())
                .unwrap_or(0);
            assert!(cached > 0, "nothing was written to DINO_AUTOTUNE_CACHE");
        }
        if precision == "f16" {
            assert!(
                cpu.iter().all(|s| !s.2),
                "a step overflowed at scale 16: {cpu:?}"
            );
        }
        println!("{precision} cpu  {cpu:?}\n{precision} wgpu {wgpu:?}");
        for (a, b) in cpu.iter().zip(&wgpu) {
            assert!(
                (a.0 - b.0).abs() < tolerance,
                "{precision}: losses differ between backends: {} vs {}",
                a.0,
                b.0
            );
            assert_eq!((a.1, a.2), (b.1, b.2), "{precision}: loss scaling differs");
        }
    }
    // A second run of the same shapes finds its kernels' tunings in the cache.
    let (again, log) = three_steps(dir.path(), "wgpu", "f32", "-again");
    assert!(
        loaded_tunings(&log) > 0,
        "the second run loaded no tunings from DINO_AUTOTUNE_CACHE:\n{log}"
    );
    assert_eq!(again.len(), 3);
}

/// DINOv2 (with a register) and DINOv3 (RoPE, storage token, separate iBOT head, Sinkhorn-Knopp,
/// and Gram anchoring from the first step with a refresh after each) train the same loss terms
/// on wgpu as on the CPU, term by term. LayerScale starts at 0.5: at the official 1e-5 this
/// one-block ViT gives every image nearly the same CLS token, and KoLeo's log of distances near
/// zero would compare rounding, not the backends.
#[test]
fn dinov2_and_dinov3_objectives_agree_between_backends() {
    if skipped_on_request() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let methods: [(&str, &[&str], &[&str]); 2] = [
        (
            "dinov2",
            &[
                "--method",
                "dinov2",
                "--registers",
                "1",
                "--layerscale",
                "0.5",
            ],
            &["dino_loss", "ibot_loss", "koleo_loss"],
        ),
        (
            "dinov3",
            &[
                "--method",
                "dinov3",
                "--registers",
                "1",
                "--layerscale",
                "0.5",
                "--gram-from-step",
                "1",
                "--gram-ramp",
                "2",
                "--gram-refresh-every",
                "1",
            ],
            &["dino_loss", "ibot_loss", "koleo_loss", "gram_loss"],
        ),
    ];
    for (method, flags, terms) in methods {
        let tag = format!("-{method}");
        let (_, cpu, _) = three_steps_with(dir.path(), "cpu", "f32", &tag, flags);
        let (_, wgpu, _) = three_steps_with(dir.path(), "wgpu", "f32", &tag, flags);
        println!("{method} cpu  {cpu:?}\n{method} wgpu {wgpu:?}");
        for (step, (a, b)) in cpu.iter().zip(&wgpu).enumerate() {
            for term in ["loss"].iter().chain(terms) {
                // Step 0 precedes Gram anchoring (it starts at step 1).
                let (Some(x), Some(y)) = (a[*term].as_f64(), b[*term].as_f64()) else {
                    assert!(
                        *term == "gram_loss" && step == 0,
                        "{method} step {step}: {term} missing: {a} / {b}"
                    );
                    continue;
                };
                assert!(
                    (x - y).abs() < 1e-4 * x.abs().max(1.0),
                    "{method} step {step}: {term} differs between backends: {x} vs {y}"
                );
            }
        }
    }
}

/// `dino knn` and `dino linear` run on the wgpu backend (features, similarities, the probe's
/// steps on the device) and give the CPU backend's numbers: the same k-NN accuracies, and the
/// same probe losses and validation accuracy to rounding.
#[test]
fn knn_and_linear_agree_between_backends() {
    if skipped_on_request() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    common::knn_fixture_folder(dir.path());
    let weights = format!(
        "{}/tests/fixtures/train_initial.pth",
        env!("CARGO_MANIFEST_DIR")
    );
    let run = |args: &[&str], device: &str| -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_dino"))
            .args(args)
            .args([
                "--checkpoint",
                &weights,
                "--train",
                dir.path().join("train").to_str().unwrap(),
                "--val",
                dir.path().join("val").to_str().unwrap(),
                "--device",
                device,
            ])
            .env("CUBECL_AUTOTUNE_LEVEL", "minimal")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?} on {device}:\n{stderr}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let knn = [
        "knn",
        "--image-size",
        "32",
        "--no-cache",
        "--k",
        "1",
        "5",
        "10",
    ];
    let (cpu, wgpu) = (run(&knn, "cpu"), run(&knn, "wgpu"));
    assert_eq!(cpu["knn"], wgpu["knn"], "k-NN differs between backends");
    let probe = |out: &str| -> Vec<String> {
        [
            "linear",
            "-o",
            out,
            "--epochs",
            "2",
            "--batch",
            "16",
            "--lr",
            "0.5",
            "--n-last-blocks",
            "2",
            "--resize",
            "32",
            "--crop",
            "32",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (a, b) = (
        dir.path().join("linear-cpu"),
        dir.path().join("linear-wgpu"),
    );
    let pa = probe(a.to_str().unwrap());
    let pb = probe(b.to_str().unwrap());
    let (cpu, wgpu) = (
        run(&pa.iter().map(String::as_str).collect::<Vec<_>>(), "cpu"),
        run(&pb.iter().map(String::as_str).collect::<Vec<_>>(), "wgpu"),
    );
    assert_eq!(cpu["linear_top1"], wgpu["linear_top1"]);
    let losses = |p: &std::path::Path| -> Vec<f64> {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["runs"][0]["train_loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    for (x, y) in losses(&a).iter().zip(losses(&b)) {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs(),
            "probe losses differ: {x} vs {y}"
        );
    }
}
