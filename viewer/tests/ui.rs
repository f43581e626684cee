//! The viewer driven like a user would, by role and label, with egui_kittest.

use std::time::{Duration, Instant};

use burn::tensor::Device;
use dino_viewer::ViewerApp;
use dino_viewer::views::View;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../model/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn harness() -> Harness<'static, ViewerApp> {
    Harness::builder()
        .with_size([1200.0, 800.0])
        .build_eframe(|_cc| ViewerApp::new(Device::flex(), "CPU (flex)"))
}

/// Steps the UI until `done` holds (background jobs finish on their own threads).
fn step_until(h: &mut Harness<'static, ViewerApp>, what: &str, done: impl Fn(&ViewerApp) -> bool) {
    step_to(h, what, done);
    h.step();
}

/// Steps until `done` holds and no further: the frame that met it has already started the
/// next job, which a fast machine finishes before one more frame (the preview would be gone).
fn step_to(h: &mut Harness<'static, ViewerApp>, what: &str, done: impl Fn(&ViewerApp) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}; error: {:?}",
            h.state().error
        );
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The viewer with the chelsea sample and the official DINO fixture opening at `resolution`
/// (its first analysis still to come).
fn with_official_model(resolution: u32) -> Harness<'static, ViewerApp> {
    let mut h = harness();
    h.get_by_label("chelsea").click();
    h.step();
    assert_eq!(h.state().images.len(), 1);
    let ctx = h.ctx.clone();
    h.state_mut().resolution = resolution;
    h.state_mut().open_checkpoint(
        &ctx,
        "official_checkpoint.pth".into(),
        fixture("official_checkpoint.pth"),
    );
    h
}

#[test]
fn load_checkpoint_and_sample_then_switch_views_layers_and_threshold() {
    let mut h = with_official_model(64);
    step_until(&mut h, "the first analysis", |s| s.analysis.is_some());
    let a = h.state().analysis.clone().unwrap();
    assert_eq!((a.heads, a.grid_h, a.grid_w, a.request.layer), (2, 4, 4, 1));
    assert!(
        h.state().status.contains("2 heads of block 1"),
        "{}",
        h.state().status
    );
    // Every head is on screen with its caption.
    h.get_by_label("head 0");
    h.get_by_label("head 1");

    h.get_by_label("Masks").click();
    h.step();
    assert_eq!(h.state().view, View::Masks);
    h.get_by_label("head 0, 60 % mass");
    h.state_mut().settings.threshold = 0.3;
    h.step();
    h.get_by_label("head 0, 30 % mass");

    h.get_by_label("Segmentation").click();
    h.step();
    h.get_by_label("kept by at least half of the heads");
    h.get_by_label("PCA").click();
    h.step();
    h.get_by_label("PCA of patch features");

    // Layer 0 triggers a new analysis of block 0.
    h.state_mut().layer = Some(0);
    step_until(&mut h, "the block-0 analysis", |s| {
        s.analysis.as_ref().is_some_and(|a| a.request.layer == 0)
    });

    h.get_by_label("Patch query").click();
    h.state_mut().settings.query = 5;
    h.step();
    h.get_by_label("head 1, from patch (1, 1)");
}

#[test]
fn bad_files_show_an_error_and_the_app_keeps_working() {
    let mut h = harness();
    let ctx = h.ctx.clone();
    h.state_mut()
        .open_file(&ctx, "notes.txt".into(), b"just some text".to_vec());
    step_until(&mut h, "the checkpoint error", |s| s.error.is_some());
    assert!(
        h.state().error.as_ref().unwrap().contains("notes.txt"),
        "{:?}",
        h.state().error
    );
    h.get_by_label("Dismiss").click();
    h.step();
    assert!(h.state().error.is_none());
    // A truncated PNG is refused as an image.
    let png = {
        let mut b = Vec::new();
        image::RgbImage::new(10, 10)
            .write_to(&mut std::io::Cursor::new(&mut b), image::ImageFormat::Png)
            .unwrap();
        b.truncate(b.len() / 2);
        b
    };
    h.state_mut().open_file(&ctx, "half.png".into(), png);
    h.step();
    assert!(h.state().error.as_ref().unwrap().contains("half.png"));
    assert!(h.state().images.is_empty());
    h.get_by_label("coffee").click();
    h.step();
    assert_eq!(h.state().images.len(), 1);
}

/// An error on screen (here a dropped file that is no checkpoint) does not hold back the next
/// analysis: a new block is computed while the message is still shown, undismissed.
#[test]
fn an_error_on_screen_does_not_stop_the_next_analysis() {
    let mut h = with_official_model(64);
    step_until(&mut h, "the first analysis", |s| s.analysis.is_some());
    let ctx = h.ctx.clone();
    h.state_mut()
        .open_file(&ctx, "notes.txt".into(), b"just some text".to_vec());
    step_until(&mut h, "the file error", |s| s.error.is_some());
    h.state_mut().layer = Some(0);
    step_until(&mut h, "the block-0 analysis behind the error", |s| {
        s.analysis.as_ref().is_some_and(|a| a.request.layer == 0)
    });
    assert!(h.state().error.is_some(), "the error stays until dismissed");
}

