//! The browser entry point: starts the app on the page's canvas, with the compute worker,
//! the first sample image and the model the URL names (`?model=`, `?checkpoint=`) or the
//! site's demo model. Everything else a page needs is in `browser`.

use burn::tensor::Device;
use wasm_bindgen::JsCast;

use crate::app::{SAMPLES, ViewerApp};
use crate::browser::{
    document, fetch_bytes, js_err, open_hub_model, query_param, set_body_attribute, set_state,
};
use crate::job::Job;

/// The demo model `web/build.sh` puts beside `index.html`.
pub const DEMO_CHECKPOINT: &str = "demo.safetensors";

/// Starts the app on `<canvas id="the_canvas_id">`, loading `?checkpoint=` if given and the
/// first sample image so the first screen shows something.
pub fn start() {
    eframe::WebLogger::init(log::LevelFilter::Info).ok();
    wasm_bindgen_futures::spawn_local(async {
        let Some(doc) = document() else { return };
        let Some(canvas) = doc
            .get_element_by_id("the_canvas_id")
            .and_then(|e| e.dyn_into::<web_sys::HtmlCanvasElement>().ok())
        else {
            log::error!("the page has no <canvas id=\"the_canvas_id\">");
            return;
        };
        // egui draws with WebGL2, which every browser has; WebGPU, where present, is left to
        // the network in the compute worker.
        let mut options = eframe::WebOptions::default();
        if let eframe::egui_wgpu::WgpuSetup::CreateNew(setup) = &mut options.wgpu_options.wgpu_setup
        {
            setup.instance_descriptor.backends = eframe::wgpu::Backends::GL;
        }
        let result = eframe::WebRunner::new()
            .start(
                canvas,
                options,
                Box::new(|cc| {
                    let mut app = ViewerApp::new(
                        Device::flex(),
                        crate::infer::wasm_cpu_backend("page thread"),
                    );
                    app.gpu_overlay = crate::gpu_overlay::install(cc);
                    set_body_attribute(
                        "data-overlay",
                        if app.gpu_overlay { "shader" } else { "cpu" },
                    );
                    match crate::worker::Remote::start(app.sender(), cc.egui_ctx.clone()) {
                        Ok(remote) => {
                            app.use_worker(remote, crate::infer::wasm_cpu_backend("worker"))
                        }
                        Err(e) => log::warn!("{e}; computing on the page's thread"),
                    }
                    let (name, bytes) = SAMPLES[0];
                    if let Err(e) = app.add_image(name, bytes) {
                        app.error = Some(e);
                    }
                    // `?view=` opens a view by its label ("registers", "patch-query", …).
                    if let Some(v) = query_param("view") {
                        let found = crate::views::View::ALL
                            .into_iter()
                            .find(|x| x.label().to_lowercase().replace(' ', "-") == v);
                        if let Some(view) = found {
                            app.view = view;
                        }
                    }
                    // `?size=` sets the input side (rounded down to the patch by the app).
                    if let Some(px) = query_param("size")
                        .and_then(|v| v.parse::<u32>().ok())
                        .filter(|px| (16..=2048).contains(px))
                    {
                        app.resolution = px;
                    }
                    // `?model=<owner/name>` fetches a Hub repository (shareable links for
                    // a class); `?checkpoint=` a file; otherwise the small demo model
                    // shipped with the site (a ViT trained from scratch on the synthetic
                    // shapes) when present.
                    if let Some(repo) = query_param("model") {
                        app.loading_model = true;
                        open_hub_model(&repo, app.sender(), cc.egui_ctx.clone());
                        return Ok(Box::new(app));
                    }
                    let (url, demo) = match query_param("checkpoint") {
                        Some(url) => (url, false),
                        None => (DEMO_CHECKPOINT.to_string(), true),
                    };
                    let (tx, ctx) = (app.sender(), cc.egui_ctx.clone());
                    if !demo {
                        app.status = format!("Fetching {url}…");
                    }
                    wasm_bindgen_futures::spawn_local(async move {
                        let name = url.rsplit('/').next().unwrap_or(&url).to_string();
                        match fetch_bytes(&url).await {
                            Err(e) if demo => {
                                log::info!(
                                    "no demo model on this site ({e}); waiting for a checkpoint"
                                );
                                set_state("no-checkpoint");
                            }
                            result => {
                                let _ = tx.send(Job::File(name, result));
                            }
                        }
                        ctx.request_repaint();
                    });
                    Ok(Box::new(app))
                }),
            )
            .await;
        if let Some(loading) = doc.get_element_by_id("loading") {
            match result {
                Ok(()) => loading.remove(),
                Err(e) => {
                    loading.set_inner_html(&format!("The viewer could not start: {}", js_err(e)))
                }
            }
        }
        set_state("started");
    });
}
