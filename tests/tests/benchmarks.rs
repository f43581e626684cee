//! BENCHMARKS.md is generated, never typed: the CPU section must be exactly what
//! `scripts/benchmarks.py` makes of the recorded run (`docs/benchmarks/bench-cpu.jsonl`, the
//! output of `scripts/bench-cpu.sh`), and every measured pair must show up as a ratio.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn render(results: &Path, section: &str) -> String {
    let out = Command::new("python3")
        .current_dir(repo())
        .args(["scripts/benchmarks.py"])
        .arg(results)
        .args(["--section", section])
        .output()
        .expect("python3 runs scripts/benchmarks.py");
    assert!(
        out.status.success(),
        "benchmarks.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn section(doc: &str, name: &str) -> String {
    let (begin, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let start = doc.find(&begin).expect("section begin marker");
    let stop = doc.find(&end).expect("section end marker") + end.len();
    doc[start..stop].to_string()
}

/// BENCHMARKS.md's `name` section is exactly what benchmarks.py makes of the recorded
/// `docs/benchmarks/<file>`; returns that text.
fn assert_regenerated(file: &str, name: &str) -> String {
    let recorded = repo().join("docs/benchmarks").join(file);
    let made = render(&recorded, name);
    let doc = std::fs::read_to_string(repo().join("BENCHMARKS.md")).unwrap();
    assert_eq!(
        made.trim_end(),
        section(&doc, name),
        "BENCHMARKS.md's {name} section differs from what scripts/benchmarks.py makes of {}: \
         regenerate it with `python3 scripts/benchmarks.py {} --section {name} --write BENCHMARKS.md`",
        recorded.display(),
        recorded.display()
    );
    made
}

#[test]
fn the_cpu_section_is_regenerated_from_the_recorded_run() {
    let made = assert_regenerated("bench-cpu.jsonl", "cpu");
    // Every step, data, viewer and matmul measurement of ours found its official counterpart;
    // a table's header is the row above its `|---` line.
    let lines: Vec<&str> = made.lines().collect();
    let measured: Vec<&&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, l)| {
            l.starts_with("| ") && !lines.get(i + 1).is_some_and(|n| n.starts_with("|---"))
        })
        .map(|(_, l)| l)
        .collect();
    assert!(measured.len() >= 4, "{made}");
    for row in measured {
        assert!(row.contains("×**"), "a row without a ratio: {row}");
    }
}

#[test]
fn unpaired_and_bad_lines_are_reported_not_hidden() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("r.jsonl");
    // A GPU-style run: two of ours (WGSL, SPIR-V) share one official line; one part timed out.
    std::fs::write(
        &path,
        r#"{"mode": "meta", "date": "2026-12-01", "machine": "test", "command": "x"}
{"mode": "step", "impl": "dinoscope", "device": "wgpu (discrete GPU)", "arch": "vit_small", "patch": 16, "depth": 12, "batch": 64, "global_size": 224, "local_size": 96, "local_crops": 8, "out_dim": 65536, "precision": "f32", "threads": 16, "img_per_sec": 300.0, "first_step_secs": 40.0}
{"mode": "step", "impl": "dinoscope", "device": "vulkan (SPIR-V)", "arch": "vit_small", "patch": 16, "depth": 12, "batch": 64, "global_size": 224, "local_size": 96, "local_crops": 8, "out_dim": 65536, "precision": "f32", "threads": 16, "img_per_sec": 450.0}
{"mode": "step", "impl": "official", "device": "cuda", "arch": "vit_small", "patch": 16, "depth": 12, "batch": 64, "global_size": 224, "local_size": 96, "local_crops": 8, "out_dim": 65536, "precision": "f32", "threads": 16, "img_per_sec": 600.0}
{"mode": "status", "part": "step-vit_tiny-vulkan-f16", "status": "timeout", "secs": 75}
"#,
    )
    .unwrap();
    let made = render(&path, "gpu");
    assert!(
        made.contains("**0.50×**") && made.contains("**0.75×**"),
        "{made}"
    );
    assert!(
        made.contains("step-vit_tiny-vulkan-f16 (timeout)"),
        "{made}"
    );
    std::fs::write(&path, "{\"mode\": \"step\", \"impl\"\n").unwrap();
    let out = Command::new("python3")
        .current_dir(repo())
        .arg("scripts/benchmarks.py")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a JSON line"));
}

#[test]
fn the_gpu_dry_run_section_is_regenerated_from_the_recorded_dry_run() {
    // `bash scripts/gpu-check.sh --dry-run` on the CPU machine: the GPU run's sequence, tiny,
    // on lavapipe and CPU PyTorch. Its parser output is BENCHMARKS.md's dry-run section.
    let recorded = repo().join("docs/benchmarks/gpu-dry-run.jsonl");
    let made = assert_regenerated("gpu-dry-run.jsonl", "gpu-dry-run");
    // The sequence reached its end: the meta line says dry run, every part reported a status,
    // and the WGSL step ran on the software adapter with its official counterpart.
    let text = std::fs::read_to_string(&recorded).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["mode"] == "meta" && l["dry_run"] == true)
    );
    let parts: Vec<&str> = lines
        .iter()
        .filter(|l| l["mode"] == "status")
        .map(|l| l["part"].as_str().unwrap())
        .collect();
    for part in ["backends", "step-cold", "step-warm", "data-ours", "demo"] {
        assert!(
            parts.contains(&part),
            "no status for part {part}: {parts:?}"
        );
    }
    assert!(made.contains("Parts: "), "{made}");
    // The warm step found the cold step's tunings in the carried cache.
    assert!(
        lines
            .iter()
            .any(|l| l["mode"] == "status" && l["part"] == "step-warm" && l["status"] == "ok"),
        "step-warm did not finish"
    );
    let loaded = lines
        .iter()
        .find(|l| l["mode"] == "autotune_cache")
        .and_then(|l| l["loaded_entries"].as_u64());
    assert!(
        loaded.is_some_and(|n| n > 0),
        "the warm step loaded no tunings: {loaded:?}"
    );
}

#[test]
fn the_gpu_section_is_regenerated_from_the_recorded_h200_run() {
    // The first real GPU run (scripts/gpu-check.sh on the lent H200): our WGSL step and the
    // official CUDA step of the same configuration are both in the table, with a ratio.
    let made = assert_regenerated("gpu-h200.jsonl", "gpu");
    let step = made
        .lines()
        .find(|l| l.starts_with("| vit_small/16 depth 12") && l.contains("wgpu"))
        .unwrap_or_else(|| panic!("no WGSL step row in {made}"));
    assert!(
        step.contains("×**"),
        "the GPU step row has no ratio: {step}"
    );
    assert!(made.contains("**Class demo**"), "{made}");
}
