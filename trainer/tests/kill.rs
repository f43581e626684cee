//! Kill safety: `dino train` is SIGKILLed at random moments (during steps and during
//! checkpoint writes) again and again; every `--resume` must find a valid checkpoint, and
//! the run finished through all those kills must equal an uninterrupted one bit for bit.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use dino_model::read_checkpoint;

/// What these tests add to [`common::TINY_VIT`].
const TINY: &[&str] = &[
    "--batch-size",
    "8",
    "--synthetic-count",
    "32",
    "--synthetic-size",
    "24",
    "--epochs",
    "100",
    "--warmup-epochs",
    "1",
    "--lr",
    "0.005",
    "--device",
    "cpu",
    "--quiet",
    "--workers",
    "1",
    "--checkpoint-every",
    "1",
    "--eval-every",
    "100000",
    "--max-steps",
    "300",
];

fn dino(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dino"));
    c.args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn start_args(run: &Path, resume: bool) -> Vec<String> {
    let mut v = vec!["train".to_string()];
    if resume {
        v.extend([
            "--resume".into(),
            run.display().to_string(),
            "--max-steps".into(),
            "300".into(),
            "--device".into(),
            "cpu".into(),
        ]);
        v.extend(["--quiet".into(), "--workers".into(), "1".into()]);
    } else {
        v.extend(["-o".into(), run.display().to_string()]);
        v.extend(common::TINY_VIT.iter().chain(TINY).map(|s| s.to_string()));
    }
    v
}

#[test]
fn repeated_sigkill_then_resume_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (straight, killed) = (dir.path().join("straight"), dir.path().join("killed"));
    let args = start_args(&straight, false);
    let status = dino(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .status()
        .unwrap();
    assert!(status.success());

    // A fixed pseudo-random sequence of kill delays, 20 to 220 ms.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut kills = 0;
    for round in 0..60 {
        let args = start_args(&killed, killed.join("config.json").exists());
        let mut child = dino(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .spawn()
            .unwrap();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(20 + x % 200));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        let last = killed.join("checkpoints/last.safetensors");
        if last.exists() {
            let bytes = std::fs::read(&last).unwrap();
            read_checkpoint(&bytes)
                .unwrap_or_else(|e| panic!("round {round}: corrupt checkpoint after SIGKILL: {e}"));
        }
        if kills >= 25 {
            break;
        }
    }
    assert!(
        kills >= 20,
        "only {kills} kills happened before the run finished; the run is too short"
    );
    let args = start_args(&killed, true);
    assert!(
        dino(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .status()
            .unwrap()
            .success()
    );
    let leftovers: Vec<_> = std::fs::read_dir(killed.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
    let load = |p: &Path| {
        read_checkpoint(&std::fs::read(p.join("checkpoints/last.safetensors")).unwrap()).unwrap()
    };
    let (a, b) = (load(&straight), load(&killed));
    assert_eq!(
        a.metadata["dino.train_state"],
        b.metadata["dino.train_state"]
    );
    for (name, t) in &a.tensors {
        assert_eq!(
            t, &b.tensors[name],
            "{name}: the run killed {kills} times differs from the straight run"
        );
    }
}
