//! The web viewer in a real headless Chromium: serve `web/dist` on 127.0.0.1, open it with
//! `?checkpoint=` pointing at the parity fixture, wait until the page reports that the
//! per-head maps are drawn, and check the pixels of the canvas. Without WebGPU: the
//! single-threaded CPU module, the threaded one on a page `web/serve.py` isolates, and the
//! threaded one on a host without headers, isolated by the service worker `isolation.js`.
//!
//! Needs `web/dist` (built by `web/build.sh`), `/usr/bin/chromium` and `chromedriver`;
//! `.ci/run` provides all three. Set `DINOSCOPE_SKIP_BROWSER_TEST=1` to skip it explicitly
//! on a machine without them; otherwise their absence is a failure, not a silent pass.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript",
        Some("wasm") => "application/wasm",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

/// Reads an HTTP request's head and returns its path (with the query).
fn request_path(stream: &TcpStream) -> Option<String> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
            break;
        }
    }
    Some(line.split_whitespace().nth(1).unwrap_or("/").to_string())
}

fn serve(stream: TcpStream, dist: &Path, fixtures: &Path) {
    let Some(line) = request_path(&stream) else {
        return;
    };
    let target = line.split('?').next().unwrap_or("/").to_string();
    let rel = target.trim_start_matches('/');
    let file = if let Some(f) = rel.strip_prefix("fixtures/") {
        fixtures.join(f)
    } else if rel.is_empty() {
        dist.join("index.html")
    } else {
        dist.join(rel)
    };
    let mut out = stream;
    match (rel.contains(".."), std::fs::read(&file)) {
        (false, Ok(body)) => {
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                content_type(&file),
                body.len()
            );
            let _ = out.write_all(&body);
        }
        _ => {
            let _ = write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Driver {
    child: Child,
    base: String,
    session: Option<String>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(s) = &self.session {
            let _ = ureq::delete(&format!("{}/session/{s}", self.base)).call();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// One WebDriver command; an error carries chromedriver's own message (its body).
    fn try_post(&self, path: &str, body: Value) -> Result<Value, String> {
        let url = format!(
            "{}/session/{}{path}",
            self.base,
            self.session.as_ref().unwrap()
        );
        match ureq::post(&url).send_json(body) {
            Ok(r) => r.into_json().map_err(|e| format!("POST {url}: {e}")),
            Err(ureq::Error::Status(code, r)) => Err(format!(
                "POST {url}: status {code}: {}",
                r.into_string().unwrap_or_default()
            )),
            Err(e) => Err(format!("POST {url}: {e}")),
        }
    }

    fn post(&self, path: &str, body: Value) -> Value {
        self.try_post(path, body).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_script(&self, js: &str) -> Result<Value, String> {
        self.try_post("/execute/sync", json!({"script": js, "args": []}))
            .map(|v| v["value"].clone())
    }

    /// Runs `js`, waiting out a renderer too busy to answer (see `busy`) for up to 60 s.
    fn script(&self, js: &str) -> Value {
        let start = Instant::now();
        loop {
            match self.try_script(js) {
                Ok(v) => return v,
                Err(e) if busy(&e) && start.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(500))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}

/// Serves `web/dist` (and the fixtures under `/fixtures/`) on 127.0.0.1; returns the base URL.
fn serve_site() -> String {
    let dist = repo().join("web/dist");
    assert!(
        dist.join("pkg/dino-viewer_bg.wasm").is_file(),
        "web/dist is missing: run web/build.sh (or set DINOSCOPE_SKIP_BROWSER_TEST=1)"
    );
    let fixtures = repo().join("model/tests/fixtures");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let site = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let (d, f) = (dist.clone(), fixtures.clone());
            std::thread::spawn(move || serve(s, &d, &f));
        }
    });
    site
}

/// Starts chromedriver and a headless Chromium session (WebGPU on SwiftShader).
fn chromium() -> (Driver, tempfile::TempDir) {
    chromium_with(true)
}

/// Starts chromedriver and a headless Chromium session, with WebGPU on SwiftShader or none
/// (then the worker computes on the wasm CPU backend).
fn chromium_with(webgpu: bool) -> (Driver, tempfile::TempDir) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver not found: install Debian's chromium and chromium-driver (or set DINOSCOPE_SKIP_BROWSER_TEST=1)");
    let mut driver = Driver {
        child,
        base: format!("http://127.0.0.1:{port}"),
        session: None,
    };
    let start = Instant::now();
    while ureq::get(&format!("{}/status", driver.base))
        .call()
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let profile = tempfile::tempdir().unwrap();
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-unsafe-swiftshader",
        "--window-size=1280,800",
        // A name that is not localhost, for the same server: a page that is not a secure
        // context, as a class gets it over the network.
        "--host-resolver-rules=MAP classroom.test 127.0.0.1",
        // `web/serve.py --https` signs its own certificate; a student accepts it once, which
        // this flag stands in for.
        "--ignore-certificate-errors",
    ];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    if webgpu {
        // WebGPU on SwiftShader (Chromium's CPU Vulkan), so the network's WebGPU path runs.
        args.push("--enable-unsafe-webgpu".into());
        args.push("--use-webgpu-adapter=swiftshader".into());
    }
    args.push(format!("--user-data-dir={}", profile.path().display()));
    let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
        "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}});
    let resp: Value = ureq::post(&format!("{}/session", driver.base))
        .send_json(caps)
        .expect("creating a Chromium session")
        .into_json()
        .unwrap();
    driver.session = Some(
        resp["value"]["sessionId"]
            .as_str()
            .expect("session id")
            .to_string(),
    );

    (driver, profile)
}

/// Whether a WebDriver error only says the renderer did not answer in time: a page busy
/// compiling the wasm or drawing on a loaded machine misses chromedriver's own deadline
/// (a 500 "timeout: Timed out receiving message from renderer"). That is "not yet", not a
/// failure; a crashed tab or a script error is.
fn busy(error: &str) -> bool {
    error.contains("timeout")
}

/// Polls `data-state` until it is `ready…` or `error` (at most 300 s).
fn wait_ready(driver: &Driver) -> String {
    let start = Instant::now();
    loop {
        let s = match driver.try_script("return document.body.getAttribute('data-state') || ''") {
            Ok(v) => v.as_str().unwrap_or("").to_string(),
            Err(e) if busy(&e) => format!("busy: {e}"),
            Err(e) => panic!("{e}"),
        };
        if s.starts_with("ready") || s == "error" {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the page never drew its maps (state {s:?})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One browser at a time: two Chromiums computing on a small machine would each time out.
static BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn skip() -> bool {
    let skip = std::env::var("DINOSCOPE_SKIP_BROWSER_TEST").is_ok_and(|v| v == "1");
    if skip {
        println!("skipped on request (DINOSCOPE_SKIP_BROWSER_TEST=1)");
    }
    skip
}

#[test]
fn web_viewer_renders_per_head_maps_in_headless_chromium() {
    if skip() {
        return;
    }
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let site = serve_site();
    let (driver, _profile) = chromium();
    driver.post(
        "/url",
        json!({"url": format!("{site}/index.html?checkpoint=/fixtures/official_checkpoint.pth")}),
    );
    let state = wait_ready(&driver);
    assert_eq!(state, "ready:2", "the page reported {state}");
    // The maps were drawn by attention_overlay.wgsl inside egui's render pass.
    let overlay = driver.script("return document.body.getAttribute('data-overlay') || ''");
    assert_eq!(overlay, "shader", "overlays were not drawn by the shader");
    // The network ran in the Web Worker, not on the page's thread.
    let backend = driver.script("return document.body.getAttribute('data-backend') || ''");
    assert!(
        backend
            .as_str()
            .is_some_and(|b| b.contains("worker") && b.contains("WebGPU")),
        "inference did not run on WebGPU in the worker: {backend}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let shot: Value = ureq::get(&format!(
        "{}/session/{}/screenshot",
        driver.base,
        driver.session.as_ref().unwrap()
    ))
    .call()
    .expect("taking a screenshot")
    .into_json()
    .unwrap();
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["value"].as_str().unwrap())
        .unwrap();
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    if let Ok(dir) = std::env::var("DINOSCOPE_SCREENSHOT_DIR") {
        let _ = img.save(Path::new(&dir).join("web-viewer.png"));
    }
    // The central panel starts right of the side panel; count strongly coloured pixels there
    // (the UI chrome is grey, the maps are photo + viridis).
    let (w, h) = img.dimensions();
    let coloured = img
        .enumerate_pixels()
        .filter(|(x, y, _)| *x > w / 4 && *y > 80 && *y < h - 20)
        .filter(|(_, _, p)| {
            let [r, g, b] = p.0.map(i32::from);
            (r - g).abs() + (g - b).abs() + (r - b).abs() > 60
        })
        .count();
    println!("coloured pixels in the map area: {coloured} of {}", w * h);
    assert!(
        coloured > 20_000,
        "only {coloured} coloured pixels: the per-head maps did not render"
    );
}

#[test]
fn web_viewer_without_webgpu_computes_on_the_simd128_cpu_backend_in_the_worker() {
    if skip() {
        return;
    }
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let site = serve_site();
    let (driver, _profile) = chromium_with(false);
    // `?threads=1`: the single-threaded module, which every browser can run (no isolation).
    driver.post(
        "/url",
        json!({"url": format!("{site}/index.html?threads=1&checkpoint=/fixtures/official_checkpoint.pth")}),
    );
    assert_cpu_maps(&driver, None, "1 thread,");
    // The same page under a name other than localhost: no secure context, and the note says
    // that, not "no WebGPU".
    let port = site.rsplit(':').next().unwrap();
    driver.post(
        "/url",
        json!({"url": format!("http://classroom.test:{port}/index.html?threads=1")}),
    );
    let secure = driver.script("return document.body.getAttribute('data-secure')");
    let note = driver.script("return document.getElementById('webgpu-note').textContent");
    assert_eq!(secure, json!("false"));
    let note = note.as_str().unwrap_or_default();
    assert!(
        note.contains("plain HTTP") && !note.contains("no WebGPU"),
        "{note}"
    );
}

/// `web/serve.py`, the project's server (COOP/COEP on every answer), on a free port with the
/// parity fixtures under `/models/`; killed on drop.
struct ProjectServer {
    child: Child,
    site: String,
}

impl Drop for ProjectServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn project_server(extra: &[&str]) -> ProjectServer {
    let dist = repo().join("web/dist");
    assert!(
        dist.join("pkg-threads/dino-viewer-threads_bg.wasm")
            .is_file(),
        "web/dist has no threaded module: run web/build.sh without WEB_THREADS=0 (or set DINOSCOPE_SKIP_BROWSER_TEST=1)"
    );
    let mut child = Command::new("python3")
        .arg(repo().join("web/serve.py"))
        .args(["--port", "0", "--quiet", "--dir"])
        .arg(&dist)
        .arg("--models")
        .arg(repo().join("model/tests/fixtures"))
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 not found: web/serve.py needs it");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let site = line
        .trim()
        .strip_prefix("serving ")
        .unwrap_or_else(|| panic!("web/serve.py printed {line:?}"))
        .trim_end_matches('/')
        .to_string();
    ProjectServer { child, site }
}

/// Waits for the page's maps, checks how the worker computed them (`isolation`, if given, is
/// the expected `data-isolation`; `threads` a part of `data-backend`), then waits for the
/// 480 px maps to replace the 224 px preview.
fn assert_cpu_maps(driver: &Driver, isolation: Option<&str>, threads: &str) {
    let state = wait_ready(driver);
    let attr = |name: &str| {
        driver
            .script(&format!(
                "return document.body.getAttribute('{name}') || ''"
            ))
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(state, "ready:2", "the page reported {state}");
    if let Some(isolation) = isolation {
        assert_eq!(attr("data-isolation"), isolation);
    }
    let backend = attr("data-backend");
    for part in ["CPU", "SIMD128", threads, "worker"] {
        assert!(
            backend.contains(part),
            "data-backend should name {part:?}: {backend}"
        );
    }
    let start = Instant::now();
    while attr("data-final") != "true" {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the 480 px maps never replaced the preview (resolution {})",
            attr("data-resolution")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(attr("data-resolution"), "480");
    assert!(
        attr("data-preview-latency").parse::<f64>().is_ok(),
        "no preview was shown first"
    );
}

#[test]
fn web_viewer_without_webgpu_on_the_project_server_computes_on_a_thread_pool() {
    if skip() {
        return;
    }
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let server = project_server(&[]);
    let (driver, _profile) = chromium_with(false);
    driver.post(
        "/url",
        json!({"url": format!("{}/index.html?threads=2&checkpoint=/models/official_checkpoint.pth", server.site)}),
    );
    assert_cpu_maps(&driver, Some("headers"), "2 threads");
    // The classroom: `--https` with its self-signed certificate, reached under a name that is
    // not localhost, is a secure context again, threads included.
    let tls = tempfile::tempdir().unwrap();
    let https = project_server(&["--https", "--tls-dir", tls.path().to_str().unwrap()]);
    let port = https.site.rsplit(':').next().unwrap();
    assert!(https.site.starts_with("https://"), "{}", https.site);
    driver.post(
        "/url",
        json!({"url": format!("https://classroom.test:{port}/index.html?threads=2&checkpoint=/models/official_checkpoint.pth")}),
    );
    assert_cpu_maps(&driver, Some("headers"), "2 threads");
    let secure = driver.script("return document.body.getAttribute('data-secure')");
    assert_eq!(secure, json!("true"));
}

#[test]
fn web_viewer_on_a_host_without_headers_isolates_itself_with_a_service_worker() {
    if skip() {
        return;
    }
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    // The test's own server sends no COOP/COEP, as GitHub Pages or `python3 -m http.server`.
    let site = serve_site();
    let (driver, _profile) = chromium_with(false);
    driver.post(
        "/url",
        json!({"url": format!("{site}/index.html?threads=2&checkpoint=/fixtures/official_checkpoint.pth")}),
    );
    assert_cpu_maps(&driver, Some("service-worker"), "2 threads");
}

/// A stand-in for the Hugging Face Hub on its own origin: `/<repo>/resolve/main/<file>`
/// answers like the Hub (302 to a CDN path, CORS headers on both hops, 404 for files a
/// repository does not have), serving the parity fixtures; `offline` makes it refuse all.
struct FakeHub {
    base: String,
    offline: std::sync::Arc<std::sync::atomic::AtomicBool>,
    downloads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn fake_hub() -> FakeHub {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let fixtures = repo().join("model/tests/fixtures");
    // repo -> (file -> fixture); `dino-vits16` has only pytorch_model.bin, as on the Hub.
    let files: Vec<(&str, &str, PathBuf)> = vec![
        (
            "facebook/dinov2-with-registers-small",
            "model.safetensors",
            fixtures.join("families/v2reg_hf/model.safetensors"),
        ),
        (
            "facebook/dinov2-with-registers-small",
            "config.json",
            fixtures.join("families/v2reg_hf/config.json"),
        ),
        (
            "facebook/dino-vits16",
            "pytorch_model.bin",
            fixtures.join("official_backbone.pth"),
        ),
    ];
    let files: Arc<Vec<(String, String, PathBuf)>> = Arc::new(
        files
            .into_iter()
            .map(|(r, f, p)| (r.to_string(), f.to_string(), p))
            .collect(),
    );
    let offline = Arc::new(AtomicBool::new(false));
    let downloads = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (off, log) = (offline.clone(), downloads.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (files, off, log) = (files.clone(), off.clone(), log.clone());
            std::thread::spawn(move || {
                let Some(path) = request_path(&stream) else {
                    return;
                };
                let cors = "Access-Control-Allow-Origin: *\r\n";
                let mut out = stream;
                if off.load(Ordering::SeqCst) {
                    let _ = write!(
                        out,
                        "HTTP/1.1 503 Service Unavailable\r\n{cors}Content-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    return;
                }
                let lookup = |repo: &str, file: &str| {
                    files
                        .iter()
                        .find(|(r, f, _)| r == repo && f == file)
                        .map(|(_, _, p)| p.clone())
                };
                if let Some(rest) = path.strip_prefix("/cdn/") {
                    // The CDN hop: the file itself.
                    let (repo, file) = rest.rsplit_once('/').unwrap_or((rest, ""));
                    if let Some(p) = lookup(repo, file) {
                        let body = std::fs::read(p).unwrap();
                        log.lock().unwrap().push(format!("{repo}/{file}"));
                        let _ = write!(
                            out,
                            "HTTP/1.1 200 OK\r\n{cors}Content-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = out.write_all(&body);
                        return;
                    }
                } else if let Some((repo, file)) =
                    path.trim_start_matches('/').split_once("/resolve/main/")
                    && lookup(repo, file).is_some()
                {
                    let _ = write!(
                        out,
                        "HTTP/1.1 302 Found\r\n{cors}Location: /cdn/{repo}/{file}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    return;
                }
                let _ = write!(
                    out,
                    "HTTP/1.1 404 Not Found\r\n{cors}Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
            });
        }
    });
    FakeHub {
        base,
        offline,
        downloads,
    }
}

#[test]
fn hub_models_download_with_their_config_show_registers_and_open_offline() {
    if skip() {
        return;
    }
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let site = serve_site();
    let hub = fake_hub();
    let (driver, _profile) = chromium();
    let attr = |name: &str| {
        driver
            .script(&format!(
                "return document.body.getAttribute('{name}') || ''"
            ))
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    // DINOv2 with registers from the "Hub" (another origin: CORS on the redirect and the
    // CDN hop), opened on the Registers view. Its heads (2 of 16 channels) are only in
    // config.json: the maps drawing proves the config travelled with the weights.
    let url = format!(
        "{site}/index.html?hub={}&model=facebook/dinov2-with-registers-small&view=registers",
        hub.base
    );
    driver.post("/url", json!({ "url": url }));
    assert_eq!(wait_ready(&driver), "ready:2", "hub: {}", attr("data-hub"));
    assert_eq!(attr("data-hub"), "fetched");
    let tiles = attr("data-tiles");
    assert!(
        tiles.starts_with("CLS, mean of heads|register 1, mean of heads")
            && tiles.contains("register 4, mean of heads"),
        "{tiles}"
    );
    assert_eq!(
        hub.downloads.lock().unwrap().clone(),
        vec![
            "facebook/dinov2-with-registers-small/config.json".to_string(),
            "facebook/dinov2-with-registers-small/model.safetensors".to_string()
        ]
    );
    // The second visit works with the Hub gone: the Cache API kept both files.
    hub.offline.store(true, std::sync::atomic::Ordering::SeqCst);
    driver.post("/url", json!({ "url": url }));
    assert_eq!(
        wait_ready(&driver),
        "ready:2",
        "offline: {}",
        attr("data-hub")
    );
    assert_eq!(hub.downloads.lock().unwrap().len(), 2);
    // A repository with only pytorch_model.bin (the DINO v1 ports): the fallback name.
    hub.offline
        .store(false, std::sync::atomic::Ordering::SeqCst);
    driver.post(
        "/url",
        json!({ "url": format!("{site}/index.html?hub={}&model=facebook/dino-vits16", hub.base) }),
    );
    assert_eq!(wait_ready(&driver), "ready:2", "bin: {}", attr("data-hub"));
    assert!(
        hub.downloads
            .lock()
            .unwrap()
            .contains(&"facebook/dino-vits16/pytorch_model.bin".to_string())
    );
}