/// A Hub model's two files opened together, config first or weights first as a file manager
/// hands them over: the config is kept for the weights, never read as a checkpoint.
#[test]
fn a_config_json_opened_with_its_weights_describes_them() {
    let hf = format!(
        "{}/../model/tests/fixtures/families/v2reg_hf",
        env!("CARGO_MANIFEST_DIR")
    );
    let read = |f: &str| std::fs::read(format!("{hf}/{f}")).unwrap();
    let mut h = harness();
    let ctx = h.ctx.clone();
    h.state_mut()
        .open_file(&ctx, "config.json".into(), read("config.json"));
    h.step();
    assert!(h.state().error.is_none(), "{:?}", h.state().error);
    assert!(h.state().status.contains("config.json kept"));
    h.state_mut()
        .open_file(&ctx, "model.safetensors".into(), read("model.safetensors"));
    step_until(&mut h, "the model", |s| s.model.is_some());
    assert!(h.state().error.is_none(), "{:?}", h.state().error);
    // An absurd config is read as the next weights' config, and named when they fail.
    h.state_mut().open_file(
        &ctx,
        "config.json".into(),
        br#"{"model_type": "dinov2", "hidden_size": 1000000000}"#.to_vec(),
    );
    h.state_mut()
        .open_file(&ctx, "model.safetensors".into(), read("model.safetensors"));
    step_until(&mut h, "the config error", |s| s.error.is_some());
}

#[test]
fn views_render_one_tile_per_head_with_the_image_size() {
    let model = dino_viewer::infer::load_model(
        "fixture",
        &fixture("official_checkpoint.pth"),
        &Device::flex(),
    )
    .unwrap();
    let img = image::RgbImage::from_fn(100, 80, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])
    });
    let req = dino_viewer::infer::Request {
        image: 0,
        layer: 1,
        resolution: 64,
    };
    let a = dino_viewer::infer::analyse(model.model.as_ref().unwrap(), &img, req, &Device::flex())
        .unwrap();
    let s = dino_viewer::views::Settings {
        threshold: 0.6,
        alpha: 0.6,
        query: 0,
    };
    for view in View::ALL {
        let tiles = dino_viewer::views::render(&a, view, &s);
        assert!(!tiles.is_empty(), "{view:?}");
        for (caption, t) in &tiles {
            assert_eq!(t.dimensions(), (64, 64), "{view:?} {caption}");
        }
    }
    assert_eq!(dino_viewer::views::render(&a, View::Heads, &s).len(), 2);
    // Heat maps differ from the plain image where attention is high.
    let heads = dino_viewer::views::render(&a, View::Heads, &s);
    assert_ne!(heads[0].1, a.display);
}

#[test]
fn a_dinov3_model_shows_its_storage_tokens_in_the_registers_view() {
    let mut h = harness();
    h.get_by_label("chelsea").click();
    h.step();
    let ctx = h.ctx.clone();
    h.state_mut().resolution = 64;
    h.state_mut()
        .open_checkpoint(&ctx, "v3.pth".into(), fixture("families/v3.pth"));
    step_until(&mut h, "the DINOv3 analysis", |s| s.analysis.is_some());
    let a = h.state().analysis.clone().unwrap();
    // CLS + 4 storage tokens before the 4 x 4 patches; PCA sees the patches only.
    assert_eq!((a.prefix, a.grid_h, a.grid_w), (5, 4, 4));
    assert_eq!((a.pca.len(), a.dim), (16, 32));
    h.get_by_label_contains("DINOv3 ViT-32x3/16, 4 storage tokens");
    h.get_by_label("Registers").click();
    h.step();
    assert_eq!(h.state().view, View::Registers);
    h.get_by_label("CLS, mean of heads");
    h.get_by_label("register 4, mean of heads");
}

#[test]
fn a_new_image_or_block_shows_a_quick_preview_first_then_the_chosen_size() {
    let mut h = with_official_model(320);
    step_to(&mut h, "the first analysis", |s| s.analysis.is_some());
    let first = h.state().analysis.clone().unwrap();
    assert_eq!(first.request.resolution, dino_viewer::app::PREVIEW_PX);
    assert_eq!((first.grid_h, first.grid_w), (14, 14));
    step_until(&mut h, "the refined analysis", |s| {
        s.analysis
            .as_ref()
            .is_some_and(|a| a.request.resolution == 320)
    });
    assert_eq!(h.state().analysis.as_ref().unwrap().grid_h, 20);
    // Another block starts over with a preview; the finished one stays refined.
    h.state_mut().layer = Some(0);
    step_to(&mut h, "the block-0 preview", |s| {
        s.analysis.as_ref().is_some_and(|a| a.request.layer == 0)
    });
    assert_eq!(
        h.state().analysis.as_ref().unwrap().request.resolution,
        dino_viewer::app::PREVIEW_PX
    );
    step_until(&mut h, "the refined block-0 analysis", |s| {
        s.analysis
            .as_ref()
            .is_some_and(|a| a.request.layer == 0 && a.request.resolution == 320)
    });
    assert_eq!(h.state().next_request(), h.state().wanted());
}
