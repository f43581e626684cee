//! The `dino` command line end to end, on the CPU: what a user runs, and what a user gets
//! when the input is wrong (a message naming the file, a non-zero exit, no panic).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dino_model::read_checkpoint;

fn dino(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dino"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running dino")
}

fn ok(args: &[&str]) -> String {
    let out = dino(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "dino {args:?} failed:\n{text}");
    text
}

fn fails(args: &[&str], expect: &[&str]) {
    let out = dino(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dino {args:?} should fail");
    assert_eq!(
        out.status.code(),
        Some(1),
        "dino {args:?}: exit code (a panic gives 101): {stderr}"
    );
    for e in expect {
        assert!(
            stderr.contains(e),
            "dino {args:?}: stderr lacks {e:?}:\n{stderr}"
        );
    }
}

fn fixture(name: &str) -> String {
    format!(
        "{}/../model/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn sample() -> String {
    format!(
        "{}/../assets/samples/chelsea.jpg",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A ViT of 2 blocks on 32 px crops of the synthetic set: seconds per run on 2 cores.
const TINY: &[&str] = &[
    "--arch",
    "vit_tiny",
    "--depth",
    "2",
    "--patch-size",
    "8",
    "--image-size",
    "32",
    "--local-size",
    "16",
    "--local-crops",
    "2",
    "--out-dim",
    "256",
    "--head-hidden-dim",
    "256",
    "--head-bottleneck-dim",
    "64",
    "--batch-size",
    "16",
    "--synthetic-count",
    "64",
    "--synthetic-size",
    "48",
    "--epochs",
    "10",
    "--warmup-epochs",
    "1",
    "--lr",
    "0.005",
    "--device",
    "cpu",
    "--quiet",
    "--workers",
    "2",
    "--eval-every",
    "1000",
];

fn train(dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["train", "-o", dir.to_str().unwrap()];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    ok(&args)
}

#[test]
fn import_info_and_attention_on_an_official_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.safetensors");
    let text = ok(&[
        "import",
        &fixture("official_checkpoint.pth"),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(text.contains("official training checkpoint"), "{text}");
    let info = ok(&["info", out.to_str().unwrap()]);
    assert!(
        info.contains("depth 2") && info.contains("out_dim 256") && info.contains("parameters"),
        "{info}"
    );
    let att = dir.path().join("att");
    ok(&[
        "attention",
        "--checkpoint",
        out.to_str().unwrap(),
        "--image",
        &sample(),
        "--image-size",
        "64",
        "-o",
        att.to_str().unwrap(),
    ]);
    for f in [
        "img.png",
        "attn-head0.png",
        "attn-head1.png",
        "mask_th0.6_head0.png",
        "overlay.png",
        "segmentation.png",
        "pca.png",
    ] {
        let img = image::open(att.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(img.width(), 64, "{f}");
    }
    // Backbone only, in f16: what the web viewer downloads. Under half the size, and the
    // same attention to f16 precision.
    let small = dir.path().join("small.safetensors");
    ok(&[
        "import",
        &fixture("official_checkpoint.pth"),
        "-o",
        small.to_str().unwrap(),
        "--backbone-only",
        "--half",
    ]);
    let (full_len, small_len) = (
        std::fs::metadata(&out).unwrap().len(),
        std::fs::metadata(&small).unwrap().len(),
    );
    assert!(small_len * 2 < full_len, "{small_len} vs {full_len} bytes");
    let info = ok(&["info", small.to_str().unwrap()]);
    assert!(info.contains("head:        absent"), "{info}");
    let device = burn::tensor::Device::flex();
    // A fixed input: with random draws the error is a random variable whose tail (f16 weights
    // of this random fixture, amplified by LayerNorm) crossed the bound in 1 run of ~20.
    let pixels: Vec<f32> = (0..3 * 32 * 32)
        .map(|i| ((i as f32) * 0.37).sin() * 1.5)
        .collect();
    let x = burn::tensor::Tensor::<4>::from_data(
        burn::tensor::TensorData::new(pixels, [1, 3, 32, 32]),
        &device,
    );
    let cls = |path: &Path| -> Vec<f32> {
        let ckpt = read_checkpoint(&std::fs::read(path).unwrap()).unwrap();
        let model = ckpt.model(&device).unwrap();
        model
            .backbone
            .forward(x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let (a, b) = (cls(&out), cls(&small));
    let err = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max);
    println!("f16 copy: largest CLS difference {err}");
    assert!(err < 2e-2, "f16 copy differs by {err}");
    // The .pth works directly too, and so does the Hugging Face file.
    ok(&[
        "attention",
        "--checkpoint",
        &fixture("hf_vit.safetensors"),
        "--image",
        &sample(),
        "--image-size",
        "32",
        "-o",
        att.to_str().unwrap(),
    ]);
}

/// The header of a `.npy` file, for its shape.
fn npy_header(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}", path.display());
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    String::from_utf8(bytes[10..10 + len].to_vec()).unwrap()
}

#[test]
fn dinov2_and_dinov3_files_are_named_imported_and_mapped() {
    let fam = |f: &str| fixture(&format!("families/{f}"));
    // The fixtures' heads are 16 wide; official releases use 64 and need no --heads.
    let info = ok(&["info", &fam("v2reg.pth"), "--heads", "2"]);
    assert!(
        info.contains("DINOv2 ViT-32x3/14, 4 registers, LayerScale")
            && info.contains("antialiased bicubic"),
        "{info}"
    );
    // A Hugging Face file with its config.json beside it.
    let info = ok(&["info", &fam("v3_hf/model.safetensors")]);
    assert!(
        info.contains("Hugging Face DINOv3ViTModel")
            && info.contains("DINOv3 ViT-32x3/16, 4 storage tokens, LayerScale, RoPE")
            && info.contains("key part masked"),
        "{info}"
    );
    // A tensor nobody understands stops the import, naming it, unless allowed.
    fails(
        &["info", &fam("bad_v2_unknown_tensor.pth"), "--heads", "2"],
        &[
            "bad_v2_unknown_tensor.pth",
            "blocks.0.attn.qkv.lora_a",
            "--allow-unused",
        ],
    );
    ok(&[
        "info",
        &fam("bad_v2_unknown_tensor.pth"),
        "--heads",
        "2",
        "--allow-unused",
    ]);
    fails(
        &["info", &fam("bad_v3_short_periods.pth")],
        &["rope_embed.periods"],
    );
    // Maps and raw arrays of a model with registers, from an animated GIF.
    let dir = tempfile::tempdir().unwrap();
    let gif = dir.path().join("cat.gif");
    image::open(sample())
        .unwrap()
        .resize_exact(84, 56, image::imageops::FilterType::Triangle)
        .save(&gif)
        .unwrap();
    let att = dir.path().join("att");
    ok(&[
        "attention",
        "--checkpoint",
        &fam("v2reg.pth"),
        "--heads",
        "2",
        "--image",
        gif.to_str().unwrap(),
        "--image-size",
        "56",
        "-o",
        att.to_str().unwrap(),
        "--save-arrays",
    ]);
    // 56 px / patch 14 = a 4 x 4 grid; tokens = CLS + 4 registers + 16 patches.
    assert!(npy_header(&att.join("attention.npy")).contains("(2, 21, 21)"));
    assert!(npy_header(&att.join("cls_attention.npy")).contains("(2, 4, 4)"));
    assert!(npy_header(&att.join("patch_features.npy")).contains("(4, 4, 32)"));
    assert_eq!(image::open(att.join("attn-head1.png")).unwrap().width(), 56);
    let out = dir.path().join("v3.safetensors");
    let text = ok(&[
        "import",
        &fam("v3swiglu_hf/model.safetensors"),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(
        text.contains("DINOv3 ViT-32x3/16, 4 storage tokens, LayerScale, SwiGLU, RoPE"),
        "{text}"
    );
    ok(&[
        "attention",
        "--checkpoint",
        out.to_str().unwrap(),
        "--image",
        &sample(),
        "--image-size",
        "64",
        "-o",
        att.to_str().unwrap(),
    ]);
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let junk = d.join("junk.safetensors");
    std::fs::write(&junk, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    let text_file = d.join("notes.png");
    std::fs::write(&text_file, "this is not a picture").unwrap();
    let out = d.join("o");
    let o = out.to_str().unwrap();
    fails(
        &["info", d.join("missing.pth").to_str().unwrap()],
        &["missing.pth", "No such file"],
    );
    fails(
        &["info", junk.to_str().unwrap()],
        &["junk.safetensors", "not a usable checkpoint"],
    );
    fails(
        &["import", text_file.to_str().unwrap(), "-o", o],
        &["notes.png"],
    );
    let ckpt = fixture("official_checkpoint.pth");
    fails(
        &[
            "attention",
            "--checkpoint",
            &ckpt,
            "--image",
            text_file.to_str().unwrap(),
            "-o",
            o,
        ],
        &["notes.png", "not a usable image"],
    );
    fails(
        &[
            "attention",
            "--checkpoint",
            &ckpt,
            "--image",
            &sample(),
            "--image-size",
            "8",
            "-o",
            o,
        ],
        &["smaller than one"],
    );
    let truncated = d.join("truncated.pth");
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    fails(
        &["import", truncated.to_str().unwrap(), "-o", o],
        &["truncated.pth"],
    );
    fails(
        &["train", "--resume", d.to_str().unwrap()],
        &["config.json"],
    );
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails(
        &[
            "train",
            "-o",
            o,
            "--data",
            empty.to_str().unwrap(),
            "--device",
            "cpu",
        ],
        &["holds no images"],
    );
    fails(
        &["train", "-o", o, "--koleo-weight", "0.1", "--device", "cpu"],
        &[
            "--koleo-weight 0.1 only apply to --method dinov2",
            "--method dino run",
        ],
    );
    fails(
        &[
            "train",
            "-o",
            o,
            "--method",
            "dinov2",
            "--mask-ratio",
            "0.5,0.1",
            "--device",
            "cpu",
        ],
        &["--mask-ratio 0.5,0.1: MIN must not exceed MAX"],
    );
    fails(
        &["train", "-o", o, "--loss-scale", "1024", "--device", "cpu"],
        &[
            "--loss-scale only applies to mixed precision",
            "--precision f16",
        ],
    );
    // An absurd --epochs is refused before its schedules are allocated (--yes skips the plan,
    // which would otherwise refuse it by its estimate).
    let mut args = vec!["train", "-o", o];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&["--epochs", "100000000000", "--yes"]);
    fails(
        &args,
        &["--epochs 100000000000", "more than 10000000 steps"],
    );
    // A flag clap rejects is a usage error: exit code 2, as for every other bad flag.
    let usage = dino(&["train", "-o", o, "--precision", "f64"]);
    let stderr = String::from_utf8_lossy(&usage.stderr);
    assert_eq!(usage.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`f64` is not a precision; expected f32 or f16"),
        "{stderr}"
    );
    assert!(!out.join("checkpoints").join("last.safetensors").exists());
}

/// A teacher as warm as its softmax can be (temperature 1, with centering) is uniform from
/// the first step: the run warns after 20 steps, names the fix, writes the diagnostics and,
/// with --stop-on-collapse, stops there with a checkpoint and exit code 1.
#[test]
fn a_collapsing_teacher_is_diagnosed_and_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut args = vec!["train", "-o", run.to_str().unwrap()];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&[
        "--teacher-temp",
        "1",
        "--warmup-teacher-temp",
        "1",
        "--stop-on-collapse",
    ]);
    let out = dino(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("nearly uniform"), "{text}");
    assert!(text.contains("--teacher-temp 0.04"), "{text}");
    assert!(
        text.contains("stopped after step 20 because the teacher collapsed"),
        "{text}"
    );
    assert!(run.join("checkpoints").join("last.safetensors").exists());
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["step"], 19);
    assert_eq!(last["collapse"], "uniform");
    assert!(
        last["teacher_entropy_ratio"].as_f64().unwrap() > 0.95,
        "{last}"
    );
    assert!(
        last["effective_prototypes"].as_f64().unwrap() > 200.0,
        "{last}"
    );
    for key in ["kl_teacher_student", "center_norm"] {
        assert!(last[key].as_f64().unwrap().is_finite(), "{key}: {last}");
    }
}

#[test]
fn tiny_training_run_learns_without_collapse_and_writes_a_run_dir() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let text = train(
        &run,
        &[
            "--max-steps",
            "24",
            "--eval-every",
            "24",
            "--saveckp-freq",
            "2",
        ],
    );
    assert!(text.contains("trained to step 24"), "{text}");
    // The run ends by reading its last evaluation against its random init's.
    assert!(
        text.contains(
            "held-out evaluation, random init (step 0) -> step 24: best head's mask Jaccard"
        ),
        "{text}"
    );
    assert!(
        !text.contains("for 20 steps"),
        "a healthy run warned of collapse: {text}"
    );
    let losses = common::losses(&run);
    assert_eq!(losses.len(), 24);
    // The DINO loss need not fall from its first value (the centred teacher flattens while
    // the student learns), so compare with the same run that cannot learn: a learning rate
    // of 1e-12 on identical data, crops and schedules.
    let frozen = dir.path().join("frozen");
    train(
        &frozen,
        &["--max-steps", "24", "--eval-every", "1000", "--lr", "1e-12"],
    );
    let tail = |l: &[f64]| l[l.len() - 8..].iter().sum::<f64>() / 8.0;
    let (learned, baseline) = (tail(&losses), tail(&common::losses(&frozen)));
    assert!(
        learned < baseline - 0.3,
        "no learning: mean loss of the last 8 steps {learned}, without learning {baseline}"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(metrics.lines().rfind(|l| l.contains("\"loss\"")).unwrap()).unwrap();
    assert_eq!(last["collapse"], "ok", "teacher collapsed: {last}");
    assert!(metrics.contains("jaccard_best_head") && metrics.contains("knn_top1"));
    for f in [
        "config.json",
        "loss.png",
        "eval.png",
        "collapse.png",
        "attention/latest.png",
        "checkpoints/last.safetensors",
        "checkpoints/teacher.safetensors",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let teacher =
        read_checkpoint(&std::fs::read(run.join("checkpoints/teacher.safetensors")).unwrap())
            .unwrap();
    assert_eq!(teacher.config.unwrap().vit.depth, 2);
    // 64 scenes / batch 16 = 4 steps per epoch: epochs 0..5, the teacher of 0, 2 and 4 kept.
    for epoch in 0..6 {
        let kept = run.join(format!("checkpoints/teacher_e{epoch:04}.safetensors"));
        assert_eq!(kept.is_file(), epoch % 2 == 0, "{}", kept.display());
    }
    let e4 =
        read_checkpoint(&std::fs::read(run.join("checkpoints/teacher_e0004.safetensors")).unwrap())
            .unwrap();
    assert_ne!(
        e4.tensors["blocks.0.attn.qkv.weight"],
        read_checkpoint(&std::fs::read(run.join("checkpoints/teacher.safetensors")).unwrap())
            .unwrap()
            .tensors["blocks.0.attn.qkv.weight"],
        "the epoch-4 teacher is a snapshot, not the final one"
    );
    // The first evaluation is the random-init baseline, and `dino plot` redraws the curves.
    let first_eval = metrics.lines().find(|l| l.contains("\"eval\"")).unwrap();
    assert!(first_eval.starts_with("{\"eval\":0,"), "{first_eval}");
    std::fs::remove_file(run.join("eval.png")).unwrap();
    let text = ok(&["plot", run.to_str().unwrap()]);
    assert!(
        text.contains("eval.png") && run.join("eval.png").is_file(),
        "{text}"
    );
    // A second run into the same folder refuses to overwrite it.
    let mut args = vec!["train", "-o", run.to_str().unwrap()];
    args.extend_from_slice(TINY);
    fails(&args, &["already holds a run", "--resume"]);
}

#[test]
fn training_on_an_image_folder_evaluates_on_its_labels_and_masks() {
    let dir = tempfile::tempdir().unwrap();
    let (data, other) = (dir.path().join("data"), dir.path().join("other"));
    for (d, seed) in [(&data, "3"), (&other, "4")] {
        ok(&[
            "synth",
            "-o",
            d.to_str().unwrap(),
            "--n",
            "36",
            "--size",
            "32",
            "--seed",
            seed,
        ]);
    }
    for (name, extra) in [
        ("own", vec![]),
        ("other", vec!["--eval-data", other.to_str().unwrap()]),
    ] {
        let run = dir.path().join(name);
        let mut args = vec![
            "--data",
            data.to_str().unwrap(),
            "--max-steps",
            "2",
            "--eval-every",
            "2",
        ];
        args.extend(extra);
        train(&run, &args);
        let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let evals: Vec<serde_json::Value> = metrics
            .lines()
            .filter(|l| l.contains("\"eval\""))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(evals.len(), 2, "{name}: {metrics}");
        for e in &evals {
            let j = e["jaccard_best_head"].as_f64().unwrap();
            let k = e["knn_top1"].as_f64().unwrap();
            assert!(
                (0.0..=1.0).contains(&j) && (0.0..=100.0).contains(&k),
                "{name}: {e}"
            );
            assert_eq!(
                e["knn_chance"].as_f64().unwrap(),
                100.0 / 6.0,
                "{name}: {e}"
            );
        }
        assert!(run.join("eval.png").is_file());
    }
}

/// `--device auto` (the default) never lands on a software adapter: CI has lavapipe and no
/// GPU, where it must train on the CPU backend; on a machine with a GPU it names the GPU.
#[test]
fn auto_device_is_a_hardware_gpu_or_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut args = vec!["train", "-o", run.to_str().unwrap()];
    // TINY ends with `--device cpu --quiet ...`; take everything before the device flag.
    let device_at = TINY.iter().position(|a| *a == "--device").unwrap();
    args.extend_from_slice(&TINY[..device_at]);
    args.extend_from_slice(&["--max-steps", "1", "--eval-every", "1000", "--quiet"]);
    let out = dino(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let device = text
        .split("trained to step 1 on ")
        .nth(1)
        .and_then(|t| t.split(':').next())
        .unwrap_or_else(|| panic!("no summary line in {text}"));
    assert!(
        ["cpu (flex)", "wgpu (discrete GPU)", "wgpu (integrated GPU)"].contains(&device),
        "auto picked {device:?}"
    );
}

/// `dino train` with nothing but a run folder is the official ViT-S/16 configuration: days on
/// a CPU. Without a terminal to ask on, it stops before writing anything, printing the plan
/// (timed with one step) and how to start it anyway. Two compute threads, so that the
/// threshold that decides whether to time it does not depend on the machine.
#[test]
fn the_official_defaults_on_the_cpu_ask_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("official");
    let out = Command::new(env!("CARGO_BIN_EXE_dino"))
        .args(["train", "-o", run.to_str().unwrap(), "--device", "cpu"])
        .env("RUST_LOG", "warn")
        .env("RAYON_NUM_THREADS", "2")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for e in [
        "vit_small/16 (12 blocks)",
        "synthetic objects",
        "3200 steps of 64 images",
        "img/s on cpu (flex)",
        "add --yes",
    ] {
        assert!(stderr.contains(e), "no {e:?} in:\n{stderr}");
    }
    assert!(
        stderr.contains(" h") || stderr.contains(" days"),
        "an estimate above an hour: {stderr}"
    );
    assert!(!run.exists(), "nothing may be written before the answer");
}

/// 10 steps straight and 5 + `--resume` + 5 give identical weights, optimiser state and
/// losses, with `extra` flags on both runs.
fn resume_equals_straight(extra: &[&str]) -> (PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("straight"), dir.path().join("split"));
    let with = |steps: &'static str| {
        let mut v = vec!["--max-steps", steps, "--drop-path-rate", "0.2"];
        v.extend_from_slice(extra);
        v
    };
    train(&a, &with("10"));
    train(&b, &with("5"));
    let b_str = b.to_str().unwrap();
    fails(
        &[
            "train",
            "--resume",
            b_str,
            "--max-steps",
            "10",
            "--seed",
            "5",
            "--device",
            "cpu",
        ],
        &["--seed", "different configuration"],
    );
    ok(&[
        "train",
        "--resume",
        b_str,
        "--max-steps",
        "10",
        "--device",
        "cpu",
        "--quiet",
    ]);
    let load = |p: &Path| {
        read_checkpoint(&std::fs::read(p.join("checkpoints/last.safetensors")).unwrap()).unwrap()
    };
    let (ca, cb) = (load(&a), load(&b));
    assert_eq!(
        ca.metadata["dino.train_state"],
        cb.metadata["dino.train_state"]
    );
    assert_eq!(ca.tensors.len(), cb.tensors.len());
    for (name, t) in &ca.tensors {
        assert_eq!(
            t, &cb.tensors[name],
            "{name} differs between the straight and the resumed run"
        );
    }
    assert_eq!(common::losses(&a), common::losses(&b));
    (a, dir)
}

#[test]
fn resumed_run_equals_the_straight_run() {
    resume_equals_straight(&[]);
}

/// So do runs with the other optimisers: LARS's momentum buffers (`<param>.mu`) travel in the
/// checkpoint, and resuming with another --optimizer is refused.
#[test]
fn resumed_lars_run_equals_the_straight_run() {
    let (run, _dir) = resume_equals_straight(&["--optimizer", "lars"]);
    let ckpt =
        read_checkpoint(&std::fs::read(run.join("checkpoints/last.safetensors")).unwrap()).unwrap();
    assert!(
        ckpt.tensors
            .contains_key("optim.backbone.blocks.0.attn.qkv.weight.mu"),
        "{:?}",
        ckpt.tensors
            .keys()
            .filter(|k| k.starts_with("optim."))
            .take(4)
            .collect::<Vec<_>>()
    );
    fails(
        &[
            "train",
            "--resume",
            run.to_str().unwrap(),
            "--optimizer",
            "sgd",
            "--device",
            "cpu",
        ],
        &["--optimizer", "different configuration"],
    );
}

/// `--method dinov2` (here with `--layerscale 0.1`) resumes exactly too: iBOT's centre
/// travels in the checkpoint and the
/// masks and subset drop path are drawn from the seed and the step. Its metrics carry each
/// term, whose weighted sum is the loss, and loss.png draws them.
#[test]
fn resumed_dinov2_run_equals_the_straight_run() {
    let (run, _dir) = resume_equals_straight(&[
        "--method",
        "dinov2",
        "--registers",
        "2",
        "--layerscale",
        "0.1",
    ]);
    let ckpt =
        read_checkpoint(&std::fs::read(run.join("checkpoints/last.safetensors")).unwrap()).unwrap();
    // `--layerscale 0.1` started every gamma there; ten small steps keep them near it.
    let gamma = &ckpt.tensors["blocks.1.ls2.gamma"].data;
    let mean = gamma.iter().sum::<f32>() / gamma.len() as f32;
    assert!((mean - 0.1).abs() < 0.02, "LayerScale gamma mean {mean}");
    for key in [
        "ibot_loss.center",
        "mask_token",
        "register_tokens",
        "blocks.0.ls1.gamma",
        "student.mask_token",
    ] {
        assert!(
            ckpt.tensors.keys().any(|k| k.starts_with(key)),
            "{key} missing from {:?}",
            ckpt.tensors.keys().take(12).collect::<Vec<_>>()
        );
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("loss").is_some())
        .collect();
    assert_eq!(steps.len(), 10);
    let mut masked_steps = 0;
    for r in &steps {
        let term = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("no {k} in {r}"));
        let (dino, ibot, koleo) = (term("dino_loss"), term("ibot_loss"), term("koleo_loss"));
        let total = r["loss"].as_f64().unwrap();
        assert!(
            (total - (dino + ibot + 0.1 * koleo)).abs() < 1e-4 * total.abs().max(1.0),
            "loss {total} is not dino + ibot + 0.1 koleo: {r}"
        );
        // The KL diagnostic comes from the DINO term, not the total.
        let kl = dino - term("teacher_entropy");
        assert!(
            (term("kl_teacher_student") - kl).abs() < 1e-9 && kl >= -1e-4,
            "{r}"
        );
        masked_steps += usize::from(ibot > 0.0);
    }
    assert!(
        masked_steps >= 5,
        "iBOT saw masked patches in only {masked_steps} of 10 steps"
    );
    assert!(run.join("loss.png").exists());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["objective"]["method"], "dinov2");
    assert_eq!(config["model"]["registers"], 2);
    assert_eq!(
        config["data"]["crops"]["blur"],
        serde_json::json!([0.0, 0.9, 0.5])
    );
    fails(
        &[
            "train",
            "--resume",
            run.to_str().unwrap(),
            "--registers",
            "0",
            "--device",
            "cpu",
        ],
        &["--registers", "different configuration"],
    );
}

/// DINOv3 resumes exactly through the start of Gram anchoring and the Gram teacher's
/// refreshes (anchoring from step 3, a refresh after steps 4, 6 and 8, the resume at 5): the
/// Gram teacher travels in the checkpoint. The run trains the DINOv3 model: RoPE, storage
/// tokens, a separate iBOT head, plain last layers.
#[test]
fn resumed_dinov3_run_equals_the_straight_run() {
    let (run, _dir) = resume_equals_straight(&[
        "--method",
        "dinov3",
        "--registers",
        "1",
        "--gram-from-step",
        "3",
        "--gram-ramp",
        "3",
        "--gram-refresh-every",
        "2",
    ]);
    let ckpt =
        read_checkpoint(&std::fs::read(run.join("checkpoints/last.safetensors")).unwrap()).unwrap();
    for key in [
        "gram_teacher.blocks.1.attn.qkv.weight",
        "gram_teacher.rope_embed.periods",
        "ibot_head.last_layer.weight",
        "student.ibot_head.mlp.0.weight",
        "head.last_layer.weight",
        "storage_tokens",
        "rope_embed.periods",
        "ibot_loss.center",
    ] {
        assert!(
            ckpt.tensors.contains_key(key),
            "{key} missing from {:?}",
            ckpt.tensors.keys().collect::<Vec<_>>()
        );
    }
    for key in ["pos_embed", "head.last_layer.weight_g"] {
        assert!(
            !ckpt.tensors.contains_key(key),
            "{key} in a DINOv3 checkpoint"
        );
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("loss").is_some())
        .collect();
    assert_eq!(steps.len(), 10);
    for (i, r) in steps.iter().enumerate() {
        let term = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("no {k} in {r}"));
        let (dino, ibot, koleo) = (term("dino_loss"), term("ibot_loss"), term("koleo_loss"));
        let total = term("loss");
        let gram = if i < 3 {
            assert!(r.get("gram_loss").is_none(), "Gram term before step 3: {r}");
            0.0
        } else {
            // The recipe's cosine ramp over 3 steps: 0, half, all of the weight 2.
            let want = [0.0, 1.0, 2.0][(i - 3).min(2)];
            let w = term("gram_weight");
            assert!(
                (w - want).abs() < 1e-9,
                "step {i}: Gram weight {w}, want {want}"
            );
            let g = term("gram_loss");
            assert!(g.is_finite() && g >= 0.0, "step {i}: Gram loss {g}");
            w * g
        };
        assert!(
            (total - (dino + ibot + 0.1 * koleo + gram)).abs() < 1e-4 * total.abs().max(1.0),
            "loss {total} is not dino + ibot + 0.1 koleo + w gram: {r}"
        );
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["objective"]["method"], "dinov3");
    assert_eq!(config["objective"]["dinov2"]["centering"], "sinkhorn");
    assert_eq!(config["objective"]["dinov2"]["gram"]["from_step"], 3);
    let info = ok(&[
        "info",
        run.join("checkpoints/teacher.safetensors")
            .to_str()
            .unwrap(),
    ]);
    assert!(
        info.contains("iBOT head:")
            && info.contains("plain last layer")
            && info.contains("RoPE base 100"),
        "{info}"
    );
    let o = run.to_str().unwrap();
    fails(
        &[
            "train",
            "--resume",
            o,
            "--gram-weight",
            "1",
            "--device",
            "cpu",
        ],
        &["--gram-weight", "different configuration"],
    );
}

