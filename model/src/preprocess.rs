//! Image decoding and inference preprocessing: resize, crop to a multiple of the patch size,
//! normalisation (ImageNet's statistics unless the weights say otherwise).

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage, imageops::FilterType};

use crate::config::{MAX_IMAGE_SIDE, Normalization};
use crate::error::{ModelError, Result};

/// Largest decoder allocation in bytes.
pub const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;

/// Largest image accepted, in pixels (40 megapixels: a 7300 × 5480 photo); its RGB copy and
/// a rotated one stay within 256 MiB.
pub const MAX_PIXELS: u64 = 40_000_000;

/// Decodes an image (PNG, JPEG, WebP, BMP, GIF's first frame, TIFF) from bytes with size limits, to 8-bit RGB.
/// Grayscale, alpha, 16-bit and CMYK images are converted (alpha is dropped) and the EXIF
/// orientation is applied. What decoding holds at once stays within [`MAX_DECODE_BYTES`]
/// plus an RGB copy: the size is checked before any pixel is decoded.
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
    if reader.format() == Some(image::ImageFormat::Png) {
        return decode_png(bytes);
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
    let (w, h) = decoder.dimensions();
    check_size(w, h, decoder.total_bytes())?;
    // Phone photos store their rotation in EXIF; the maps must align with what people see.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(bad)?;
    // Converted first (the decoded buffer goes as its copy arrives), rotated after: never
    // more than two images' worth at once.
    let mut rgb = DynamicImage::ImageRgb8(img.into_rgb8());
    rgb.apply_orientation(orientation);
    Ok(rgb.into_rgb8())
}

/// Refuses an image above [`MAX_PIXELS`] or whose decoded pixels take more than
/// [`MAX_DECODE_BYTES`], before any pixel is decoded.
fn check_size(w: u32, h: u32, decoded_bytes: u64) -> Result<()> {
    let pixels = u64::from(w) * u64::from(h);
    if pixels > MAX_PIXELS || decoded_bytes > MAX_DECODE_BYTES {
        return Err(ModelError::Image {
            reason: format!(
                "cannot decode image: it is {w} × {h} pixels ({decoded_bytes} bytes decoded); images of up to {} megapixels are read: resize it first",
                MAX_PIXELS / 1_000_000
            ),
        });
    }
    Ok(())
}

/// A PNG as 8-bit RGB, as the image crate would give it: palette and 16-bit samples brought
/// to 8 bits, grey spread to RGB,
/// alpha dropped, the eXIf orientation applied. The ICC profile and text chunks are never
/// decompressed (nothing here uses them, and a few kilobytes of them can inflate to
/// gigabytes).
fn decode_png(bytes: &[u8]) -> Result<RgbImage> {
    let bad = |e: png::DecodingError| ModelError::Image {
        reason: format!("cannot decode image: {e}"),
    };
    let limits = png::Limits {
        bytes: MAX_DECODE_BYTES as usize,
    };
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), limits);
    decoder.set_ignore_iccp_chunk(true);
    decoder.set_ignore_text_chunk(true);
    // EXPAND alone, as the image crate decodes PNGs (palettes and low bit depths to 8 bits);
    // 16-bit samples are rounded to 8 bits below as it rounds them.
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(bad)?;
    let (w, h) = (reader.info().width, reader.info().height);
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
        return Err(ModelError::Image {
            reason: format!(
                "cannot decode image: it is {w} × {h} pixels; sides of up to {MAX_IMAGE_SIDE} are read"
            ),
        });
    }
    let size = reader.output_buffer_size().unwrap_or(usize::MAX);
    check_size(w, h, size as u64)?;
    let orientation = reader
        .info()
        .exif_metadata
        .as_deref()
        .and_then(image::metadata::Orientation::from_exif_chunk)
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(bad)?;
    buf.truncate(frame.buffer_size());
    if frame.bit_depth == png::BitDepth::Sixteen {
        // Big-endian samples; `(v + 128) / 257` is the image crate's rounding to 8 bits.
        buf = buf
            .chunks_exact(2)
            .map(|b| ((u32::from(u16::from_be_bytes([b[0], b[1]])) + 128) / 257) as u8)
            .collect();
    }
    let channels = match frame.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(ModelError::Image {
                reason: "cannot decode image: a palette PNG was not expanded".into(),
            });
        }
    };
    let rgb = if channels == 3 {
        buf
    } else {
        let mut out = Vec::with_capacity(w as usize * h as usize * 3);
        for px in buf.chunks_exact(channels) {
            match channels {
                1 | 2 => out.extend_from_slice(&[px[0]; 3]),
                _ => out.extend_from_slice(&px[..3]),
            }
        }
        out
    };
    let img = RgbImage::from_raw(w, h, rgb).ok_or_else(|| ModelError::Image {
        reason: "cannot decode image: the PNG's pixels do not fill its size".into(),
    })?;
    let mut img = DynamicImage::ImageRgb8(img);
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
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

    /// Our PNG path gives what the image crate gives, for every PNG colour type and depth.
    #[test]
    fn pngs_decode_as_the_image_crate_decodes_them() {
        use image::{ImageBuffer, Luma, LumaA, Rgb, Rgba};
        let (w, h) = (7u32, 5u32);
        let v8 = |x: u32, y: u32, c: u32| ((x * 37 + y * 91 + c * 53) % 256) as u8;
        let v16 = |x: u32, y: u32, c: u32| ((x * 9173 + y * 20011 + c * 4099) % 65536) as u16;
        let images: Vec<DynamicImage> = vec![
            ImageBuffer::from_fn(w, h, |x, y| Luma([v8(x, y, 0)])).into(),
            ImageBuffer::from_fn(w, h, |x, y| Luma([v16(x, y, 0)])).into(),
            ImageBuffer::from_fn(w, h, |x, y| LumaA([v8(x, y, 0), v8(x, y, 1)])).into(),
            ImageBuffer::from_fn(w, h, |x, y| Rgb([v8(x, y, 0), v8(x, y, 1), v8(x, y, 2)])).into(),
            ImageBuffer::from_fn(w, h, |x, y| Rgb([v16(x, y, 0), v16(x, y, 1), v16(x, y, 2)]))
                .into(),
            ImageBuffer::from_fn(w, h, |x, y| {
                Rgba([v8(x, y, 0), v8(x, y, 1), v8(x, y, 2), v8(x, y, 3)])
            })
            .into(),
        ];
        for img in images {
            let mut png = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .unwrap();
            let theirs = image::load_from_memory(&png).unwrap().to_rgb8();
            assert_eq!(decode_image(&png).unwrap(), theirs, "{:?}", img.color());
        }
    }

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
