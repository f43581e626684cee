//! Our checkpoint reader (safetensors + JSON config) on arbitrary bytes, then the config
//! check against the tensors: errors are fine, panics, hangs and huge allocations are not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ckpt) = dino_model::read_checkpoint(data) {
        if let Some(config) = &ckpt.config {
            let _ = dino_model::import::check_tensors(config, &ckpt.tensors);
        }
    }
});
