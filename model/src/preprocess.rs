//! Image decoding and inference preprocessing: resize, crop to a multiple of the patch size,
//! normalisation (ImageNet's statistics unless the weights say otherwise).

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage, imageops::FilterType};

use crate::config::Normalization;
use crate::error::{ModelError, Result};

/// Largest accepted image side in pixels: a guard against decompression bombs.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Largest decoder allocation in bytes.
pub const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;

/// Decodes an image (PNG, JPEG, WebP, BMP, GIF's first frame, TIFF) from bytes with size limits, to 8-bit RGB.
/// Grayscale, alpha, 16-bit and CMYK images are converted (alpha is dropped) and the EXIF
/// orientation is applied.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage> {
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ModelError::Image {
            reason: format!("cannot read image: {e}"),
        })?;
    if reader.format().is_none() {
        return Err(ModelError::Image {
            reason: "not a recognised image (expected PNG, JPEG, WebP, BMP, GIF or TIFF)".into(),
        });
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let bad = |e: image::ImageError| ModelError::Image {
        reason: format!("cannot decode image: {e}"),
    };
    let mut decoder = reader.into_decoder().map_err(bad)?;
    // Phone photos store their rotation in EXIF; the maps must align with what people see.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(bad)?;
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

/// How to bring an image to the network's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Resize to `n × n` (the official `--image_size 480` default, which is `(480, 480)`).
    Square(u32),
    /// Resize so the shorter side is `n`, keeping the aspect ratio (torchvision `Resize(n)`).
    ShortSide(u32),
    /// Keep the size.
    None,
}

/// A network-ready image.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Normalised pixels, `[3, height, width]` row-major.
    pub chw: Vec<f32>,
    /// Height in pixels (a multiple of the patch size).
    pub height: usize,
    /// Width in pixels (a multiple of the patch size).
    pub width: usize,
    /// The resized and cropped RGB image the maps align with.
    pub display: RgbImage,
}

/// Resizes, crops to a multiple of `patch` (dropping the right/bottom remainder, as the
/// official script does) and normalises with the ImageNet statistics.
pub fn prepare(img: &RgbImage, resize: Resize, patch: usize) -> Result<Prepared> {
    prepare_normalized(img, resize, patch, Normalization::IMAGENET)
}

/// As [`prepare`], normalising with the statistics the weights were trained with.
pub fn prepare_normalized(
    img: &RgbImage,
    resize: Resize,
    patch: usize,
    norm: Normalization,
) -> Result<Prepared> {
    let (w, h) = img.dimensions();
    let (tw, th) = match resize {
        Resize::Square(n) => (n, n),
        Resize::ShortSide(n) => {
            if w <= h {
                (n, ((h as u64 * n as u64) / w.max(1) as u64) as u32)
            } else {
                (((w as u64 * n as u64) / h.max(1) as u64) as u32, n)
            }
        }
        Resize::None => (w, h),
    };
    let p = patch as u32;
    if tw < p || th < p || w == 0 || h == 0 {
        return Err(ModelError::Image {
            reason: format!(
                "image of {w}x{h} pixels (resized to {tw}x{th}) is smaller than one {p}x{p} patch"
            ),
        });
    }
    let resized = if (tw, th) == (w, h) {
        img.clone()
    } else {
        image::imageops::resize(img, tw, th, FilterType::Triangle)
    };
    let (cw, ch) = (tw - tw % p, th - th % p);
    let display = image::imageops::crop_imm(&resized, 0, 0, cw, ch).to_image();
    Ok(Prepared {
        chw: normalize_chw_with(&display, norm),
        height: ch as usize,
        width: cw as usize,
        display,
    })
}

/// ImageNet-normalised `[3, h, w]` values of an RGB image.
pub fn normalize_chw(img: &RgbImage) -> Vec<f32> {
    normalize_chw_with(img, Normalization::IMAGENET)
}