/// The Gram flags belong to DINOv3 and say so.
#[test]
fn gram_flags_need_dinov3() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("run");
    let o = o.to_str().unwrap();
    for (method, want) in [
        ("dinov2", "--gram-weight 1 only apply to --method dinov3"),
        ("dino", "--gram-weight 1 only apply to --method dinov3"),
    ] {
        fails(
            &[
                "train",
                "-o",
                o,
                "--method",
                method,
                "--gram-weight",
                "1",
                "--device",
                "cpu",
            ],
            &[want, "Add --method dinov3"],
        );
    }
    let mut args = vec!["train", "-o", o];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&["--method", "dinov3", "--gram-size", "60", "--device", "cpu"]);
    fails(
        &args,
        &["--gram-size 60 must be a multiple of --patch-size 8"],
    );
}

/// Mixed precision resumes exactly too: the loss scaler's state travels in the checkpoint.
#[test]
fn resumed_f16_run_equals_the_straight_run() {
    let (run, _dir) = resume_equals_straight(&["--precision", "f16"]);
    let ckpt =
        read_checkpoint(&std::fs::read(run.join("checkpoints/last.safetensors")).unwrap()).unwrap();
    let scaler: serde_json::Value =
        serde_json::from_str(&ckpt.metadata["dino.loss_scaler"]).unwrap();
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = metrics
        .lines()
        .rev()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r.get("loss").is_some())
        .unwrap();
    println!("scaler {scaler}, last step {last}");
    assert_eq!(scaler["scale"], last["loss_scale"]);
    assert!(last["loss"].as_f64().unwrap().is_finite());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["optim"]["precision"], "f16");
}

