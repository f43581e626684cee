//! The web viewer in a real headless Chromium: serve `web/dist` on 127.0.0.1, open it with
//! `?checkpoint=` pointing at the parity fixture, wait until the page reports that the
//! per-head maps are drawn, and check the pixels of the canvas.
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

fn serve(stream: TcpStream, dist: &Path, fixtures: &Path) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
            break;
        }
    }
    let target = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_string();
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
    fn post(&self, path: &str, body: Value) -> Value {
        let url = format!(
            "{}/session/{}{path}",
            self.base,
            self.session.as_ref().unwrap()
        );
        ureq::post(&url)
            .send_json(body)
            .unwrap_or_else(|e| panic!("POST {url}: {e}"))
            .into_json()
            .unwrap()
    }

    fn script(&self, js: &str) -> Value {
        self.post("/execute/sync", json!({"script": js, "args": []}))["value"].clone()
    }
}

#[test]
fn web_viewer_renders_per_head_maps_in_headless_chromium() {
    if std::env::var("DINOSCOPE_SKIP_BROWSER_TEST").is_ok_and(|v| v == "1") {
        println!("skipped on request (DINOSCOPE_SKIP_BROWSER_TEST=1)");
        return;
    }
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
        // WebGPU on SwiftShader (Chromium's CPU Vulkan), so the network's WebGPU path runs.
        "--enable-unsafe-webgpu",
        "--use-webgpu-adapter=swiftshader",
        "--window-size=1280,800",
    ];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
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

    driver.post(
        "/url",
        json!({"url": format!("{site}/index.html?checkpoint=/fixtures/official_checkpoint.pth")}),
    );
    let start = Instant::now();
    let state = loop {
        let s = driver.script("return document.body.getAttribute('data-state') || ''");
        let s = s.as_str().unwrap_or("").to_string();
        if s.starts_with("ready") || s == "error" {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "the page never drew its maps (state {s:?})"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
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
