//! Hostile and broken weight files: each must give a clear error, never a panic.

use std::io::Write;

use dino_model::import::pth::read_pth;
use dino_model::import::{Which, import_bytes};
use dino_model::{ModelError, read_checkpoint};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// A torch-style zip archive around an arbitrary pickle.
fn archive(pickle: &[u8]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pickle).unwrap();
    zip.finish().unwrap();
    buf.into_inner()
}

#[test]
fn pickle_calling_os_system_is_refused_not_executed() {
    // cos\nsystem\n(S'touch /tmp/pwned'\ntR. : the classic code-execution pickle.
    let evil = b"\x80\x02cos\nsystem\nq\x00X\x10\x00\x00\x00touch /tmp/pwnedq\x01\x85q\x02Rq\x03.";
    let err = read_pth(&archive(evil)).unwrap_err().to_string();
    assert!(err.contains("refusing to load `os.system`"), "{err}");
}

#[test]
fn builtins_eval_via_stack_global_is_refused() {
    let evil = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x041+1\x85R.";
    let err = read_pth(&archive(evil)).unwrap_err().to_string();
    assert!(err.contains("builtins.eval"), "{err}");
}

#[test]
fn unknown_opcodes_and_truncated_pickles_are_errors() {
    assert!(
        read_pth(&archive(b"\x80\x02i__main__\nX\n."))
            .unwrap_err()
            .to_string()
            .contains("opcode")
    );
    assert!(
        read_pth(&archive(b"\x80\x02}q\x00(X\x05\x00"))
            .unwrap_err()
            .to_string()
            .contains("ends early")
    );
    assert!(
        read_pth(&archive(b"\x80\x02h\x07."))
            .unwrap_err()
            .to_string()
            .contains("memo")
    );
}

#[test]
fn truncated_pth_is_an_error() {
    let bytes = fixture("official_checkpoint.pth");
    for cut in [10, bytes.len() / 3, bytes.len() - 30] {
        let r = import_bytes(&bytes[..cut], Which::Teacher);
        assert!(r.is_err(), "cut at {cut} was accepted");
    }
}

#[test]
fn legacy_and_random_files_are_explained() {
    let legacy = [0x80u8, 0x02, 0x8a, 0x0a, 0x6c, 0xfc];
    assert!(
        read_pth(&legacy)
            .unwrap_err()
            .to_string()
            .contains("legacy")
    );
    let err = import_bytes(b"hello world, not weights", Which::Teacher).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::Safetensors { .. } | ModelError::UnknownFormat { .. }
        ),
        "{err}"
    );
    assert!(import_bytes(&[], Which::Teacher).is_err());
}

#[test]
fn tensor_reading_past_its_storage_is_refused() {
    // A tensor claiming 1000 elements from a 1-element storage.
    let pickle = b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06K\x01tq\x07QK\x00M\xe8\x03\x85q\x08K\x01\x85q\x09\x89)tq\x0aRq\x0bs.";
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/data/0", opts).unwrap();
    zip.write_all(&1.0f32.to_le_bytes()).unwrap();
    zip.finish().unwrap();
    let err = read_pth(&buf.into_inner()).unwrap_err().to_string();
    assert!(err.contains("reads past its storage"), "{err}");
}

#[test]
fn pth_with_wrong_shapes_names_the_tensor() {
    // An official backbone whose keys are fine but whose pos_embed is not a square grid.
    let mut map = read_pth(&fixture("official_backbone.pth")).unwrap();
    let pos = map.get_mut("pos_embed").unwrap();
    pos.shape = vec![1, pos.shape[1] - 1, pos.shape[2]];
    pos.data.truncate(pos.shape.iter().product());
    let config = dino_model::import::infer_config(&map, 1e-6);
    assert!(config.unwrap_err().to_string().contains("pos_embed"));
}

#[test]
fn a_pth_that_is_not_a_vit_is_explained() {
    // A valid archive with one unrelated tensor.
    let pickle = b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06K\x01tq\x07QK\x00K\x01\x85q\x08K\x01\x85q\x09\x89)tq\x0aRq\x0bs.";
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/data/0", opts).unwrap();
    zip.write_all(&1.0f32.to_le_bytes()).unwrap();
    zip.finish().unwrap();
    let bytes = buf.into_inner();
    assert_eq!(read_pth(&bytes).unwrap()["w"].data, vec![1.0]);
    let err = import_bytes(&bytes, Which::Teacher)
        .unwrap_err()
        .to_string();
    assert!(err.contains("patch_embed.proj.weight"), "{err}");
}

#[test]
fn safetensors_with_a_huge_header_length_is_an_error() {
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    assert!(read_checkpoint(&bytes).is_err());
    assert!(import_bytes(&bytes, Which::Teacher).is_err());
}

/// A safetensors file whose header length is 128 mod 256 starts with the byte 0x80, like an
/// old pickle; it must still be read as safetensors (found with a ViT-S/16 import).
#[test]
fn safetensors_whose_first_byte_is_0x80_still_imports() {
    let imported = import_bytes(&fixture("official_backbone.pth"), Which::Teacher).unwrap();
    for pad in 0..512 {
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("pad".to_string(), "x".repeat(pad));
        let bytes = dino_model::checkpoint::write_checkpoint(
            &imported.config,
            dino_model::checkpoint::KIND_MODEL,
            &imported.tensors,
            &meta,
        )
        .unwrap();
        if bytes[0] == 0x80 {
            let again = import_bytes(&bytes, Which::Teacher).unwrap();
            assert_eq!(again.tensors.len(), imported.tensors.len());
            return;
        }
    }
    panic!("no padding gave a header length of 128 mod 256");
}
