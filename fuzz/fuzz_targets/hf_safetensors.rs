//! The weight importer on safetensors input (Hugging Face ViTModel, timm and our own
//! layouts), including architecture inference from tensor shapes.
#![no_main]

use dino_model::import::{Which, import_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = import_bytes(data, Which::Teacher);
});
