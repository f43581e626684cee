//! Replays the fuzzers' seeds and every input that once crashed, hung or blew up memory in a
//! fuzz target (`fuzz/regressions/<target>/`) through the same code the targets call, so a
//! fixed bug stays fixed without running the fuzzer.

use std::path::PathBuf;

use dino_model::import::{ImportOptions, Which, check_tensors, import_bytes, import_with};
use dino_model::preprocess::{Resize, decode_image, prepare};

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let bytes = std::fs::read(e.path()).unwrap();
            out.push((e.path(), bytes));
        }
    }
    out
}

fn replay(target: &str, min: usize, run: impl Fn(&[u8])) {
    let cases = inputs(target);
    assert!(cases.len() >= min, "fuzz/seeds/{target} is missing");
    for (path, bytes) in cases {
        eprintln!("{}", path.display());
        run(&bytes);
    }
}

#[test]
fn checkpoint_reader() {
    replay("checkpoint", 1, |b| {
        if let Ok(ckpt) = dino_model::read_checkpoint(b)
            && let Some(config) = &ckpt.config
        {
            let _ = check_tensors(config, &ckpt.tensors);
        }
    });
}

#[test]
fn pth_importer() {
    replay("pth", 3, |b| {
        let _ = dino_model::import::pth::read_pth(b);
        let _ = import_bytes(b, Which::Teacher);
        let _ = import_bytes(b, Which::Student);
    });
    // The seeds are valid files: they must import.
    for (path, bytes) in inputs("pth")
        .into_iter()
        .filter(|(p, _)| p.to_string_lossy().contains("seeds"))
    {
        import_bytes(&bytes, Which::Teacher).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn hf_safetensors_importer() {
    replay("hf_safetensors", 3, |b| {
        let _ = import_bytes(b, Which::Teacher);
    });
}

#[test]
fn hugging_face_importer_with_config_json() {
    // The target's framing: u16 LE length, config.json, weights.
    let split = |b: &[u8]| -> Option<(String, Vec<u8>)> {
        let n = u16::from_le_bytes([*b.first()?, *b.get(1)?]) as usize;
        let rest = &b[2..];
        let (c, w) = rest.split_at(n.min(rest.len()));
        Some((String::from_utf8_lossy(c).into_owned(), w.to_vec()))
    };
    replay("hf_with_config", 2, |b| {
        if let Some((config, weights)) = split(b) {
            let _ = import_with(
                &weights,
                &ImportOptions {
                    hf_config: Some(config),
                    ..ImportOptions::default()
                },
            );
        }
    });
    // The seeds are valid DINOv2 / DINOv3 files: they must import.
    for (path, bytes) in inputs("hf_with_config")
        .into_iter()
        .filter(|(p, _)| p.to_string_lossy().contains("seeds"))
    {
        let (config, weights) = split(&bytes).unwrap();
        import_with(
            &weights,
            &ImportOptions {
                hf_config: Some(config),
                ..ImportOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn pickle_inside_an_archive() {
    // The pickle target wraps its input in an archive; the seeds here are raw pickles of
    // torch.save archives, which must also be refused or read without a panic on their own.
    replay("pickle", 3, |b| {
        let _ = dino_model::import::pth::read_pth(b);
    });
}

#[test]
fn image_decoding_and_preprocessing() {
    replay("image", 5, |b| {
        if let Ok(img) = decode_image(b) {
            let _ = prepare(&img, Resize::Square(32), 8);
            let _ = prepare(&img, Resize::ShortSide(48), 16);
        }
    });
}
