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