#[test]
fn synth_eval_seg_and_knn_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (train_dir, val_dir) = (dir.path().join("train"), dir.path().join("val"));
    ok(&[
        "synth",
        "-o",
        train_dir.to_str().unwrap(),
        "--n",
        "24",
        "--size",
        "32",
        "--seed",
        "1",
    ]);
    ok(&[
        "synth",
        "-o",
        val_dir.to_str().unwrap(),
        "--n",
        "12",
        "--size",
        "32",
        "--seed",
        "2",
    ]);
    assert!(train_dir.join("circle").join("000000.png").is_file());
    assert!(train_dir.join("circle").join("000000_mask.png").is_file());
    let ckpt = fixture("official_checkpoint.pth");
    let seg = ok(&[
        "eval-seg",
        "--checkpoint",
        &ckpt,
        "--data",
        val_dir.to_str().unwrap(),
        "--image-size",
        "32",
        "--device",
        "cpu",
    ]);
    let v: serde_json::Value =
        serde_json::from_str(seg.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!(v["images"], 12);
    assert_eq!(v["layer"], 1, "the last block by default");
    let first = ok(&[
        "eval-seg",
        "--checkpoint",
        &ckpt,
        "--data",
        val_dir.to_str().unwrap(),
        "--image-size",
        "32",
        "--layer",
        "0",
        "--limit",
        "6",
        "--device",
        "cpu",
    ]);
    assert!(first.contains("\"layer\":0"), "{first}");
    // A limit keeps every class, and says what it kept.
    assert!(
        first.contains("data: kept 6 of 12 images: 1 of each of 6 classes")
            && first.contains("\"images\":6"),
        "{first}"
    );
    fails(
        &[
            "eval-seg",
            "--checkpoint",
            &ckpt,
            "--data",
            val_dir.to_str().unwrap(),
            "--layer",
            "7",
            "--device",
            "cpu",
        ],
        &["--layer 7", "blocks 0..1"],
    );
    let best = v["jaccard_best_head"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&best) && best >= v["jaccard_mean_heads"].as_f64().unwrap());
    let knn = ok(&[
        "knn",
        "--checkpoint",
        &ckpt,
        "--train",
        train_dir.to_str().unwrap(),
        "--val",
        val_dir.to_str().unwrap(),
        "--image-size",
        "32",
        "--no-cache",
        "--device",
        "cpu",
    ]);
    let v: serde_json::Value =
        serde_json::from_str(knn.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!(v["classes"], 6);
    assert!((0.0..=100.0).contains(&v["knn_top1"].as_f64().unwrap()));
    fails(
        &[
            "eval-seg",
            "--checkpoint",
            &ckpt,
            "--data",
            dir.path().join("nope").to_str().unwrap(),
            "--device",
            "cpu",
        ],
        &["nope"],
    );
}

