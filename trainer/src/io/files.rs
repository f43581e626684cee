//! File helpers: reading with the path in the error and a bound on what is read, and atomic
//! writes through a temporary file nobody else can have planted.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Largest file [`read`] takes whole: images and configs are far smaller.
pub const MAX_READ_BYTES: u64 = 1 << 30;

/// Reads a whole file of at most [`MAX_READ_BYTES`], naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    read_at_most(path, MAX_READ_BYTES, "")
}

/// Reads a whole file of at most `limit` bytes, naming it in the error (with `why` the limit
/// holds). The bound holds for what is read, not what the file system says: a pipe or
/// `/dev/zero` reports a length of 0.
pub fn read_at_most(path: &Path, limit: u64, why: &str) -> Result<Vec<u8>> {
    let file = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    // A device or a pipe says nothing of its length and may never end.
    if !meta.is_file() {
        anyhow::bail!(
            "{} is not a regular file (a device, a pipe or a folder); give the path of a file",
            path.display()
        );
    }
    let declared = meta.len();
    let too_big = || anyhow::anyhow!("{} is larger than {} MiB{why}", path.display(), limit >> 20);
    if declared > limit {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(declared as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(bytes)
}

/// Memory the kernel says is available for new allocations (`MemAvailable` of
/// `/proc/meminfo`), in bytes; `None` where that is unknown (not Linux).
pub fn available_memory() -> Option<u64> {
    parse_mem_available(&fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The temporary sibling a write to `path` goes through: `.NAME.<pid>.<random>.tmp`, a name
/// no other process can predict.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tag: u64 = rand::random();
    path.with_file_name(format!(".{name}.{}.{tag:016x}.tmp", std::process::id()))
}

/// Whether `name` is a temporary file [`write_atomic`] made (and a killed process left).
pub fn is_temp_name(name: &str) -> bool {
    let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    let mut parts = inner.rsplitn(3, '.');
    let (Some(tag), Some(pid), Some(base)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    tag.len() == 16
        && tag.chars().all(|c| c.is_ascii_hexdigit())
        && !pid.is_empty()
        && pid.chars().all(|c| c.is_ascii_digit())
        && !base.is_empty()
}

/// Writes `bytes` so that `path` holds either its old content or the new one, never a
/// mix: temp file in the same folder, fsync, rename over, fsync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating folder {}", dir.display()))?;
    let tmp = temp_path(path);
    // `create_new` is O_CREAT | O_EXCL: it never opens what is already there, a symbolic
    // link planted under the name included.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let result = (|| -> Result<()> {
        f.write_all(bytes)
            .with_context(|| format!("writing {} (is the disk full?)", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("flushing {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        if let Ok(d) = fs::File::open(dir) {
            // Persist the rename itself; not every platform can fsync a directory.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(parse_mem_available(text), Some(20_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 3 kB"), None);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failed_write_keeps_the_old_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        // The rename fails when the target is a folder that holds something.
        let p = dir.path().join("a.bin");
        fs::create_dir(&p).unwrap();
        fs::write(p.join("old"), b"old").unwrap();
        assert!(write_atomic(&p, b"new").is_err());
        assert_eq!(fs::read(p.join("old")).unwrap(), b"old");
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_temp_name(n))
            .collect()
    }

    #[test]
    fn temp_names_are_unpredictable_and_recognised() {
        let p = Path::new("/run/checkpoints/last.safetensors");
        let (a, b) = (temp_path(p), temp_path(p));
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(is_temp_name(name), "{name}");
        for other in [
            ".last.safetensors.tmp",
            "last.safetensors",
            ".x.12.zz.tmp",
            ".notes.tmp",
            "..1.0123456789abcdef.tmp",
        ] {
            assert!(!is_temp_name(other), "{other}");
        }
    }

    /// A symbolic link planted under any name in the folder never redirects a write.
    #[cfg(unix)]
    #[test]
    fn a_planted_symlink_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let p = dir.path().join("a.bin");
        // The old predictable name, and a guess at the new one.
        for planted in [
            dir.path()
                .join(format!(".a.bin.{}.tmp", std::process::id())),
            temp_path(&p),
        ] {
            std::os::unix::fs::symlink(&victim, &planted).unwrap();
        }
        write_atomic(&p, b"new").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn reads_stop_at_the_bound_whatever_the_file_system_says() {
        let err = read_at_most(Path::new("/dev/zero"), 1 << 20, "").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("small");
        fs::write(&p, b"12345").unwrap();
        assert_eq!(read_at_most(&p, 5, "").unwrap(), b"12345");
        assert!(read_at_most(&p, 4, "").is_err());
    }
}
