//! What the viewer accepts as a file: at most [`MAX_FILE_BYTES`], however it arrives (a
//! drop, the file dialog, a path on the command line, a download), with one message for a
//! file that is too large.

/// Largest file accepted from a drop, picker or URL.
pub const MAX_FILE_BYTES: usize = 1 << 30;

/// The refusal of a file of `bytes` bytes (above [`MAX_FILE_BYTES`]).
pub fn too_large(name: &str, bytes: u64) -> String {
    format!(
        "{name} is {} MiB; the viewer opens files of up to {} MiB",
        bytes >> 20,
        MAX_FILE_BYTES >> 20
    )
}

/// Reads a file of at most [`MAX_FILE_BYTES`], whatever its size claims (a pipe or a device
/// reports none): the bound holds for what is read.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| format!("{name}: {e}"))?;
    let declared = file.metadata().map(|m| m.len()).unwrap_or(0);
    if declared > MAX_FILE_BYTES as u64 {
        return Err(too_large(&name, declared));
    }
    let mut bytes = Vec::with_capacity(declared as usize);
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{name}: {e}"))?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(too_large(&name, bytes.len() as u64));
    }
    Ok(bytes)
}

/// The files `--checkpoint SPEC` opens, in order: for a Hub name that is no file here, the
/// repository's `config.json` (when it has one, so that it describes the weights) and then
/// its weights, fetched into the Hub cache once; else the file itself.
#[cfg(not(target_arch = "wasm32"))]
pub fn checkpoint_files(spec: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    checkpoint_files_from(spec, &dino_hub::Hub::from_env())
}

/// [`checkpoint_files`] with the given Hub settings.
#[cfg(not(target_arch = "wasm32"))]
pub fn checkpoint_files_from(
    spec: &str,
    hub: &dino_hub::Hub,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let local = hub
        .local_or_fetch(std::path::Path::new(spec))
        .map_err(|e| format!("{e:#}"))?;
    let mut out = Vec::new();
    let config = local.with_file_name("config.json");
    if local.as_os_str() != spec && config.is_file() {
        out.push((config.display().to_string(), read_file(&config)?));
    }
    out.push((local.display().to_string(), read_file(&local)?));
    Ok(out)
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    /// A Hub name opens the repository's config.json, then its weights, from a stand-in for
    /// the Hub into the cache; a path opens just that file.
    #[test]
    fn a_hub_name_opens_its_config_then_its_weights() {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().take(3) {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                while {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap() > 2
                } {}
                let body: &[u8] = if line.contains("/model.safetensors ") {
                    b"weights"
                } else if line.contains("/config.json ") {
                    b"{}"
                } else {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                    );
                    continue;
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nX-Repo-Commit: r1\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(body);
            }
        });
        let cache = tempfile::tempdir().unwrap();
        let hub = dino_hub::Hub {
            endpoint,
            cache: cache.path().to_path_buf(),
            offline: false,
            token: None,
        };
        let files = checkpoint_files_from("org/model", &hub).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[0].ends_with("config.json") && names[1].ends_with("model.safetensors"));
        assert_eq!(files[1].1, b"weights");
        let path = cache.path().join("x.safetensors");
        std::fs::write(&path, b"local").unwrap();
        let files = checkpoint_files_from(path.to_str().unwrap(), &hub).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].1, b"local");
    }
}