/// `dino knn` against `eval_knn.py` run on the same folder and teacher weights
/// (trainer/tests/fixtures/knn, from scripts/make_knn_fixtures.py): the same features
/// (Resize 256 bicubic, CenterCrop 224 of images of several aspect ratios) and the same
/// top-1 and top-5 for every k; a second run reads the cached features; `--limit`
/// keeps every class and says so.
#[test]
fn knn_matches_eval_knn_py() {
    let dir = tempfile::tempdir().unwrap();
    common::knn_fixture_folder(dir.path());
    let fixtures = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let cache = dir.path().join("cache");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "knn",
            "--checkpoint",
            &format!("{fixtures}/train_initial.pth"),
            "--train",
            dir.path().join("train").to_str().unwrap(),
            "--val",
            dir.path().join("val").to_str().unwrap(),
            "--k",
            "1",
            "5",
            "10",
            "20",
            "--cache",
            cache.to_str().unwrap(),
            "--device",
            "cpu",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        ok(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let first = run(&[]);
    assert!(first.contains("features saved to"), "{first}");
    // The features themselves, from the cache file.
    let cached = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let (_, ours) =
        dino_model::checkpoint::read_safetensors(&std::fs::read(&cached).unwrap()).unwrap();
    let (_, official) = dino_model::checkpoint::read_safetensors(
        &std::fs::read(format!("{fixtures}/knn/knn.safetensors")).unwrap(),
    )
    .unwrap();
    for name in [
        "train_features",
        "val_features",
        "train_labels",
        "val_labels",
    ] {
        let (a, b) = (&ours[name], &official[name]);
        assert_eq!(a.shape, b.shape, "{name}");
        let worst = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-5, "{name}: largest difference {worst:e}");
    }
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{fixtures}/knn/knn.json")).unwrap())
            .unwrap();
    let got: serde_json::Value =
        serde_json::from_str(first.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    for (g, w) in got["knn"]
        .as_array()
        .unwrap()
        .iter()
        .zip(want["results"].as_array().unwrap())
    {
        assert_eq!(g["k"], w["k"]);
        let k = &w["k"];
        for key in ["top1", "top5"] {
            let (g, w) = (g[key].as_f64().unwrap(), w[key].as_f64().unwrap());
            assert!(
                (g - w).abs() < 1e-9,
                "k = {k}: {key} {g} against eval_knn.py's {w}"
            );
        }
    }
    let second = run(&[]);
    assert!(second.contains("features read from"), "{second}");
    assert_eq!(
        second.lines().find(|l| l.starts_with('{')),
        first.lines().find(|l| l.starts_with('{'))
    );
    // 6 classes, a limit of 15: every class kept, and the account printed.
    let limited = run(&["--limit", "15"]);
    assert!(
        limited.contains("train: kept 15 of 60 images: 2 to 3 of each of 6 classes")
            && limited.contains("val: kept 15 of 102 images: 2 to 3 of each of 6 classes"),
        "{limited}"
    );
}

#[test]
fn non_finite_loss_stops_with_the_last_good_checkpoint_kept() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("nan");
    let run_s = run.to_str().unwrap();
    let mut args = vec!["train", "-o", run_s];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&["--max-steps", "2", "--checkpoint-every", "1"]);
    ok(&args);
    let step_of = |p: &Path| -> u64 {
        let ckpt = read_checkpoint(&std::fs::read(p).unwrap()).unwrap();
        let state: serde_json::Value =
            serde_json::from_str(&ckpt.metadata["dino.train_state"]).unwrap();
        state["step"].as_u64().unwrap()
    };
    let last = run.join("checkpoints/last.safetensors");
    assert_eq!(step_of(&last), 2);
    // Resumed at an absurd learning rate (which --resume accepts, with a warning), the run
    // diverges within a few steps: it stops, and the checkpoint left is one whose step gave
    // a finite loss and finite gradients.
    let out = dino(&[
        "train",
        "--resume",
        run_s,
        "--lr",
        "1e12",
        "--warmup-epochs",
        "0",
        "--clip-grad",
        "0",
        "--checkpoint-every",
        "1",
        "--max-steps",
        "12",
        "--device",
        "cpu",
        "--quiet",
    ]);
    let msg = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{msg}");
    for expect in [
        "became",
        "last good checkpoint",
        "dino train --resume",
        "--lr 2.5e11",
    ] {
        assert!(
            msg.contains(expect),
            "missing {expect:?} in:
{msg}"
        );
    }
    let kept = step_of(&last);
    assert!(kept >= 2, "{kept}");
    let ckpt = read_checkpoint(&std::fs::read(&last).unwrap()).unwrap();
    assert!(
        ckpt.tensors
            .values()
            .all(|t| t.data.iter().all(|v| v.is_finite())),
        "the kept checkpoint holds a NaN or an infinity"
    );
    // The advice works: resumed with a lower learning rate, the run goes on from there.
    let out = ok(&[
        "train",
        "--resume",
        run_s,
        "--lr",
        "0.005",
        "--warmup-epochs",
        "0",
        "--clip-grad",
        "0",
        "--max-steps",
        "14",
        "--device",
        "cpu",
        "--quiet",
    ]);
    assert!(out.contains("trained to step 14"), "{out}");
    assert!(
        common::losses(&run).iter().all(|l| l.is_finite()),
        "{:?}",
        common::losses(&run)
    );
}

