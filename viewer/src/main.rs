//! `dino-viewer [--checkpoint <file>] [images…]`: the native viewer. The web build's entry
//! point is `web::start`.

#[cfg(not(target_arch = "wasm32"))]
fn main() -> eframe::Result {
    use dino_viewer::ViewerApp;
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .filter_module("wgpu_core", log::LevelFilter::Warn)
        .filter_module("wgpu_hal", log::LevelFilter::Warn)
        .filter_module("naga", log::LevelFilter::Warn)
        .init();
    let mut checkpoint = None;
    let mut images = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--checkpoint" => checkpoint = args.next(),
            "-h" | "--help" => {
                println!("usage: dino-viewer [--checkpoint <model.safetensors|.pth>] [image …]");
                return Ok(());
            }
            _ => images.push(a),
        }
    }
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size([1280.0, 860.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "dinoscope",
        options,
        Box::new(move |cc| {
            let mut app = ViewerApp::new(burn::tensor::Device::flex(), "CPU (flex)");
            if let Some(path) = checkpoint {
                match std::fs::read(&path) {
                    Ok(bytes) => app.open_checkpoint(&cc.egui_ctx, path.clone(), bytes),
                    Err(e) => app.error = Some(format!("{path}: {e}")),
                }
            }
            for path in images {
                match std::fs::read(&path) {
                    Ok(bytes) => app.open_file(&cc.egui_ctx, path.clone(), bytes),
                    Err(e) => app.error = Some(format!("{path}: {e}")),
                }
            }
            Ok(Box::new(app))
        }),
    )
}

#[cfg(target_arch = "wasm32")]
fn main() {
    dino_viewer::web::start();
}
