//! The Hub fetcher against a local stand-in for the Hub: `resolve/main` answers with a
//! redirect to the storage (carrying `X-Repo-Commit`, as huggingface.co does), the files land
//! in the cache layout of `huggingface_hub`, later calls and `HF_HUB_OFFLINE` read the cache
//! without the network, and a missing repository, a gated one, a cut-off download or a name
//! that is no name end in errors that say what to do.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use dino_hub::{Hub, is_repo_name};

/// Serves `files` (`repo/file` → bytes) until the test ends; returns its address and the log
/// of requested paths. `org/gated` needs `Authorization: Bearer secret`; `org/cut` promises
/// more bytes than it sends.
fn hub_server(files: HashMap<String, Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let mut auth = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h
                    .strip_prefix("Authorization: ")
                    .or_else(|| h.strip_prefix("authorization: "))
                {
                    auth = Some(v.trim().to_string());
                }
            }
            seen.lock().unwrap().push(path.clone());
            let reply =
                |stream: &mut std::net::TcpStream, status: &str, headers: &str, body: &[u8]| {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status}\r\n{headers}Connection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(body);
                };
            if let Some((repo, file)) = path.trim_start_matches('/').split_once("/resolve/main/") {
                let key = format!("{repo}/{file}");
                if repo == "org/gated" && auth.as_deref() != Some("Bearer secret") {
                    reply(
                        &mut stream,
                        "401 Unauthorized",
                        "Content-Length: 0\r\n",
                        b"",
                    );
                } else if files.contains_key(&key) {
                    reply(
                        &mut stream,
                        "302 Found",
                        &format!(
                            "Location: /storage/{key}\r\nX-Repo-Commit: c0ffee{}\r\nContent-Length: 0\r\n",
                            repo.len()
                        ),
                        b"",
                    );
                } else {
                    reply(&mut stream, "404 Not Found", "Content-Length: 0\r\n", b"");
                }
            } else if let Some(key) = path.strip_prefix("/storage/") {
                match files.get(key) {
                    Some(body) if key.starts_with("org/cut/") => reply(
                        &mut stream,
                        "200 OK",
                        &format!("Content-Length: {}\r\n", body.len() * 100),
                        body,
                    ),
                    Some(body) => reply(
                        &mut stream,
                        "200 OK",
                        &format!("Content-Length: {}\r\n", body.len()),
                        body,
                    ),
                    None => reply(&mut stream, "404 Not Found", "Content-Length: 0\r\n", b""),
                }
            } else {
                reply(&mut stream, "404 Not Found", "Content-Length: 0\r\n", b"");
            }
        }
    });
    (addr, log)
}

fn hub(endpoint: &str, cache: &std::path::Path) -> Hub {
    Hub {
        endpoint: endpoint.to_string(),
        cache: cache.to_path_buf(),
        offline: false,
        token: None,
    }
}

#[test]
fn repositories_are_fetched_once_into_the_hub_cache_and_read_offline() {
    let files: HashMap<String, Vec<u8>> = [
        ("org/v2/model.safetensors", b"weights".to_vec()),
        (
            "org/v2/config.json",
            b"{\"model_type\": \"dinov2\"}".to_vec(),
        ),
        ("org/v1/pytorch_model.bin", b"pickle".to_vec()),
        ("org/gated/model.safetensors", b"licensed".to_vec()),
        ("org/cut/model.safetensors", b"short".to_vec()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (endpoint, log) = hub_server(files);
    let cache = tempfile::tempdir().unwrap();
    let h = hub(&endpoint, cache.path());

    // Weights and config, through the redirect, into models--org--v2/snapshots/<commit>/.
    let w = h.weights("org/v2").unwrap();
    let snapshot = cache.path().join("models--org--v2/snapshots/c0ffee6");
    assert_eq!(w, snapshot.join("model.safetensors"));
    assert_eq!(std::fs::read(&w).unwrap(), b"weights");
    assert!(snapshot.join("config.json").is_file());
    assert_eq!(
        std::fs::read_to_string(cache.path().join("models--org--v2/refs/main")).unwrap(),
        "c0ffee6"
    );
    // Again, and offline: the cache answers, the server is not asked.
    let asked = log.lock().unwrap().len();
    assert_eq!(h.weights("org/v2").unwrap(), w);
    let offline = Hub {
        offline: true,
        ..h.clone()
    };
    assert_eq!(offline.weights("org/v2").unwrap(), w);
    assert_eq!(
        log.lock().unwrap().len(),
        asked,
        "a cached repository went to the network"
    );
    let e = format!("{:#}", offline.weights("org/v1").unwrap_err());
    assert!(e.contains("HF_HUB_OFFLINE"), "{e}");

    // The DINO v1 ports have only pytorch_model.bin.
    let w1 = h.weights("org/v1").unwrap();
    assert!(w1.ends_with("pytorch_model.bin"), "{}", w1.display());

    // A name that is not there, a gated repository (then with the token), a cut-off download.
    let e = format!("{:#}", h.weights("org/nope").unwrap_err());
    assert!(
        e.contains("has neither model.safetensors nor pytorch_model.bin"),
        "{e}"
    );
    let e = format!("{:#}", h.weights("org/gated").unwrap_err());
    assert!(e.contains("gated") && e.contains("HF_TOKEN"), "{e}");
    let with_token = Hub {
        token: Some("secret".into()),
        ..h.clone()
    };
    assert_eq!(
        std::fs::read(with_token.weights("org/gated").unwrap()).unwrap(),
        b"licensed"
    );
    let e = format!("{:#}", h.weights("org/cut").unwrap_err());
    assert!(
        e.contains("after 5 bytes") && e.contains("run the command again"),
        "{e}"
    );
    let cut = cache.path().join("models--org--cut/snapshots/c0ffee7");
    let left: Vec<_> = std::fs::read_dir(&cut)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a cut-off download left {left:?}");

    // A server that is not there.
    let down = hub("http://127.0.0.1:9", cache.path());
    let e = format!("{:#}", down.weights("org/other").unwrap_err());
    assert!(e.contains("Check the network"), "{e}");
}

#[test]
fn names_are_owner_slash_name_and_nothing_else() {
    for ok in [
        "facebook/dinov2-small",
        "facebook/dinov3-vits16-pretrain-lvd1689m",
        "a/b.c_d",
    ] {
        assert!(is_repo_name(ok), "{ok}");
    }
    for bad in [
        "dinov2-small",
        "a/b/c",
        "../x",
        "a/..",
        "/a",
        "a/",
        "a/.hidden",
        "a b/c",
        "C:/x",
    ] {
        assert!(!is_repo_name(bad), "{bad}");
    }
}
