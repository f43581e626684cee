//! Hostile inputs the trainer meets on users' disks: a disk that fills up during a checkpoint
//! write, data folders with non-UTF-8 names, unreadable files, dangling links and symlink
//! loops, and checkpoint files that are empty, cut short or contradict their own config.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dino_model::read_checkpoint;

/// What these tests add to [`common::TINY_VIT`].
const TINY: &[&str] = &[
    "--batch-size",
    "4",
    "--epochs",
    "100",
    "--warmup-epochs",
    "1",
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

fn dino() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dino"));
    c.env("RUST_LOG", "warn");
    c
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn train_args(run: &Path, resume: bool, max_steps: u32) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = vec!["train".into()];
    if resume {
        a.extend(["--resume".into(), run.as_os_str().to_owned()]);
    } else {
        a.extend(["-o".into(), run.as_os_str().to_owned()]);
        a.extend(common::TINY_VIT.iter().chain(TINY).map(|s| s.into()));
    }
    a.extend(["--max-steps".into(), max_steps.to_string().into()]);
    a
}

/// Training arguments on the synthetic set (small scenes).
fn synthetic(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    args.extend(["--synthetic-count", "16", "--synthetic-size", "24"].map(Into::into));
    args
}

fn checkpoint_step(path: &Path) -> u64 {
    let ckpt = read_checkpoint(&std::fs::read(path).unwrap()).unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&ckpt.metadata["dino.train_state"]).unwrap();
    state["step"].as_u64().unwrap()
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

/// The disk fills up while a checkpoint is written (simulated with a file-size limit, so the
/// kernel fails the write part-way like ENOSPC does): the run stops with a message naming
/// the checkpoint and the fix, the previous checkpoint survives intact, no temp file is left,
/// and once there is room again `--resume` carries on.
#[cfg(unix)]
#[test]
fn disk_full_during_a_checkpoint_write_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = dino()
        .args(synthetic(train_args(&run, false, 3)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let last = run.join("checkpoints").join("last.safetensors");
    let before = std::fs::read(&last).unwrap();
    assert_eq!(checkpoint_step(&last), 3);
    // Room for the metrics and config, not for a whole checkpoint. `ulimit -f` counts
    // blocks of 512 or 1024 bytes depending on the shell; either way the limit lands between
    // a quarter and a half of the checkpoint. SIGXFSZ is ignored so the write fails with an
    // error instead of killing the process, as a full disk would.
    let blocks = before.len() / 2 / 1024;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -f {blocks}; trap '' XFSZ; exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_dino"))
        .args(train_args(&run, true, 6))
        .env("RUST_LOG", "warn");
    let out = cmd.output().unwrap();
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    // Step 4 ends epoch 0, whose teacher snapshot (--saveckp-freq) is written first; either
    // write may be the one that fails, and both messages say the same things.
    for expect in [
        "step 4",
        "failed",
        "last.safetensors still holds step 3",
        "Free some disk space",
        "--resume",
    ] {
        assert!(msg.contains(expect), "missing {expect:?} in:\n{msg}");
    }
    assert_eq!(
        std::fs::read(&last).unwrap(),
        before,
        "old checkpoint changed"
    );
    assert!(leftovers(&run.join("checkpoints")).is_empty());
    let out = dino().args(train_args(&run, true, 6)).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(checkpoint_step(&last), 6);
}

#[cfg(unix)]
fn os(bytes: &[u8]) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    std::ffi::OsString::from_vec(bytes.to_vec())
}

