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

/// Where the Hugging Face Hub is: `?hub=` (a mirror, or the tests' local server), else
/// huggingface.co.
pub fn hub_host() -> String {
    query_param("hub").unwrap_or_else(|| dino_model::hub::HUB.to_string())
}

/// The Cache API store that keeps downloaded models for the next (offline) visit.
const MODEL_CACHE: &str = "dinoscope-models-v1";

async fn model_cache() -> Option<web_sys::Cache> {
    let caches = web_sys::window()?.caches().ok()?;
    JsFuture::from(caches.open(MODEL_CACHE))
        .await
        .ok()?
        .dyn_into()
        .ok()
}

async fn response_bytes(resp: &web_sys::Response) -> Result<Vec<u8>, String> {
    let buf = JsFuture::from(resp.array_buffer().map_err(js_err)?)
        .await
        .map_err(js_err)?;
    Ok(js_sys::Uint8Array::new(&buf).to_vec())
}

async fn cached(cache: Option<&web_sys::Cache>, url: &str) -> Option<Vec<u8>> {
    let found = JsFuture::from(cache?.match_with_str(url)).await.ok()?;
    let resp: web_sys::Response = found.dyn_into().ok()?;
    response_bytes(&resp).await.ok()
}

async fn store(cache: Option<&web_sys::Cache>, url: &str, bytes: &mut [u8]) {
    let Some(cache) = cache else { return };
    if let Ok(resp) = web_sys::Response::new_with_opt_u8_array(Some(bytes)) {
        // A full quota only costs the next visit a download.
        if let Err(e) = JsFuture::from(cache.put_with_str(url, &resp)).await {
            log::warn!("could not cache {url}: {}", js_err(e));
        }
    }
}

/// Downloads `url` chunk by chunk, reporting `(received, total)`; `Ok(None)` on 404 (the
/// file is not in that repository).
async fn fetch_with_progress(
    url: &str,
    progress: &dyn Fn(u64, Option<u64>),
) -> Result<Option<Vec<u8>>, String> {
    let window = web_sys::window().ok_or("no window")?;
    let resp: web_sys::Response = JsFuture::from(window.fetch_with_str(url))
        .await
        .map_err(|e| {
            format!(
                "{url}: {} (offline, or the host sends no CORS headers)",
                js_err(e)
            )
        })?
        .dyn_into()
        .map_err(js_err)?;
    match resp.status() {
        404 => return Ok(None),
        401 | 403 => {
            return Err(format!(
                "{url}: HTTP {} — the repository is gated or private; download the file on the Hub and drop it here",
                resp.status()
            ));
        }
        _ if !resp.ok() => {
            return Err(format!(
                "{url}: HTTP {} {}",
                resp.status(),
                resp.status_text()
            ));
        }
        _ => {}
    }
    let total = resp
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<u64>().ok());
    let Some(body) = resp.body() else {
        return response_bytes(&resp).await.map(Some);
    };
    let reader: web_sys::ReadableStreamDefaultReader = body
        .get_reader()
        .dyn_into()
        .map_err(|o: js_sys::Object| js_err(o.into()))?;
    let mut out = Vec::with_capacity(total.unwrap_or(0) as usize);
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(js_err)?;
        let done = js_sys::Reflect::get(&chunk, &"done".into())
            .map_err(js_err)?
            .as_bool()
            .unwrap_or(true);
        if done {
            break;
        }
        let value = js_sys::Reflect::get(&chunk, &"value".into()).map_err(js_err)?;
        out.extend_from_slice(&js_sys::Uint8Array::new(&value).to_vec());
        progress(out.len() as u64, total);
    }
    Ok(Some(out))
}

/// Fetches a Hub repository's weights (`model.safetensors`, else `pytorch_model.bin`) and
/// its `config.json`, from the browser's cache when a previous visit stored them.
pub async fn fetch_hub_model(
    host: &str,
    repo: &str,
    status: &dyn Fn(String),
) -> Result<(String, Vec<u8>, Option<String>), String> {
    use dino_model::hub::{WEIGHT_FILES, resolve_url};
    let cache = model_cache().await;
    let config_url = resolve_url(host, repo, "config.json");
    let config = match cached(cache.as_ref(), &config_url).await {
        Some(b) => Some(b),
        None => {
            let fetched = fetch_with_progress(&config_url, &|_, _| {}).await?;
            if let Some(mut b) = fetched.clone() {
                store(cache.as_ref(), &config_url, &mut b).await;
            }
            fetched
        }
    };
    let config = config.map(|b| String::from_utf8_lossy(&b).into_owned());
    for file in WEIGHT_FILES {
        let url = resolve_url(host, repo, file);
        let name = format!("{repo}/{file}");
        if let Some(bytes) = cached(cache.as_ref(), &url).await {
            status(format!("{name}: from the browser's cache"));
            return Ok((name, bytes, config));
        }
        let report = |got: u64, total: Option<u64>| {
            let mb = |b: u64| b as f64 / 1e6;
            status(match total {
                Some(t) => format!(
                    "Downloading {name}: {:.1} of {:.1} MB ({:.0} %)",
                    mb(got),
                    mb(t),
                    100.0 * got as f64 / t.max(1) as f64
                ),
                None => format!("Downloading {name}: {:.1} MB", mb(got)),
            })
        };
        if let Some(mut bytes) = fetch_with_progress(&url, &report).await? {
            store(cache.as_ref(), &url, &mut bytes).await;
            return Ok((name, bytes, config));
        }
    }
    Err(format!(
        "{host}/{repo} has neither {} nor {}",
        WEIGHT_FILES[0], WEIGHT_FILES[1]
    ))
}

/// Starts downloading a Hub model; the app receives it as [`Job::Checkpoint`] and the
/// progress as [`Job::Status`].
pub fn open_hub_model(repo: &str, tx: std::sync::mpsc::Sender<Job>, ctx: egui::Context) {
    let repo = repo.to_string();
    wasm_bindgen_futures::spawn_local(async move {
        let host = hub_host();
        let status = |text: String| {
            let _ = tx.send(Job::Status(text));
            ctx.request_repaint();
        };
        set_body_attribute("data-hub", "fetching");
        let job = match fetch_hub_model(&host, &repo, &status).await {
            Ok((name, bytes, config)) => {
                set_body_attribute("data-hub", "fetched");
                Job::Checkpoint(name, bytes, config)
            }
            Err(e) => {
                set_body_attribute("data-hub", "error");
                Job::File(repo.clone(), Err(e))
            }
        };
        let _ = tx.send(job);
        ctx.request_repaint();
    });
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
