//! The browser entry point and the few things only a web page needs: the `?checkpoint=`
//! URL, downloads, and a state attribute that tests and scripts can wait for.

use burn::tensor::Device;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::app::{Job, SAMPLES, ViewerApp};

fn js_err(e: wasm_bindgen::JsValue) -> String {
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}

fn document() -> Option<web_sys::Document> {
    web_sys::window()?.document()
}

/// The demo model `web/build.sh` puts beside `index.html`.
pub const DEMO_CHECKPOINT: &str = "demo.safetensors";

/// Sets `data-state` on `<body>` (e.g. `ready:2` once maps for 2 heads are drawn).
pub fn set_state(state: &str) {
    set_body_attribute("data-state", state);
}

/// Sets an attribute of `<body>`, where tests and scripts can read what the canvas shows.
pub fn set_body_attribute(name: &str, value: &str) {
    if let Some(body) = document().and_then(|d| d.body()) {
        let _ = body.set_attribute(name, value);
    }
}

/// The value of a query-string parameter of the page URL.
pub fn query_param(name: &str) -> Option<String> {
    let search = web_sys::window()?.location().search().ok()?;
    web_sys::UrlSearchParams::new_with_str(&search)
        .ok()?
        .get(name)
}

/// Fetches a URL's bytes (same origin), with the HTTP status in the error.
pub async fn fetch_bytes(url: &str) -> Result<Vec<u8>, String> {
    let window = web_sys::window().ok_or("no window")?;
    let resp: web_sys::Response = JsFuture::from(window.fetch_with_str(url))
        .await
        .map_err(js_err)?
        .dyn_into()
        .map_err(js_err)?;
    if !resp.ok() {
        return Err(format!(
            "{url}: HTTP {} {}",
            resp.status(),
            resp.status_text()
        ));
    }
    let buf = JsFuture::from(resp.array_buffer().map_err(js_err)?)
        .await
        .map_err(js_err)?;
    Ok(js_sys::Uint8Array::new(&buf).to_vec())
}

/// Offers `bytes` as a file download named `name`.
pub fn download(name: &str, bytes: &[u8]) -> Result<(), String> {
    let doc = document().ok_or("no document")?;
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes));
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type("image/png");
    let blob =
        web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &opts).map_err(js_err)?;
    let url = web_sys::Url::create_object_url_with_blob(&blob).map_err(js_err)?;
    let a: web_sys::HtmlAnchorElement = doc
        .create_element("a")
        .map_err(js_err)?
        .dyn_into()
        .map_err(|_| "cannot create a download link".to_string())?;
    a.set_href(&url);
    a.set_download(name);
    a.click();
    web_sys::Url::revoke_object_url(&url).map_err(js_err)
}

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
                    let mut app =
                        ViewerApp::new(Device::flex(), "CPU (flex, WebAssembly, page thread)");
                    app.gpu_overlay = crate::gpu_overlay::install(cc);
                    set_body_attribute(
                        "data-overlay",
                        if app.gpu_overlay { "shader" } else { "cpu" },
                    );
                    match crate::worker::Remote::start(app.sender(), cc.egui_ctx.clone()) {
                        Ok(remote) => app.use_worker(remote, "CPU (flex, WebAssembly, worker)"),
                        Err(e) => log::warn!("{e}; computing on the page's thread"),
                    }
                    let (name, bytes) = SAMPLES[0];
                    if let Err(e) = app.add_image(name, bytes) {
                        app.error = Some(e);
                    }
                    // `?checkpoint=` wins; otherwise the small demo model shipped with the
                    // site (a ViT trained from scratch on the synthetic shapes) when present.
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
