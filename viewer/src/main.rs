//! `dino-viewer [--checkpoint <file or Hub name>] [images…]`: the native viewer. The web build's entry
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
    let mut cpu_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--checkpoint" => checkpoint = args.next(),
            "--cpu" => cpu_only = true,
            "-h" | "--help" => {
                println!(
                    "usage: dino-viewer [--checkpoint <model.safetensors|.pth|owner/name on the Hub>] [--cpu] [image …]\n\
                     Runs the network on the GPU through wgpu when a discrete or integrated GPU is present, else on the CPU."
                );
                return Ok(());
            }
            _ => images.push(a),
        }
    }
    let (device, backend) = if cpu_only {
        (burn::tensor::Device::flex(), "CPU (flex)".to_string())
    } else {
        pick_device()
    };
    log::info!("computing on {backend}");
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
            let mut app = ViewerApp::new(device, backend);
            app.gpu_overlay = dino_viewer::gpu_overlay::install(cc);
            if let Some(spec) = checkpoint {
                match dino_viewer::files::checkpoint_files(&spec) {
                    Ok(files) => {
                        for (name, bytes) in files {
                            if name.ends_with(".json") {
                                app.open_file(&cc.egui_ctx, name, bytes);
                            } else {
                                app.open_checkpoint(&cc.egui_ctx, name, bytes);
                            }
                        }
                    }
                    Err(e) => app.error = Some(e),
                }
            }
            for path in images {
                match dino_viewer::files::read_file(path.as_ref()) {
                    Ok(bytes) => app.open_file(&cc.egui_ctx, path.clone(), bytes),
                    Err(e) => app.error = Some(e),
                }
            }
            Ok(Box::new(app))
        }),
    )
}

/// A real GPU through wgpu (discrete first, then integrated), else burn's CPU backend.
/// Software adapters such as lavapipe are skipped: the CPU backend is faster than them.
#[cfg(not(target_arch = "wasm32"))]
fn pick_device() -> (burn::tensor::Device, String) {
    use burn::tensor::{Device, DeviceKind, Tensor};
    use dino_model::gpu::GpuKind;
    // Only kinds wgpu lists are tried: asking burn for a missing one panics on its device
    // runner thread, which logs a warning even when the panic is caught.
    let gpus = dino_model::gpu::hardware_gpus();
    for (want, kind, name) in [
        (
            GpuKind::Discrete,
            DeviceKind::DiscreteGpu(0),
            "GPU (wgpu, discrete)",
        ),
        (
            GpuKind::Integrated,
            DeviceKind::IntegratedGpu(0),
            "GPU (wgpu, integrated)",
        ),
    ] {
        if !gpus.iter().any(|(k, _)| *k == want) {
            continue;
        }
        let device = Device::wgpu(kind);
        // A listed adapter can still fail to open (driver trouble); probe quietly.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let d = device.clone();
        let ok = std::panic::catch_unwind(move || Tensor::<1>::zeros([1], &d).into_data()).is_ok();
        std::panic::set_hook(hook);
        if ok {
            return (device, name.to_string());
        }
    }
    (burn::tensor::Device::flex(), "CPU (flex)".to_string())
}

#[cfg(target_arch = "wasm32")]
fn main() {
    dino_viewer::web::start();
}
