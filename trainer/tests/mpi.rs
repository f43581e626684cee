//! Data-parallel training under `mpirun` (Open MPI, two ranks on this machine's CPU): two
//! ranks of batch 2 train as one process of batch 4 on the same data order; a rank that dies
//! or hangs stops the other with its name, and `--resume` then finishes the run exactly as an
//! uninterrupted one. Needs the `mpi` feature (on in `cargo test --workspace`) and `mpirun`
//! (`scripts/setup-tests.sh` installs Open MPI).
#![cfg(feature = "mpi")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dino_model::{TensorMap, read_checkpoint};

/// What these tests add to [`common::TINY_VIT`]: 16 scenes, so 2 ranks × 2 and 1 × 4 both
/// take 4 steps per epoch without padding.
const TINY: &[&str] = &[
    "--synthetic-count",
    "16",
    "--synthetic-size",
    "24",
    "--epochs",
    "40",
    "--warmup-epochs",
    "1",
    "--lr",
    "0.05",
    "--seed",
    "5",
    "--device",
    "cpu",
    "--quiet",
    "--workers",
    "1",
    "--checkpoint-every",
    "1",
    "--eval-every",
    "100000",
];

fn train_args(run: &Path, batch: usize, steps: usize, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["train", "-o"].iter().map(|s| s.to_string()).collect();
    v.push(run.display().to_string());
    v.extend(common::TINY_VIT.iter().map(|s| s.to_string()));
    v.extend(TINY.iter().map(|s| s.to_string()));
    v.extend([
        "--batch-size".into(),
        batch.to_string(),
        "--max-steps".into(),
        steps.to_string(),
    ]);
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn resume_args(run: &Path, steps: usize) -> Vec<String> {
    [
        "train",
        "--resume",
        &run.display().to_string(),
        "--max-steps",
        &steps.to_string(),
        "--device",
        "cpu",
        "--quiet",
        "--workers",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One process, one compute thread.
fn dino(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dino"));
    c.args(args)
        .env("RAYON_NUM_THREADS", "1")
        .env("RUST_LOG", "warn");
    c
}

/// `mpirun -np N dino …`, one compute thread per rank.
fn mpirun(np: usize, args: &[String]) -> Command {
    let found = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "mpirun is not installed: run scripts/setup-tests.sh (it installs Open MPI)"
    );
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "-np", &np.to_string()])
        // Root in CI containers; no ptrace for single-copy shared memory there either.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("RAYON_NUM_THREADS", "1")
        .env("RUST_LOG", "warn")
        .arg(env!("CARGO_BIN_EXE_dino"))
        .args(args);
    c
}

fn run_ok(mut c: Command, what: &str) -> String {
    let out = c.output().expect("starting the command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

fn tensors(path: &Path) -> TensorMap {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    read_checkpoint(&bytes).unwrap().tensors
}

/// The largest difference of each tensor relative to its largest magnitude.
fn worst_relative(a: &TensorMap, b: &TensorMap) -> (String, f64) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the checkpoints hold different tensors"
    );
    let mut worst = (String::new(), 0.0f64);
    for (name, x) in a {
        let y = &b[name];
        assert_eq!(x.shape, y.shape, "{name}");
        let scale = x.data.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
        // The key bias cannot change the softmax, so its gradient is zero up to rounding and
        // AdamW turns that rounding into ±lr steps whose signs differ with the summation
        // order (alone: one sum over 4 images; two ranks: 2 + 2). Its third is left out.
        let third = x.data.len() / 3;
        let skip = if name.ends_with("attn.qkv.bias") && !name.starts_with("optim.") {
            third..2 * third
        } else {
            0..0
        };
        let diff = x
            .data
            .iter()
            .zip(&y.data)
            .enumerate()
            .filter(|(i, _)| !skip.contains(i))
            .fold(0.0f64, |m, (_, (p, q))| m.max((p - q).abs() as f64));
        let rel = if scale > 0.0 { diff / scale } else { diff };
        if rel > worst.1 {
            worst = (name.clone(), rel);
        }
    }
    worst
}