/// TINY without the flags that set the backbone's shape, which `--init` takes from its file.
fn tiny_without_backbone(image: &str, local: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut it = TINY.iter();
    while let Some(&flag) = it.next() {
        match flag {
            "--arch" | "--depth" | "--patch-size" | "--image-size" | "--local-size" => {
                it.next();
            }
            _ => out.push(flag),
        }
    }
    let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
    out.extend(["--image-size", leak(image), "--local-size", leak(local)]);
    out
}

/// `--init` fine-tunes released weights: a DINOv2-with-registers Hugging Face file (with its
/// config.json) becomes both backbones exactly (checked after a step at learning rate 0), the
/// run's shape comes from the file and a contradicting flag is refused, the run resumes
/// without the file, and a DINO v1 backbone trains under `--method dinov2` with a zero mask
/// token.
#[test]
fn init_fine_tunes_released_weights() {
    use dino_model::import::{ImportOptions, Which, import_with};
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    std::fs::create_dir_all(&release).unwrap();
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(fixture(&format!("families/v2reg_hf/{f}")), release.join(f)).unwrap();
    }
    let weights = release.join("model.safetensors");
    let weights_s = weights.to_str().unwrap().to_string();
    let base = tiny_without_backbone("28", "14");
    let run = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["train".into(), "-o".into(), out.display().to_string()];
        v.extend(base.iter().map(|s| s.to_string()));
        v.extend(["--method", "dinov2", "--init", &weights_s].map(String::from));
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let frozen = dir.path().join("frozen");
    let args = run(
        &frozen,
        &[
            "--max-steps",
            "1",
            "--lr",
            "0",
            "--min-lr",
            "0",
            "--weight-decay",
            "0",
            "--weight-decay-end",
            "0",
        ],
    );
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let file = import_with(
        &std::fs::read(&weights).unwrap(),
        &ImportOptions {
            which: Which::Teacher,
            hf_config: Some(std::fs::read_to_string(release.join("config.json")).unwrap()),
            ..ImportOptions::default()
        },
    )
    .unwrap();
    let ckpt =
        read_checkpoint(&std::fs::read(frozen.join("checkpoints/last.safetensors")).unwrap())
            .unwrap();
    let mut compared = 0;
    for (name, want) in &file.tensors {
        for net in ["student.", ""] {
            let got = ckpt
                .tensors
                .get(&format!("{net}{name}"))
                .unwrap_or_else(|| panic!("{net}{name} missing from the checkpoint"));
            assert_eq!(got.shape, want.shape, "{net}{name}");
            let worst = got
                .data
                .iter()
                .zip(&want.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst <= 1e-6, "{net}{name} moved from the file by {worst}");
            compared += 1;
        }
    }
    assert!(compared >= 2 * 20, "only {compared} tensors compared");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(frozen.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["model"]["init"]["backbone"]["num_register_tokens"],
        4
    );
    assert_eq!(config["model"]["patch_size"], 14);
    assert_eq!(config["model"]["registers"], 4);

    // A flag that contradicts the file is refused, naming both.
    let bad = run(&dir.path().join("bad"), &["--registers", "0"]);
    fails(
        &bad.iter().map(String::as_str).collect::<Vec<_>>(),
        &["--registers 0 contradicts --init", "4 registers"],
    );
    let missing = dir.path().join("nowhere.pth");
    fails(
        &[
            "train",
            "-o",
            dir.path().join("m").to_str().unwrap(),
            "--init",
            missing.to_str().unwrap(),
            "--device",
            "cpu",
        ],
        &["nowhere.pth"],
    );

    // Training moves it, and the run resumes without the file.
    let tuned = dir.path().join("tuned");
    let first = run(&tuned, &["--max-steps", "2"]);
    ok(&first.iter().map(String::as_str).collect::<Vec<_>>());
    std::fs::remove_dir_all(&release).unwrap();
    ok(&[
        "train",
        "--resume",
        tuned.to_str().unwrap(),
        "--max-steps",
        "4",
        "--device",
        "cpu",
        "--quiet",
    ]);
    assert_eq!(common::losses(&tuned).len(), 4);

    // A DINO v1 backbone under --method dinov2: its mask token starts at zero.
    let v1 = dir.path().join("v1");
    let mut args: Vec<&str> = vec!["train", "-o", v1.to_str().unwrap()];
    let base64 = tiny_without_backbone("32", "16");
    args.extend(base64.iter().copied());
    let official = fixture("official_backbone.pth");
    args.extend([
        "--method",
        "dinov2",
        "--init",
        &official,
        "--max-steps",
        "1",
    ]);
    ok(&args);
    let ckpt =
        read_checkpoint(&std::fs::read(v1.join("checkpoints/last.safetensors")).unwrap()).unwrap();
    assert_eq!(ckpt.tensors["mask_token"].shape, vec![1, 128]);
}

