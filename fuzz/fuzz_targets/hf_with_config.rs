//! The Hugging Face importer with a config.json (Dinov2Model, Dinov2WithRegistersModel,
//! DINOv3ViTModel): the input is a little-endian u16 length, that many bytes of config.json,
//! then the weight file.
#![no_main]

use dino_model::import::{ImportOptions, import_with};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = u16::from_le_bytes([data[0], data[1]]) as usize;
    let rest = &data[2..];
    let (config, weights) = rest.split_at(n.min(rest.len()));
    let options = ImportOptions {
        hf_config: Some(String::from_utf8_lossy(config).into_owned()),
        ..ImportOptions::default()
    };
    let _ = import_with(weights, &options);
});