#[test]
fn two_ranks_of_batch_2_train_as_one_process_of_batch_4() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    run_ok(dino(&train_args(&one, 4, 3, &[])), "one process of batch 4");
    let log = run_ok(
        mpirun(2, &train_args(&two, 2, 3, &[])),
        "mpirun -np 2 with batch 2",
    );
    let (l1, l2) = (common::losses(&one), common::losses(&two));
    assert_eq!(l1.len(), 3, "{log}");
    assert_eq!(l2.len(), 3, "only rank 0 writes the metrics:\n{log}");
    for (s, (a, b)) in l1.iter().zip(&l2).enumerate() {
        assert!(
            ((a - b) / a).abs() < 1e-5,
            "step {s}: loss {a} alone, {b} on two ranks"
        );
    }
    let (a, b) = (
        tensors(&one.join("checkpoints/last.safetensors")),
        tensors(&two.join("checkpoints/last.safetensors")),
    );
    // The centre, the student, the teacher and AdamW's moments after 3 steps.
    let (name, rel) = worst_relative(&a, &b);
    assert!(rel < 1e-5, "{name} differs by {rel:e} (relative)");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(two.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["run"]["world_size"], 2);
    assert_eq!(config["data"]["batch_size"], 2, "the batch is per process");

    // Every step records the time its gradients spent in the all-reduce.
    let metrics = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
    let step = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["loss"].is_number())
        .unwrap();
    assert!(step["allreduce_ms"].as_f64().is_some_and(|ms| ms > 0.0));
    assert_eq!(step["world_size"], 2);

    // A run of two processes resumes only with two.
    let out = dino(&resume_args(&two, 4)).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("mpirun -np 2 dino train --resume"), "{err}");

    // The DINOv2/v3 objectives do not run on several ranks yet, and say so.
    let v2 = dir.path().join("v2");
    let out = mpirun(2, &train_args(&v2, 2, 1, &["--method", "dinov2"]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("does not run on several ranks"), "{err}");
}

/// Starts `mpirun`, collecting its output, and returns rank 1's pid once both ranks said it.
fn start_watched(mut c: Command) -> (std::process::Child, Arc<Mutex<String>>, u32) {
    c.env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("starting mpirun");
    let text = Arc::new(Mutex::new(String::new()));
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let text = text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let mut t = text.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
        });
    }
    let start = Instant::now();
    let pid = loop {
        let found = text.lock().unwrap().lines().find_map(|l| {
            let rest = l.split("rank 1 of 2 (local rank 1, pid ").nth(1)?;
            rest.split(')').next()?.parse::<u32>().ok()
        });
        if let Some(pid) = found {
            break pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "rank 1 never reported its pid:\n{}",
            text.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    (child, text, pid)
}

fn wait_for_steps(run: &Path, n: usize) {
    let start = Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|m| m.lines().filter(|l| l.contains("\"loss\"")).count())
        .unwrap_or(0)
        < n
    {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the run did not reach step {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` at most `limit`; its exit status, or `None` if it is still running.
fn wait_at_most(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

#[test]
fn a_killed_rank_stops_the_run_and_resume_finishes_it_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (killed, whole) = (dir.path().join("killed"), dir.path().join("whole"));
    const STEPS: usize = 40;
    let (mut child, text, pid) = start_watched(mpirun(2, &train_args(&killed, 2, STEPS, &[])));
    wait_for_steps(&killed, 4);
    signal("-KILL", pid);
    let status = wait_at_most(&mut child, Duration::from_secs(60));
    let _ = child.kill();
    let out = text.lock().unwrap().clone();
    let status = status.unwrap_or_else(|| panic!("mpirun did not stop within 60 s:\n{out}"));
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("rank 1"),
        "the message names the dead rank:\n{out}"
    );
    let done = common::losses(&killed).len();
    assert!(done < STEPS, "the kill came after the run ended");

    run_ok(
        mpirun(2, &resume_args(&killed, STEPS)),
        "--resume under mpirun",
    );
    run_ok(
        mpirun(2, &train_args(&whole, 2, STEPS, &[])),
        "the uninterrupted run",
    );
    let (a, b) = (
        tensors(&killed.join("checkpoints/teacher.safetensors")),
        tensors(&whole.join("checkpoints/teacher.safetensors")),
    );
    let (name, rel) = worst_relative(&a, &b);
    assert!(
        rel == 0.0,
        "{name} differs by {rel:e} after kill and resume"
    );
    assert_eq!(common::losses(&killed), common::losses(&whole));
}

#[test]
fn a_hung_rank_is_named_when_the_timeout_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("hung");
    let (mut child, text, pid) = start_watched(mpirun(
        2,
        &train_args(&run, 2, 400, &["--dist-timeout", "4"]),
    ));
    wait_for_steps(&run, 3);
    signal("-STOP", pid);
    let start = Instant::now();
    // Rank 0 gives up after 4 s and a 5 s grace; mpirun then ends the stopped rank, or we do.
    while start.elapsed() < Duration::from_secs(60)
        && !text.lock().unwrap().contains("stopped answering")
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let waited = start.elapsed();
    signal("-KILL", pid);
    let status = wait_at_most(&mut child, Duration::from_secs(60));
    let _ = child.kill();
    let out = text.lock().unwrap().clone();
    assert!(
        out.contains("rank 0 of 2") && out.contains("rank 1 stopped answering"),
        "{out}"
    );
    assert!(out.contains("got no answer within 4 s"), "{out}");
    assert!(out.contains("dino train --resume"), "{out}");
    assert!(waited < Duration::from_secs(30), "took {waited:?}");
    assert!(status.is_some_and(|s| !s.success()), "{out}");
}