/// `[3, h, w]` values of an RGB image normalised with `norm`.
pub fn normalize_chw_with(img: &RgbImage, norm: Normalization) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0.0f32; 3 * plane];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 / 255.0 - norm.mean[c]) / norm.std[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_to_patch_multiples() {
        let img = RgbImage::from_pixel(50, 37, image::Rgb([255, 0, 0]));
        let p = prepare(&img, Resize::None, 16).unwrap();
        assert_eq!((p.width, p.height), (48, 32));
        assert_eq!(p.chw.len(), 3 * 48 * 32);
        assert!((p.chw[0] - (1.0 - 0.485) / 0.229).abs() < 1e-5);
        let p = prepare(&img, Resize::Square(64), 16).unwrap();
        assert_eq!((p.width, p.height), (64, 64));
    }

    #[test]
    fn too_small_and_garbage_are_errors() {
        let img = RgbImage::new(8, 8);
        assert!(
            prepare(&img, Resize::None, 16)
                .unwrap_err()
                .to_string()
                .contains("smaller than one")
        );
        assert!(decode_image(b"definitely not an image").is_err());
        assert!(decode_image(&[]).is_err());
    }

    #[test]
    fn exif_rotation_is_applied() {
        // 16x8 JPEG from Pillow, left half blue, with EXIF orientation 6 (rotate 90° clockwise).
        let jpeg = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/exif_rotated.jpg"
        ))
        .unwrap();
        let img = decode_image(&jpeg).unwrap();
        assert_eq!(
            img.dimensions(),
            (8, 16),
            "the EXIF rotation was not applied"
        );
        // After a clockwise turn the blue (former left) half is on top.
        let top = img.get_pixel(4, 2).0;
        assert!(top[2] > 150 && top[0] < 90, "top is {top:?}");
    }

    #[test]
    fn sixteen_bit_and_cmyk_images_decode_to_rgb8() {
        let img16 = image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(
            3,
            3,
            image::Rgb([65535u16, 32768, 0]),
        );
        let mut buf = Vec::new();
        image::DynamicImage::ImageRgb16(img16)
            .write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(decode_image(&buf).unwrap().get_pixel(1, 1).0, [255, 128, 0]);
        // A CMYK JPEG (pure red) written by Pillow.
        let cmyk = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/cmyk.jpg"
        ))
        .unwrap();
        let rgb = decode_image(&cmyk).unwrap();
        assert_eq!(rgb.dimensions(), (12, 8));
        let p = rgb.get_pixel(6, 4).0;
        assert!(
            p[0] > 200 && p[1] < 60 && p[2] < 60,
            "CMYK red decoded as {p:?}"
        );
    }

    #[test]
    fn decompression_bombs_are_refused() {
        // A valid PNG header claiming 100000 x 100000 pixels.
        let img = RgbImage::new(1, 1);
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32fast::hash(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_image(&png).unwrap_err().to_string();
        assert!(
            err.contains("cannot decode") || err.contains("limit"),
            "{err}"
        );
    }

    #[test]
    fn decodes_gray_and_alpha_pngs() {
        let mut buf = Vec::new();
        let gray = image::GrayAlphaImage::from_pixel(3, 2, image::LumaA([100, 7]));
        gray.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
            .unwrap();
        let rgb = decode_image(&buf).unwrap();
        assert_eq!(rgb.dimensions(), (3, 2));
        assert_eq!(rgb.get_pixel(0, 0).0, [100, 100, 100]);
    }

    #[test]
    fn gif_first_frame_and_tiff_decode() {
        use image::codecs::gif::GifEncoder;
        use image::{Delay, Frame, RgbaImage};
        // An animated GIF whose frames differ: the first one is what users expect to see.
        let mut gif = Vec::new();
        {
            let mut enc = GifEncoder::new(&mut gif);
            for colour in [[200u8, 40, 40, 255], [40, 40, 200, 255]] {
                let frame = RgbaImage::from_pixel(6, 4, image::Rgba(colour));
                enc.encode_frame(Frame::from_parts(
                    frame,
                    0,
                    0,
                    Delay::from_numer_denom_ms(100, 1),
                ))
                .unwrap();
            }
        }
        let rgb = decode_image(&gif).unwrap();
        assert_eq!(rgb.dimensions(), (6, 4));
        let p = rgb.get_pixel(2, 2).0;
        assert!(p[0] > 150 && p[2] < 100, "first frame expected, got {p:?}");

        // A 16-bit grayscale TIFF, as microscopes write them.
        let tiff_img = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(5, 3, |x, _| {
            image::Luma([x as u16 * 16000])
        });
        let mut tiff = Vec::new();
        tiff_img
            .write_to(
                &mut std::io::Cursor::new(&mut tiff),
                image::ImageFormat::Tiff,
            )
            .unwrap();
        let rgb = decode_image(&tiff).unwrap();
        assert_eq!(rgb.dimensions(), (5, 3));
        assert!(rgb.get_pixel(4, 0).0[0] > rgb.get_pixel(0, 0).0[0]);
    }
}
