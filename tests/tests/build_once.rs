//! The README's run command (`cargo run -p dino-trainer`) and its test command
//! (`cargo test --workspace`) must compile every dependency identically, or a newcomer
//! compiles burn, wgpu and cubecl twice (~28 minutes on 2 cores). The `dino-workspace-hack`
//! crate pins one feature set; this test compares the two commands' unit graphs (what cargo
//! would compile: package, target, features, profile and, recursively, dependencies) and names
//! the crates where they part.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// One compilation unit, as a name for messages.
fn describe(unit: &Value) -> String {
    let pkg = unit["pkg_id"].as_str().unwrap_or("?");
    let pkg = pkg.rsplit(['/', '#']).next().unwrap_or(pkg);
    format!(
        "{pkg} {} ({}) features {}",
        unit["target"]["name"].as_str().unwrap_or("?"),
        unit["mode"].as_str().unwrap_or("?"),
        unit["features"]
    )
}

/// The units `args` would compile, each with a signature that is equal exactly when cargo
/// would reuse the artifact (the profile's name aside, which cargo leaves out of its hash).
fn units(args: &[&str]) -> Vec<(u64, String)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(cargo)
        .current_dir(root)
        // The unit graph is a nightly-only report of stable cargo's own plan.
        .env("RUSTC_BOOTSTRAP", "1")
        .args(args)
        .args(["--offline", "--unit-graph", "-Z", "unstable-options"])
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} --unit-graph failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let graph: Value = serde_json::from_slice(&out.stdout).expect("cargo prints the unit graph");
    let list = graph["units"].as_array().expect("units").clone();
    fn sig(i: usize, list: &[Value], memo: &mut HashMap<usize, u64>) -> u64 {
        if let Some(s) = memo.get(&i) {
            return *s;
        }
        let u = &list[i];
        let mut profile = u["profile"].clone();
        profile.as_object_mut().map(|p| p.remove("name"));
        let deps: BTreeSet<u64> = u["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| sig(d["index"].as_u64().unwrap() as usize, list, memo))
            .collect();
        let mut h = DefaultHasher::new();
        (
            u["pkg_id"].to_string(),
            u["target"]["name"].to_string(),
            u["target"]["kind"].to_string(),
            u["mode"].to_string(),
            u["features"].to_string(),
            profile.to_string(),
            deps,
        )
            .hash(&mut h);
        let s = h.finish();
        memo.insert(i, s);
        s
    }
    let mut memo = HashMap::new();
    (0..list.len())
        .map(|i| (sig(i, &list, &mut memo), describe(&list[i])))
        .collect()
}

/// Units of `run` that `cargo test --workspace` does not compile identically, restricted to
/// the packages whose names `keep` accepts.
fn not_shared(run: &[&str], keep: impl Fn(&str) -> bool) -> Vec<String> {
    let test: BTreeSet<u64> = units(&["test", "--workspace", "--no-run"])
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    units(run)
        .into_iter()
        .filter(|(s, name)| !test.contains(s) && keep(name))
        .map(|(_, name)| name)
        .collect()
}

fn assert_shared(command: &str, missing: Vec<String>) {
    assert!(
        missing.is_empty(),
        "`{command}` would compile these again after `cargo test --workspace` (features differ \
         from the workspace build's; the first lines are the cause, the rest depend on them): \
         add the crates with the features the workspace build uses to workspace-hack/Cargo.toml\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_run_command_reuses_the_test_commands_build() {
    // The workspace build turns on the trainer's `mpi` feature for its MPI tests, which a
    // plain `cargo run` leaves off (it needs Open MPI's headers): the trainer's own two units
    // compile again, nothing under them may.
    let missing = not_shared(&["build", "-p", "dino-trainer", "--bin", "dino"], |name| {
        !name.starts_with("dino-trainer@")
    });
    assert_shared("cargo run -p dino-trainer", missing);
}

#[test]
fn the_viewer_reuses_the_compiled_burn_stack() {
    // Its GUI crates (eframe, winit, …) may differ: rebuilding them takes a minute. The stack
    // it shares with the trainer (burn, cubecl, wgpu and below) must not.
    let shared = [
        "burn",
        "cubecl",
        "cubek",
        "wgpu",
        "naga",
        "gemm",
        "macerator",
    ];
    let missing = not_shared(&["build", "-p", "dino-viewer"], |name| {
        shared.iter().any(|s| name.starts_with(s))
    });
    assert_shared("cargo run -p dino-viewer", missing);
}
