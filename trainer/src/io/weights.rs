//! Reading any weight file the commands and fine-tuning accept (a dinoscope checkpoint,
//! official DINO / DINOv2 / DINOv3 `.pth`, Hugging Face weights with the `config.json` and
//! `preprocessor_config.json` beside them), naming the file in every error and refusing one
//! that cannot fit in memory before reading it.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use dino_model::DinoModel;
use dino_model::import::{ImportOptions, Imported, SourceKind, Which, import_with};

/// How the CLI imports a weight file.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// The network of a training checkpoint.
    pub which: Which,
    /// Import despite tensors the importer does not understand.
    pub allow_unused: bool,
    /// Attention heads, for custom `.pth` models whose heads are not 64 wide.
    pub heads: Option<usize>,
}

/// The Hugging Face `config.json` beside a `.safetensors` or `.bin` weight file, if there is
/// one (an official `.pth` never comes with one).
fn hf_config_beside(path: &Path) -> Result<Option<String>> {
    let hub_file = path
        .extension()
        .is_some_and(|e| e == "safetensors" || e == "bin");
    let Some(dir) = path.parent().filter(|_| hub_file) else {
        return Ok(None);
    };
    let config = dir.join("config.json");
    if !config.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    Ok(Some(text))
}

/// Largest weight file read where the free memory is unknown (not Linux): 64 GiB.
pub const MAX_WEIGHTS_FILE_BYTES: u64 = 64 << 30;

/// The metadata of a safetensors file, reading only its header (at most 100 MB, as the
/// safetensors format allows).
pub fn safetensors_metadata(path: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    use std::io::Read;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .with_context(|| format!("reading {}", path.display()))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        bail!("{}: a safetensors header of {n} bytes", path.display());
    }
    let mut header = len.to_vec();
    file.take(n)
        .read_to_end(&mut header)
        .with_context(|| format!("reading {}", path.display()))?;
    dino_model::checkpoint::read_metadata(&header)
        .with_context(|| format!("reading the header of {}", path.display()))
}

/// Reads and imports any supported weight file, or a Hub repository by name, naming it in
/// every error.
pub fn load_weights(path: &Path, options: LoadOptions) -> Result<Imported> {
    // A Hub name (`facebook/dinov2-small`) that is no file here is fetched into the Hub cache.
    let fetched = dino_hub::local_or_fetch(path)?;
    let path = fetched.as_path();
    let available = super::files::available_memory();
    // Reading holds the file, its tensors widened to f32 and then the model: refuse a file
    // that cannot fit before reading it (a DINOv3 7B is 27 GB), with what it needs.
    if let (Ok(meta), Some(free)) = (std::fs::metadata(path), available)
        && meta.len() > free / 2
    {
        bail!(
            "{} is {} MiB; importing it needs about {} MiB of memory (the file and its weights in f32), and this machine has {} MiB available. Use a machine with more memory or a smaller release.",
            path.display(),
            meta.len() >> 20,
            (2 * meta.len()) >> 20,
            free >> 20
        );
    }
    // Bounded by what is read, not what the file system says (a pipe, a device).
    let limit = available.map_or(MAX_WEIGHTS_FILE_BYTES, |free| free / 2);
    let bytes = super::files::read_at_most(
        path,
        limit,
        "; importing it needs about twice that in memory (the file and its weights in f32)",
    )?;
    let hf_config = hf_config_beside(path)?;
    let from_config = hf_config.is_some();
    import_with(
        &bytes,
        &ImportOptions {
            which: options.which,
            hf_config,
            allow_unused: options.allow_unused,
            num_heads: options.heads,
            // The model takes its weights once more next to what the importer holds.
            max_weight_bytes: available.map(|free| free / 2),
            limit_reason: available.map_or_else(String::new, |free| {
                format!(
                    "this machine has {} MiB available, and importing holds the weights twice",
                    free >> 20
                )
            }),
        },
    )
    .with_context(|| {
        format!(
            "{}{} is not a usable checkpoint (expected a dinoscope .safetensors, an official DINO / DINOv2 / DINOv3 .pth, or Hugging Face ViT / Dinov2 / DINOv3 weights)",
            path.display(),
            if from_config { " (with the config.json beside it)" } else { "" }
        )
    })
    .and_then(|mut imported| {
        if imported.source != SourceKind::Dinoscope && imported.config.vit.normalization.is_none() {
            imported.config.vit.normalization = training_statistics(path)?;
        }
        Ok(imported)
    })
}

/// The pixel statistics a foreign file's weights were trained with, when they are not
/// ImageNet's: a Hugging Face `preprocessor_config.json` beside the file says them, and
/// DINOv3's satellite releases are named `*sat493m*`.
fn training_statistics(path: &Path) -> Result<Option<dino_model::Normalization>> {
    let preprocessor = path
        .parent()
        .map(|d| d.join("preprocessor_config.json"))
        .filter(|p| p.is_file());
    if let Some(p) = preprocessor {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", p.display()))?;
        let triple = |field: &str| -> Option<[f32; 3]> {
            let v = json.get(field)?.as_array()?;
            let f: Vec<f32> = v
                .iter()
                .filter_map(|x| x.as_f64())
                .map(|x| x as f32)
                .collect();
            <[f32; 3]>::try_from(f).ok()
        };
        if let (Some(mean), Some(std)) = (triple("image_mean"), triple("image_std")) {
            let norm = dino_model::Normalization { mean, std };
            norm.validate()
                .with_context(|| format!("{}: image_mean / image_std", p.display()))?;
            return Ok((norm != dino_model::Normalization::IMAGENET).then_some(norm));
        }
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    Ok(name
        .contains("sat493m")
        .then_some(dino_model::Normalization::SAT493M))
}

/// Builds the model of an imported file on `device`.
pub fn build_model(imported: &Imported, path: &Path, device: &Device) -> Result<DinoModel> {
    imported
        .config
        .load(&imported.tensors, "", device)
        .with_context(|| format!("loading the weights of {}", path.display()))
}
