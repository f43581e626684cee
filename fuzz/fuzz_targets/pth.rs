//! The `.pth` importer (zip archive + restricted pickle VM + storages) on arbitrary bytes,
//! for both the teacher and the student of a training checkpoint.
#![no_main]

use dino_model::import::{Which, import_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dino_model::import::pth::read_pth(data);
    if dino_model::import::pth::is_zip(data) {
        let _ = import_bytes(data, Which::Teacher);
        let _ = import_bytes(data, Which::Student);
    }
});
