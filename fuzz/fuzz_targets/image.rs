//! Image decoding (every format the viewer and trainer accept, with the decompression-bomb
//! limits and EXIF orientation) followed by the viewer's and trainer's preprocessing.
#![no_main]

use dino_model::preprocess::{Resize, decode_image, prepare};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = decode_image(data) {
        let _ = prepare(&img, Resize::Square(32), 8);
        let _ = prepare(&img, Resize::ShortSide(48), 16);
    }
});
