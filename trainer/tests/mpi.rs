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

/// Per tensor the median and the 99th percentile (rounded up) of the element differences
/// relative to its largest magnitude: the tensor of the largest median, that median, and the
/// largest 99th percentile.
fn median_and_p99(a: &TensorMap, b: &TensorMap) -> (String, f64, f64) {
    let (mut name, mut median, mut worst) = (String::new(), 0.0f64, 0.0f64);
    for (k, x) in a {
        let y = &b[k];
        let scale = x
            .data
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs() as f64))
            .max(1e-30);
        let mut d: Vec<f64> = x
            .data
            .iter()
            .zip(&y.data)
            .map(|(p, q)| (p - q).abs() as f64 / scale)
            .collect();
        d.sort_by(f64::total_cmp);
        let p99 = ((d.len() as f64 * 0.99).ceil() as usize).clamp(1, d.len()) - 1;
        let (m, w) = (d[d.len() / 2], d[p99]);
        if m > median {
            (name, median) = (k.clone(), m);
        }
        worst = worst.max(w);
    }
    (name, median, worst)
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
}

/// Every line of `metrics.jsonl` that records a step.
fn steps(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["loss"].is_number())
        .collect()
}

/// DINOv2 (registers, LayerScale, iBOT with mean centering and with Sinkhorn-Knopp) and DINOv3
/// (RoPE, a separate iBOT head, Sinkhorn-Knopp, Gram anchoring from step 1 with a refresh
/// after step 2, on its own larger crops): two ranks of batch 2 train as one process of batch
/// 4 — every loss term, both centres, the student, the teacher, the Gram teacher and AdamW's
/// moments within 1e-5. KoLeo is per rank in the official code (each rank's nearest neighbours
/// among its own images), and drop path a per-rank subset, so those two are off here.
#[test]
fn dinov2_and_dinov3_on_two_ranks_train_as_one_process() {
    let common: &[&str] = &[
        "--image-size",
        "32",
        "--local-size",
        "16",
        "--koleo-weight",
        "0",
        "--drop-path-rate",
        "0",
    ];
    let cases: [(&str, &[&str]); 3] = [
        (
            "dinov2, mean centering",
            &[
                "--method",
                "dinov2",
                "--registers",
                "2",
                "--centering",
                "mean",
            ],
        ),
        (
            "dinov2, Sinkhorn-Knopp",
            &["--method", "dinov2", "--centering", "sinkhorn"],
        ),
        (
            "dinov3, Gram anchoring",
            &[
                "--method",
                "dinov3",
                "--registers",
                "2",
                "--gram-from-step",
                "1",
                "--gram-refresh-every",
                "2",
                "--gram-size",
                "48",
            ],
        ),
    ];
    for (label, method) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one"), dir.path().join("two"));
        let extra: Vec<&str> = common.iter().chain(method).copied().collect();
        run_ok(dino(&train_args(&one, 4, 3, &extra)), label);
        run_ok(mpirun(2, &train_args(&two, 2, 3, &extra)), label);
        let (s1, s2) = (steps(&one), steps(&two));
        assert_eq!((s1.len(), s2.len()), (3, 3), "{label}");
        let mut masked = 0;
        let terms = ["loss", "dino_loss", "ibot_loss", "gram_loss"];
        let mut worst = [0.0f64; 4];
        for (i, (a, b)) in s1.iter().zip(&s2).enumerate() {
            for (t, term) in terms.into_iter().enumerate() {
                let (Some(x), Some(y)) = (a[term].as_f64(), b[term].as_f64()) else {
                    assert_eq!(a[term], b[term], "{label}: {term} at step {i}");
                    continue;
                };
                let rel = (x - y).abs() / x.abs().max(1e-12);
                worst[t] = worst[t].max(rel);
                assert!(
                    rel < 1e-5,
                    "{label}, step {i}: {term} {x} alone, {y} on two ranks"
                );
            }
            masked += usize::from(a["ibot_loss"].as_f64().is_some_and(|v| v > 0.0));
        }
        assert!(masked > 0, "{label}: no step masked a patch");
        let (a, b) = (
            tensors(&one.join("checkpoints/last.safetensors")),
            tensors(&two.join("checkpoints/last.safetensors")),
        );
        // The centres exactly as the losses: the sums and counts are all-reduced.
        for centre in ["dino_loss.center", "ibot_loss.center"] {
            let one: TensorMap = a
                .iter()
                .filter(|(k, _)| *k == centre)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let two: TensorMap = b
                .iter()
                .filter(|(k, _)| *k == centre)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let (_, rel) = worst_relative(&one, &two);
            assert!(rel < 1e-5, "{label}: {centre} differs by {rel:e}");
            println!("{label}: {centre} {rel:.1e}");
        }
        // The measured differences, for the record (`-- --nocapture`).
        for (term, w) in terms.iter().zip(worst) {
            println!("{label}: {term} {w:.1e} (largest relative difference over 3 steps)");
        }
        // Weights as the DINOv2 replay test reads them: tensors that started near 0 (biases,
        // registers, the CLS token) moved by three AdamW steps whose gradients are near its
        // epsilon, where the summation order (4 images, or 2 + 2) changes a step's last
        // digits and, for an element whose gradient is almost 0, more. Per tensor: the median
        // difference within 1e-5 of its largest value, the 99th percentile within 1e-4, and
        // no weight off by a learning-rate step (0.05 × √(4 / 1024)).
        let (name, median, p99) = median_and_p99(&a, &b);
        println!("{label}: weights {median:.1e} median ({name}), {p99:.1e} 99th percentile");
        assert!(
            median < 1e-5 && p99 < 1e-4,
            "{label}: {name} differs by {median:e} (median) / {p99:e} (99th percentile), relative"
        );
        let lr_step = 0.05 * (4.0f32 / 1024.0).sqrt();
        let mut largest = 0.0f32;
        for (k, x) in a.iter().filter(|(k, _)| !k.starts_with("optim.")) {
            let step = x
                .data
                .iter()
                .zip(&b[k].data)
                .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(step < lr_step, "{label}: {k} off by {step}");
            largest = largest.max(step);
        }
        println!(
            "{label}: largest weight difference {largest:.1e} (a learning-rate step is {lr_step:.1e})"
        );
        // How many tensors meet 1e-5 of their largest value at every element, for the record.
        let weights = |m: &TensorMap| -> TensorMap {
            m.iter()
                .filter(|(k, _)| !k.starts_with("optim."))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let (wa, wb) = (weights(&a), weights(&b));
        let within = wa
            .keys()
            .filter(|k| {
                let one = TensorMap::from([((*k).clone(), wa[*k].clone())]);
                let two = TensorMap::from([((*k).clone(), wb[*k].clone())]);
                worst_relative(&one, &two).1 < 1e-5
            })
            .count();
        let (worst_name, worst) = worst_relative(&wa, &wb);
        println!(
            "{label}: {within} of {} weight tensors within 1e-5 at every element; the worst {worst_name} {worst:.1e}",
            wa.len()
        );
        if label.contains("Gram") {
            assert!(a.keys().any(|k| k.starts_with("gram_teacher.")), "{label}");
            assert!(
                s1.iter()
                    .any(|v| v["gram_loss"].as_f64().is_some_and(|g| g > 0.0))
            );
        }
    }
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
    killed_rank_then_resume(&[]);
}

/// The same for DINOv2: its centres, masks and Sinkhorn-Knopp reductions resume exactly.
#[test]
fn a_killed_dinov2_rank_stops_the_run_and_resume_finishes_it_exactly() {
    killed_rank_then_resume(&[
        "--method",
        "dinov2",
        "--centering",
        "sinkhorn",
        "--image-size",
        "32",
        "--local-size",
        "16",
    ]);
}

fn killed_rank_then_resume(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (killed, whole) = (dir.path().join("killed"), dir.path().join("whole"));
    const STEPS: usize = 40;
    let (mut child, text, pid) = start_watched(mpirun(2, &train_args(&killed, 2, STEPS, extra)));
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
        mpirun(2, &train_args(&whole, 2, STEPS, extra)),
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