/// An image folder as users have them: class folders and files whose names are not UTF-8,
/// empty and corrupt images, a link to nowhere, a file nobody may read, a symlink loop and
/// text files. Training indexes what it can, skips (and counts) the rest, and finishes.
#[cfg(unix)]
#[test]
fn image_folder_with_hostile_entries_trains() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cats = data.join(os(b"chats-\xe9t\xe9"));
    let dogs = data.join("dogs");
    for d in [&cats, &dogs] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut good = Vec::new();
    for i in 0..6u8 {
        let img = image::RgbImage::from_fn(24, 24, |x, y| {
            image::Rgb([(x * 10) as u8, (y * 10) as u8, i * 40])
        });
        let class = if i % 2 == 0 { &cats } else { &dogs };
        let path = class.join(os(&[b'\xff', b'0' + i, b'.', b'p', b'n', b'g']));
        img.save_with_format(&path, image::ImageFormat::Png)
            .unwrap();
        good.push(path);
    }
    std::fs::write(dogs.join("empty.jpg"), b"").unwrap();
    std::fs::write(dogs.join("corrupt.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::write(dogs.join("readme.txt"), b"notes").unwrap();
    std::os::unix::fs::symlink(dir.path().join("nowhere.png"), dogs.join("dangling.png")).unwrap();
    std::os::unix::fs::symlink(&data, cats.join("loop")).unwrap();
    let locked = dogs.join("locked.png");
    std::fs::copy(&good[1], &locked).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();

    let run = dir.path().join(os(b"run-\xfe"));
    let mut args = train_args(&run, false, 12);
    args.extend(["--data".into(), data.as_os_str().to_owned()]);
    let out = dino().args(&args).output().unwrap();
    let msg = text(&out);
    assert!(out.status.success(), "{msg}");
    assert!(msg.contains("skipped 1 files that are not images"), "{msg}");
    // Which bad files a short run meets depends on the shuffle (and root may read a
    // mode-000 file); that some were met, named and counted does not.
    assert!(msg.contains("could not be read"), "{msg}");
    assert!(
        ["empty.jpg", "corrupt.png", "dangling.png", "locked.png"]
            .iter()
            .any(|bad| msg.contains(bad)),
        "no warning names a bad file:\n{msg}"
    );
    assert_eq!(
        checkpoint_step(&run.join("checkpoints").join("last.safetensors")),
        12
    );

    // The attention command reads and writes paths that are not UTF-8 as well.
    let pictures = dir.path().join(os(b"maps-\xfd"));
    let out = dino()
        .args(["attention", "--checkpoint"])
        .arg(run.join("checkpoints").join("teacher.safetensors"))
        .arg("--image")
        .arg(&good[0])
        .args(["--image-size", "24", "--device", "cpu", "-o"])
        .arg(&pictures)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(pictures.join("attn-head0.png").exists());
}

fn fails_with(args: &[&std::ffi::OsStr], expect: &[&str]) {
    let out = dino().args(args).output().unwrap();
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {msg}");
    for e in expect {
        assert!(msg.contains(e), "{args:?}: missing {e:?} in:\n{msg}");
    }
}

/// Checkpoint files that are empty, cut short at every kind of boundary, or whose tensors
/// contradict the config stored beside them: a clear error naming the file, exit 1.
#[test]
fn broken_checkpoints_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = dino()
        .args(synthetic(train_args(&run, false, 1)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let teacher = run.join("checkpoints").join("teacher.safetensors");
    let bytes = std::fs::read(&teacher).unwrap();

    let write = |name: &str, b: &[u8]| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let empty = write("empty.safetensors", b"");
    fails_with(
        &["info".as_ref(), empty.as_os_str()],
        &["empty.safetensors"],
    );
    for (i, cut) in [4usize, 8, 100, bytes.len() / 2, bytes.len() - 1]
        .into_iter()
        .enumerate()
    {
        let p = write(&format!("cut{i}.safetensors"), &bytes[..cut]);
        fails_with(
            &["info".as_ref(), p.as_os_str()],
            &[&format!("cut{i}.safetensors")],
        );
    }

    // A config that claims more blocks than the file holds, and one whose width disagrees
    // with the tensors: the missing or mis-shaped tensor is named.
    let ckpt = read_checkpoint(&bytes).unwrap();
    let config = ckpt.config.clone().unwrap();
    let mut deeper = config.clone();
    deeper.vit.depth += 1;
    let mut wider = config.clone();
    wider.vit.embed_dim *= 2;
    wider.vit.num_heads *= 2;
    if let Some(h) = wider.head.as_mut() {
        h.in_dim *= 2;
    }
    let image = dir.path().join("x.png");
    image::RgbImage::new(16, 16).save(&image).unwrap();
    for (name, cfg, expect) in [
        ("deeper.safetensors", deeper, "blocks.1"),
        ("wider.safetensors", wider, "shape"),
    ] {
        let b = dino_model::checkpoint::write_checkpoint(
            &cfg,
            dino_model::checkpoint::KIND_MODEL,
            &ckpt.tensors,
            &Default::default(),
        )
        .unwrap();
        let p = write(name, &b);
        fails_with(
            &[
                "attention".as_ref(),
                "--checkpoint".as_ref(),
                p.as_os_str(),
                "--image".as_ref(),
                image.as_os_str(),
                "--device".as_ref(),
                "cpu".as_ref(),
                "-o".as_ref(),
                dir.path().join("o").as_os_str(),
            ],
            &[name, expect],
        );
    }
}

/// Waits until the run's `metrics.jsonl` records at least `steps` steps.
fn wait_for_steps(run: &Path, steps: usize, child: &mut std::process::Child) {
    let start = std::time::Instant::now();
    loop {
        let done = std::fs::read_to_string(run.join("metrics.jsonl"))
            .map(|m| m.lines().filter(|l| l.contains("\"loss\"")).count())
            .unwrap_or(0);
        if done >= steps {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended ({status}) before step {steps}");
        }
        assert!(
            start.elapsed().as_secs() < 300,
            "no step {steps} after 5 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Two `dino train` on one folder: the second is refused with the first one's process
/// named, and nothing of the first run changes.
#[test]
fn a_second_trainer_on_the_same_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut first = dino()
        .args(synthetic(train_args(&run, false, 100_000)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_steps(&run, 2, &mut first);
    for args in [
        train_args(&run, true, 100_000),
        synthetic(train_args(&run, false, 10)),
    ] {
        let out = dino().args(&args).output().unwrap();
        let msg = text(&out);
        assert_eq!(out.status.code(), Some(1), "{msg}");
        for expect in [
            "in use by another `dino train`",
            &format!("process {}", first.id()),
        ] {
            assert!(msg.contains(expect), "missing {expect:?} in:\n{msg}");
        }
    }
    first.kill().unwrap();
    first.wait().unwrap();
    // The lock died with its process: the run resumes.
    let out = dino().args(train_args(&run, true, 3)).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// SIGTERM (a scheduler's preemption) in the middle of a run: it finishes the step, writes
/// its checkpoint, says how to go on and exits 0; `--resume` then finishes the run bit for bit
/// as an uninterrupted one.
#[cfg(unix)]
#[test]
fn sigterm_then_resume_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (straight, stopped) = (dir.path().join("straight"), dir.path().join("stopped"));
    let rare_saves = |mut a: Vec<std::ffi::OsString>| {
        a.extend(["--checkpoint-every", "1000"].map(Into::into));
        synthetic(a)
    };
    let out = dino()
        .args(rare_saves(train_args(&straight, false, 24)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut child = dino()
        .args(rare_saves(train_args(&stopped, false, 24)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_steps(&stopped, 3, &mut child);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let msg = text(&out);
    assert!(
        out.status.success(),
        "SIGTERM should end the run cleanly:\n{msg}"
    );
    assert!(msg.contains("stopped by a signal after step"), "{msg}");
    let last = stopped.join("checkpoints").join("last.safetensors");
    let at = checkpoint_step(&last);
    assert!((3..24).contains(&at), "checkpoint at step {at}");
    assert!(msg.contains(&format!("after step {at}")), "{msg}");
    let out = dino()
        .args(train_args(&stopped, true, 24))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let load = |p: &Path| {
        read_checkpoint(&std::fs::read(p.join("checkpoints/last.safetensors")).unwrap()).unwrap()
    };
    let (a, b) = (load(&straight), load(&stopped));
    assert_eq!(
        a.metadata["dino.train_state"],
        b.metadata["dino.train_state"]
    );
    for (name, t) in &a.tensors {
        assert_eq!(
            t, &b.tensors[name],
            "{name} differs after SIGTERM and resume"
        );
    }
}

/// A run resumed on a folder whose images changed would silently see other batches: it is
/// refused, naming the change, unless `--allow-data-change` says to go on.
#[test]
fn resume_on_changed_data_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("a")).unwrap();
    for i in 0..8u8 {
        image::RgbImage::from_fn(24, 24, |x, y| {
            image::Rgb([x as u8 * 9, y as u8 * 9, i * 30])
        })
        .save(data.join("a").join(format!("{i}.png")))
        .unwrap();
    }
    let run = dir.path().join("run");
    let with_data = |mut a: Vec<std::ffi::OsString>| {
        a.extend(["--data".into(), data.as_os_str().to_owned()]);
        a
    };
    let out = dino()
        .args(with_data(train_args(&run, false, 2)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Unchanged data resumes.
    let out = dino().args(train_args(&run, true, 3)).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::copy(data.join("a/0.png"), data.join("a/new.png")).unwrap();
    let out = dino().args(train_args(&run, true, 4)).output().unwrap();
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    for expect in ["trained on other data", "--allow-data-change"] {
        assert!(msg.contains(expect), "missing {expect:?} in:\n{msg}");
    }
    let mut allowed = train_args(&run, true, 4);
    allowed.push("--allow-data-change".into());
    let out = dino().args(&allowed).output().unwrap();
    let msg = text(&out);
    assert!(out.status.success(), "{msg}");
    assert!(
        msg.contains("no longer the one an uninterrupted training"),
        "{msg}"
    );
    assert_eq!(
        checkpoint_step(&run.join("checkpoints/last.safetensors")),
        4
    );
}