/// `--config FILE` with `KEY=VALUE` overrides starts the run its flags start: a YAML file with
/// our sections and the official DINOv2 keys, plus an override, gives a byte-identical
/// `config.json` and the same first loss as the flags; that `config.json` given back to
/// `--config` starts the same run once more; an unknown key fails with its name and file.
#[test]
fn a_config_file_starts_the_run_its_flags_start() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("tiny.yaml");
    std::fs::write(
        &yaml,
        "\
# our sections
objective: {method: dinov2}
model: {arch: vit_tiny, depth: 2, patch_size: 8, out_dim: 256, head_hidden_dim: 256, head_bottleneck_dim: 64}
data: {synthetic_count: 64, synthetic_size: 48}
# the official DINOv2 keys
crops:
  global_crops_size: 32
  local_crops_size: 16
  local_crops_number: 2
  global_crops_scale: [0.3, 1.0]
train: {batch_size_per_gpu: 16, seed: 3, centering: sinkhorn_knopp, output_dir: .}
optim: {base_lr: 0.005, lr: 0., epochs: 10, warmup_epochs: 1, layerwise_decay: 0.8, scaling_rule: sqrt_wrt_1024}
ibot.loss_weight: 0.5
",
    )
    .unwrap();
    let common = [
        "--max-steps",
        "1",
        "--device",
        "cpu",
        "--quiet",
        "--workers",
        "2",
        "--eval-every",
        "1000",
    ];
    let (from_file, from_flags, again) = (
        dir.path().join("file"),
        dir.path().join("flags"),
        dir.path().join("again"),
    );
    let mut args = vec!["train", "-o", from_file.to_str().unwrap()];
    args.extend_from_slice(&[
        "--config",
        yaml.to_str().unwrap(),
        "dino.koleo_loss_weight=0.2",
    ]);
    args.extend_from_slice(&common);
    ok(&args);
    let mut args = vec!["train", "-o", from_flags.to_str().unwrap()];
    args.extend_from_slice(&[
        "--method",
        "dinov2",
        "--arch",
        "vit_tiny",
        "--depth",
        "2",
        "--patch-size",
        "8",
        "--out-dim",
        "256",
        "--head-hidden-dim",
        "256",
        "--head-bottleneck-dim",
        "64",
        "--synthetic-count",
        "64",
        "--synthetic-size",
        "48",
        "--image-size",
        "32",
        "--local-size",
        "16",
        "--local-crops",
        "2",
        "--global-crops-scale",
        "0.3,1",
        "--batch-size",
        "16",
        "--seed",
        "3",
        "--centering",
        "sinkhorn",
        "--lr",
        "0.005",
        "--epochs",
        "10",
        "--warmup-epochs",
        "1",
        "--layer-decay",
        "0.8",
        "--ibot-weight",
        "0.5",
        "--koleo-weight",
        "0.2",
    ]);
    args.extend_from_slice(&common);
    ok(&args);
    let config = |run: &Path| std::fs::read_to_string(run.join("config.json")).unwrap();
    assert_eq!(config(&from_file), config(&from_flags));
    assert_eq!(common::losses(&from_file), common::losses(&from_flags));
    let saved = from_flags.join("config.json");
    let mut args = vec![
        "train",
        "-o",
        again.to_str().unwrap(),
        "--config",
        saved.to_str().unwrap(),
    ];
    args.extend_from_slice(&common);
    ok(&args);
    assert_eq!(config(&again), config(&from_flags));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "schedule:\n  lrr: 0.1\n").unwrap();
    let out = dir.path().join("bad_run");
    fails(
        &[
            "train",
            "-o",
            out.to_str().unwrap(),
            "--config",
            bad.to_str().unwrap(),
        ],
        &["bad.yaml", "unknown key `schedule.lrr`"],
    );
    fails(
        &[
            "train",
            "-o",
            out.to_str().unwrap(),
            "schedule.lr=0.001",
            "optim.adamw_beta1=0.5",
        ],
        &["optim.adamw_beta1", "only 0.9"],
    );
    assert!(!out.exists(), "a refused config wrote {}", out.display());
}

