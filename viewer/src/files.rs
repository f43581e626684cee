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
