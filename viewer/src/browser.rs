//! What only a web page has: its URL's query, `fetch` with progress, the Cache API that
//! keeps downloaded models, downloads, and the `data-*` attributes of `<body>` through which
//! tests and scripts read what the canvas shows.

use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::job::Job;

/// A JavaScript exception as text.
pub fn js_err(e: wasm_bindgen::JsValue) -> String {
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}

/// The page's document.
pub fn document() -> Option<web_sys::Document> {
    web_sys::window()?.document()
}

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

/// Fetches a URL's bytes, with the HTTP status in the error and the viewer's size limit
/// applied as the bytes arrive.
pub async fn fetch_bytes(url: &str) -> Result<Vec<u8>, String> {
    fetch_with_progress(url, &|_, _| {})
        .await?
        .ok_or_else(|| format!("{url}: HTTP 404 Not Found"))
}

/// Where the Hugging Face Hub is: `?hub=` (a mirror, or the tests' local server), else
/// huggingface.co.
pub fn hub_host() -> String {
    query_param("hub").unwrap_or_else(|| dino_model::import::hub::HUB.to_string())
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

/// How long a download may go without a byte before it is given up.
const STALL_TIMEOUT_MS: i32 = 60_000;

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
    let limit = crate::files::MAX_FILE_BYTES as u64;
    if let Some(t) = total.filter(|&t| t > limit) {
        return Err(crate::files::too_large(url, t));
    }
    let Some(body) = resp.body() else {
        return response_bytes(&resp).await.map(Some);
    };
    let reader: web_sys::ReadableStreamDefaultReader = body
        .get_reader()
        .dyn_into()
        .map_err(|o: js_sys::Object| js_err(o.into()))?;
    // The announced length only sizes the buffer within the limit; the bytes are counted.
    let mut out = Vec::with_capacity(total.unwrap_or(0).min(limit) as usize);
    loop {
        // A download that stops sending is given up, not waited for forever.
        let timeout = js_sys::Promise::new(&mut |resolve, _| {
            let _ = window
                .set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, STALL_TIMEOUT_MS);
        });
        let read = reader.read();
        let chunk = JsFuture::from(js_sys::Promise::race(&js_sys::Array::of2(&read, &timeout)))
            .await
            .map_err(js_err)?;
        if chunk.is_undefined() {
            let _ = reader.cancel();
            return Err(format!(
                "{url}: no data for {} s; the download was given up (offline?)",
                STALL_TIMEOUT_MS / 1000
            ));
        }
        let done = js_sys::Reflect::get(&chunk, &"done".into())
            .map_err(js_err)?
            .as_bool()
            .unwrap_or(true);
        if done {
            break;
        }
        let value = js_sys::Reflect::get(&chunk, &"value".into()).map_err(js_err)?;
        let chunk = js_sys::Uint8Array::new(&value);
        if out.len() as u64 + u64::from(chunk.length()) > limit {
            let _ = reader.cancel();
            return Err(crate::files::too_large(
                url,
                out.len() as u64 + u64::from(chunk.length()),
            ));
        }
        out.extend_from_slice(&chunk.to_vec());
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
    use dino_model::import::hub::{WEIGHT_FILES, resolve_url};
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

/// What the page shows after an analysis, as tests and benchmark scripts read it.
pub struct Shown<'a> {
    /// Heads drawn.
    pub heads: usize,
    /// Input side of this analysis in pixels.
    pub resolution: u32,
    /// Whether this is the chosen size (a preview is not).
    pub is_final: bool,
    /// The network's own time in the worker: forward and read-back, seconds.
    pub network_secs: f64,
    /// From the request to the maps being here: what a user waits, seconds.
    pub waited_secs: f64,
    /// Where the network ran.
    pub backend: &'a str,
}

/// Writes an analysis's `data-*` attributes; `data-state` goes last, because tests wait for it.
pub fn show_analysis(shown: &Shown) {
    set_body_attribute("data-latency", &format!("{:.3}", shown.waited_secs));
    set_body_attribute("data-network", &format!("{:.3}", shown.network_secs));
    // Scripts and tests wait for `data-final` to time the full size.
    set_body_attribute("data-resolution", &shown.resolution.to_string());
    set_body_attribute("data-final", &shown.is_final.to_string());
    if !shown.is_final {
        set_body_attribute("data-preview-latency", &format!("{:.3}", shown.waited_secs));
    }
    set_body_attribute("data-backend", shown.backend);
    set_state(&format!("ready:{}", shown.heads));
}
