//! `dino bench` runs in all four modes on the CPU and prints well-formed JSON lines (what
//! is checked is the output's shape, not the speed).

mod common;

use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_dino"))
        .arg("bench")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dino bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().expect("one JSON line"))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// What these tests add to [`common::TINY_VIT`].
const TINY: &[&str] = &[
    "--batch-size",
    "4",
    "--device",
    "cpu",
    "--synthetic-size",
    "24",
];

#[test]
fn step_data_viewer_and_matmul_modes_print_json() {
    let mut args = vec!["--mode", "step", "--warmup", "1", "--steps", "2"];
    args.extend_from_slice(common::TINY_VIT);
    args.extend_from_slice(TINY);
    let v = bench(&args);
    assert_eq!(v["mode"], "step");
    for k in [
        "img_per_sec",
        "ms_per_step",
        "gflop_per_image",
        "achieved_tflops",
    ] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {v}");
    }
    assert_eq!(v["batch"], 4);
    let mut args = vec!["--mode", "data", "--steps", "3", "--workers", "1"];
    args.extend_from_slice(common::TINY_VIT);
    args.extend_from_slice(TINY);
    let v = bench(&args);
    assert_eq!(v["images"], 12);
    assert!(v["img_per_sec_per_core"].as_f64().unwrap() > 0.0);
    let mut args = vec!["--mode", "viewer", "--steps", "1", "--viewer-size", "32"];
    args.extend_from_slice(common::TINY_VIT);
    args.extend_from_slice(TINY);
    let v = bench(&args);
    assert_eq!(v["image_size"], 32);
    assert!(v["median_ms"].as_f64().unwrap() > 0.0);
    let mut args = vec!["--mode", "matmul", "--steps", "1"];
    args.extend_from_slice(common::TINY_VIT);
    args.extend_from_slice(TINY);
    let v = bench(&args);
    let products = v["products"].as_array().expect("products");
    assert!(products.iter().any(|p| p["transposed"] == 1));
    for p in products {
        assert!(p["gflop_per_s"].as_f64().is_some_and(|x| x > 0.0), "{p}");
    }
    assert!(v["total_ms"].as_f64().unwrap() > 0.0);
    // Any importable file: here a DINOv3 fixture, the size rounded down to its patch.
    let file = format!(
        "{}/../model/tests/fixtures/families/v3.pth",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut args = vec!["--mode", "viewer", "--steps", "1", "--viewer-size", "40"];
    args.extend_from_slice(&["--checkpoint", &file]);
    let v = bench(&args);
    assert_eq!(v["image_size"], 32);
    assert_eq!(
        v["model"],
        "DINOv3 ViT-32x3/16, 4 storage tokens, LayerScale, RoPE"
    );
}

#[test]
fn lines_say_which_build_and_pool_produced_them() {
    // scripts/benchmarks.py pairs lines by these fields; RAYON_NUM_THREADS sets the pool.
    let mut args = vec!["--mode", "step", "--warmup", "1", "--steps", "1"];
    args.extend_from_slice(common::TINY_VIT);
    args.extend_from_slice(TINY);
    let out = Command::new(env!("CARGO_BIN_EXE_dino"))
        .arg("bench")
        .args(&args)
        .env("RAYON_NUM_THREADS", "3")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["impl"], "dinoscope");
    assert_eq!(v["threads"], 3, "{v}");
    assert!(v["simd"].is_string(), "{v}");
    assert!(
        v["first_step_secs"].as_f64().is_some_and(|s| s > 0.0),
        "{v}"
    );
    let backends: Vec<&str> = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b.as_str())
        .collect();
    assert!(
        backends.contains(&"cpu") && backends.contains(&"wgpu"),
        "{v}"
    );
}
