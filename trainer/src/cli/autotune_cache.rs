//! Where CubeCL keeps its autotune results between runs, so that only a GPU's first run pays
//! for tuning every kernel (minutes on a software adapter, seconds to a minute on a GPU).
//!
//! CubeCL stores them in `target/environment` under the outermost `Cargo.toml` above the
//! current folder (a checkout), else in the user cache folder (`~/.cache/cubecl`); a
//! `cubecl.toml` can move them. `DINO_AUTOTUNE_CACHE=DIR` moves them from the command line,
//! which is how `scripts/gpu-check.sh` carries a lent GPU's cache back in `$OUT`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};

/// The environment variable naming the autotune cache folder.
pub const ENV: &str = "DINO_AUTOTUNE_CACHE";

/// Points CubeCL's autotune cache at `$DINO_AUTOTUNE_CACHE` when it is set (keeping every
/// other setting of a `cubecl.toml` and of CubeCL's own variables); returns the folder.
/// Must run before the first GPU device is created.
pub fn configure_from_env() -> Result<Option<PathBuf>> {
    let Some(dir) = std::env::var_os(ENV).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).with_context(|| {
        format!(
            "{ENV}={}: cannot create the autotune cache folder; point {ENV} at a writable folder or unset it",
            dir.display()
        )
    })?;
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    config.environment.path = CacheConfig::Directory(dir.clone());
    if !CubeClRuntimeConfig::try_set(config) {
        bail!("{ENV} is set too late: CubeCL had already read its configuration");
    }
    Ok(Some(dir))
}
