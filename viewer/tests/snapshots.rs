//! Snapshot images of every view for a hand-made analysis (two heads with known attention
//! on a 4 x 4 patch grid), compared byte for byte with the PNGs in `tests/snapshots/`.
//! After an intended change of the pictures, regenerate them with
//! `DINOSCOPE_UPDATE_SNAPSHOTS=1 cargo test -p dino-viewer --test snapshots` and look at them.

use std::path::PathBuf;

use dino_viewer::infer::{Analysis, Request};
use dino_viewer::views::{Settings, View, export};

/// Head 0 attends to the top-left 2 x 2 patches, head 1 to the bottom-right ones; patch
/// features vary smoothly so the PCA view has structure. Two register tokens sit between
/// CLS and the patches: nothing attends to them, register 1 attends to one patch (the
/// artefact the registers paper shows), register 2 to the left column. The other views must
/// look exactly as without registers, so their snapshots also prove the columns are skipped.
fn analysis() -> Analysis {
    let (grid, heads, dim, prefix) = (4usize, 2usize, 3usize, 3usize);
    let tokens = prefix + grid * grid;
    let mut attention = vec![0.0f32; heads * tokens * tokens];
    for h in 0..heads {
        for q in 0..tokens {
            let row = &mut attention[(h * tokens + q) * tokens..(h * tokens + q + 1) * tokens];
            for (k, v) in row.iter_mut().enumerate().skip(prefix) {
                let (y, x) = ((k - prefix) / grid, (k - prefix) % grid);
                let hot = match q {
                    1 => y == 1 && x == 2,
                    2 => x == 0,
                    _ if h == 0 => y < 2 && x < 2,
                    _ => y >= 2 && x >= 2,
                };
                *v = if hot { 0.2 } else { 0.2 / 12.0 };
            }
            let sum: f32 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= sum);
        }
    }
    let features = (0..grid * grid)
        .flat_map(|p| {
            let (y, x) = ((p / grid) as f32, (p % grid) as f32);
            [x, y, x * y / 3.0]
        })
        .collect::<Vec<f32>>();
    assert_eq!(features.len(), grid * grid * dim);
    Analysis {
        request: Request {
            image: 0,
            layer: 0,
            resolution: 32,
        },
        display: image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([120 + x as u8 * 3, 90 + y as u8 * 4, 160])
        }),
        grid_h: grid,
        grid_w: grid,
        heads,
        prefix,
        attention,
        pca: dino_model::attention::pca_rgb(&features, grid * grid, dim),
        dim,
        seconds: 0.0,
    }
}

#[test]
fn every_view_matches_its_snapshot() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let update = std::env::var("DINOSCOPE_UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1");
    let a = analysis();
    let s = Settings {
        threshold: 0.6,
        alpha: 0.6,
        query: 5,
    };
    for view in View::ALL {
        let img = export(&a, view, &s);
        let name = format!("{}.png", view.label().to_lowercase().replace(' ', "-"));
        let path = dir.join(&name);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            img.save(&path).unwrap();
            continue;
        }
        let want = image::open(&path)
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (DINOSCOPE_UPDATE_SNAPSHOTS=1 writes it)",
                    path.display()
                )
            })
            .to_rgb8();
        assert!(img == want, "{view:?} differs from {}", path.display());
    }
    // What the snapshots show, in words: head 0's mask keeps its own quadrant undimmed and
    // dims the opposite one; head 1 the other way round.
    let masks = dino_viewer::views::render(&a, View::Masks, &s);
    let (m0, m1) = (&masks[0].1, &masks[1].1);
    let (inside, outside) = ((4, 4), (28, 28));
    assert_eq!(
        m0.get_pixel(inside.0, inside.1),
        a.display.get_pixel(inside.0, inside.1)
    );
    assert_ne!(
        m0.get_pixel(outside.0, outside.1),
        a.display.get_pixel(outside.0, outside.1)
    );
    assert_eq!(
        m1.get_pixel(outside.0, outside.1),
        a.display.get_pixel(outside.0, outside.1)
    );
}