/// A run directory whose `config.json` the previous layout wrote (version 1, one flat object)
/// resumes into the sections: the same weights as the run that never left this version, and
/// its `config.json` rewritten in sections, byte for byte as that run's. For DINO and for
/// DINOv3 (whose version-1 `dinov2` object held the registers, LayerScale, separate head and
/// layer decay that now live in the model and optimiser sections).
#[test]
fn a_version_1_config_json_resumes() {
    for (fixture, extra) in [
        ("dino.json", &[][..]),
        (
            "dinov3.json",
            &[
                "--method",
                "dinov3",
                "--registers",
                "2",
                "--layerscale",
                "0.1",
                "--gram-from-step",
                "1",
                "--gram-size",
                "48",
            ][..],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (now, old) = (dir.path().join("now"), dir.path().join("old"));
        let mut first = vec!["--max-steps", "2"];
        first.extend_from_slice(extra);
        train(&now, &first);
        std::fs::create_dir_all(old.join("checkpoints")).unwrap();
        for f in ["metrics.jsonl", "checkpoints/last.safetensors"] {
            std::fs::copy(now.join(f), old.join(f)).unwrap();
        }
        let v1 = format!(
            "{}/tests/fixtures/config_v1/{fixture}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::copy(&v1, old.join("config.json")).unwrap();
        for run in [&now, &old] {
            ok(&[
                "train",
                "--resume",
                run.to_str().unwrap(),
                "--max-steps",
                "4",
                "--device",
                "cpu",
                "--quiet",
            ]);
        }
        let text = |p: &Path| std::fs::read_to_string(p.join("config.json")).unwrap();
        assert_eq!(text(&old), text(&now), "{fixture}");
        let load = |p: &Path| {
            read_checkpoint(&std::fs::read(p.join("checkpoints/last.safetensors")).unwrap())
                .unwrap()
        };
        let (a, b) = (load(&now), load(&old));
        for (name, t) in &a.tensors {
            assert_eq!(t, &b.tensors[name], "{fixture}: {name}");
        }
    }
}

/// `dino info facebook/…`-style names: the repository's weights and config.json come from the
/// Hub (a local stand-in at HF_ENDPOINT) into the Hub cache (HF_HOME), are imported as the
/// files would be, and a second call with HF_HUB_OFFLINE=1 and the server gone reads the cache.
#[test]
fn released_models_open_by_hub_name() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let fam = format!(
        "{}/../model/tests/fixtures/families/v2_hf",
        env!("CARGO_MANIFEST_DIR")
    );
    let server = std::thread::spawn(move || {
        // Three requests: model.safetensors, config.json, preprocessor_config.json.
        for stream in listener.incoming().take(3) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            while {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap() > 2
            } {}
            let path = line.split_whitespace().nth(1).unwrap().to_string();
            let file = path
                .strip_prefix("/org/tiny-v2/resolve/main/")
                .unwrap_or("");
            match std::fs::read(format!("{fam}/{file}")) {
                Ok(body) if !file.is_empty() => {
                    write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nX-Repo-Commit: abc123\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .unwrap();
                    stream.write_all(&body).unwrap();
                }
                _ => write!(
                    stream,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .unwrap(),
            }
        }
    });
    let home = tempfile::tempdir().unwrap();
    let info = |offline: bool| {
        let out = Command::new(env!("CARGO_BIN_EXE_dino"))
            .args(["info", "org/tiny-v2"])
            .env("HF_HOME", home.path())
            .env("HF_ENDPOINT", &endpoint)
            .env("HF_HUB_OFFLINE", if offline { "1" } else { "0" })
            .env_remove("HF_HUB_CACHE")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        text
    };
    let first = info(false);
    server.join().unwrap();
    assert!(
        first.contains("Hugging Face Dinov2Model") && first.contains("DINOv2 ViT-32x3/14"),
        "{first}"
    );
    let cached = home
        .path()
        .join("hub/models--org--tiny-v2/snapshots/abc123/model.safetensors");
    assert!(cached.is_file() && cached.with_file_name("config.json").is_file());
    assert!(info(true).contains("DINOv2 ViT-32x3/14"));
    // A name the cache does not hold, offline: the error says what to do.
    let out = Command::new(env!("CARGO_BIN_EXE_dino"))
        .args(["info", "org/absent"])
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HUB_CACHE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("org/absent is not in the Hub cache") && stderr.contains("HF_HUB_OFFLINE"),
        "{stderr}"
    );
}
