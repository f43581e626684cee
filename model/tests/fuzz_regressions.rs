//! Replays the fuzzers' seeds and every input that once crashed, hung or blew up memory in a
//! fuzz target (`fuzz/regressions/<target>/`) through the same code the targets call, so a
//! fixed bug stays fixed without running the fuzzer.

use std::path::PathBuf;

use dino_model::import::{Which, check_tensors, import_bytes};
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
        let _ = dino_model::pth::read_pth(b);
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
fn pickle_inside_an_archive() {
    // The pickle target wraps its input in an archive; the seeds here are raw pickles of
    // torch.save archives, which must also be refused or read without a panic on their own.
    replay("pickle", 3, |b| {
        let _ = dino_model::pth::read_pth(b);
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
