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

/// `dino linear` SIGKILLed again and again, then started again on the same folder each time:
/// it resumes from the last finished epoch and ends with the classifiers and metrics of the
/// uninterrupted run, bit for bit; other settings on that folder are refused.
#[test]
fn a_killed_linear_probe_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    common::knn_fixture_folder(dir.path());
    let weights = format!(
        "{}/tests/fixtures/train_initial.pth",
        env!("CARGO_MANIFEST_DIR")
    );
    let args = |out: &Path, epochs: &str| -> Vec<String> {
        [
            "linear",
            "--checkpoint",
            &weights,
            "--train",
            dir.path().join("train").to_str().unwrap(),
            "--val",
            dir.path().join("val").to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--epochs",
            epochs,
            "--batch",
            "16",
            "--lr",
            "0.5",
            "2",
            "--n-last-blocks",
            "2",
            "--resize",
            "32",
            "--crop",
            "32",
            "--device",
            "cpu",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |a: &[String]| dino(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let (straight, killed) = (dir.path().join("straight"), dir.path().join("killed"));
    assert!(run(&args(&straight, "150")).status().unwrap().success());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut kills = 0;
    for _ in 0..40 {
        let mut child = run(&args(&killed, "150")).spawn().unwrap();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(30 + x % 300));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        if kills >= 12 {
            break;
        }
    }
    assert!(kills >= 8, "only {kills} kills before the probe finished");
    let last = run(&args(&killed, "150"))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(last.status.success());
    assert!(
        String::from_utf8_lossy(&last.stderr).contains("resuming"),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    let read = |p: &Path| {
        dino_model::checkpoint::read_safetensors(
            &std::fs::read(p.join("linear.safetensors")).unwrap(),
        )
        .unwrap()
    };
    let ((ma, ta), (mb, tb)) = (read(&straight), read(&killed));
    assert_eq!(ma, mb);
    assert_eq!(
        ta, tb,
        "the probe killed {kills} times differs from the straight one"
    );
    assert_eq!(
        std::fs::read_to_string(straight.join("metrics.jsonl")).unwrap(),
        std::fs::read_to_string(killed.join("metrics.jsonl")).unwrap()
    );
    let out = run(&args(&killed, "7"))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("holds a linear probe of other weights, data or settings"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
