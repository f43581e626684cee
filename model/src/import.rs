//! Import of real-world weight files into our checkpoint layout, with the architecture
//! inferred from tensor shapes.
//!
//! Supported: official DINO backbone releases (`dino_deitsmall16_pretrain.pth`), official
//! training checkpoints (`checkpoint.pth` with `teacher`/`student` and `module.`/`backbone.`
//! prefixes), Hugging Face `ViTModel` safetensors (`facebook/dino-vits16`), timm-style
//! safetensors with the official names, and our own checkpoints.

use std::collections::BTreeSet;

use crate::checkpoint::{CONFIG_KEY, read_checkpoint, read_safetensors};
use crate::config::{DINO_LAYER_NORM_EPS, HF_LAYER_NORM_EPS, HeadConfig, ModelConfig, VitConfig};
use crate::error::{ModelError, Result};
use crate::pth::{is_zip, read_pth};
use crate::weights::{RawTensor, TensorMap, expected_shapes};

/// Which part of a training checkpoint to import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Which {
    /// The EMA teacher (what the official `visualize_attention.py` uses by default).
    #[default]
    Teacher,
    /// The student.
    Student,
}

/// What kind of file the weights came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// A dinoscope checkpoint.
    Dinoscope,
    /// A PyTorch state dict of the backbone (official release).
    PthBackbone,
    /// A full official training checkpoint; the string says which network was taken.
    PthTraining(String),
    /// Hugging Face `ViTModel` safetensors.
    HuggingFace,
    /// Safetensors with the official key names but no dinoscope config.
    Safetensors,
}

/// Weights in our canonical names with the config inferred for them.
#[derive(Debug, Clone)]
pub struct Imported {
    /// Inferred (or stored) model configuration.
    pub config: ModelConfig,
    /// Tensors under the canonical names (backbone bare, head under `head.`).
    pub tensors: TensorMap,
    /// What the file was.
    pub source: SourceKind,
    /// Tensors of the file that were not used (pooler, optimizer state, …).
    pub ignored: Vec<String>,
}

fn infer_err<T>(reason: impl Into<String>) -> Result<T> {
    Err(ModelError::Infer {
        reason: reason.into(),
    })
}

fn strip_prefix_all(map: TensorMap, prefix: &str) -> TensorMap {
    if !map.keys().all(|k| k.starts_with(prefix)) {
        return map;
    }
    map.into_iter()
        .map(|(k, v)| (k[prefix.len()..].to_string(), v))
        .collect()
}

/// Keeps the entries under `prefix` (stripped) and returns the rest's names.
fn select(map: &TensorMap, prefix: &str) -> (TensorMap, Vec<String>) {
    let mut kept = TensorMap::new();
    let mut rest = Vec::new();
    for (k, v) in map {
        match k.strip_prefix(prefix) {
            Some(s) => {
                kept.insert(s.to_string(), v.clone());
            }
            None => rest.push(k.clone()),
        }
    }
    (kept, rest)
}

fn dims(map: &TensorMap, name: &str) -> Result<Vec<usize>> {
    map.get(name)
        .map(|t| t.shape.clone())
        .ok_or_else(|| ModelError::Infer {
            reason: format!("tensor `{name}` is missing"),
        })
}

/// Infers the full config from tensors under canonical names.
pub fn infer_config(map: &TensorMap, layer_norm_eps: f64) -> Result<ModelConfig> {
    let patch = dims(map, "patch_embed.proj.weight")?;
    let [dim, 3, p, p2] = patch[..] else {
        return infer_err(format!(
            "patch_embed.proj.weight has shape {patch:?}, expected [dim, 3, p, p]"
        ));
    };
    if p != p2 || p == 0 {
        return infer_err(format!("non-square patch {p}x{p2}"));
    }
    let depth = (0..)
        .take_while(|i| map.contains_key(&format!("blocks.{i}.attn.qkv.weight")))
        .count();
    if depth == 0 {
        return infer_err("no `blocks.0.attn.qkv.weight`: not a Vision Transformer");
    }
    // Head count is not visible in any shape; every official DINO ViT uses 64-wide heads.
    if dim % 64 != 0 {
        return infer_err(format!(
            "width {dim} is not a multiple of the 64-wide heads of the official ViTs"
        ));
    }
    let num_heads = dim / 64;
    let pos = dims(map, "pos_embed")?;
    let tokens = match pos[..] {
        [1, t, d] if d == dim && t >= 2 => t - 1,
        _ => {
            return infer_err(format!(
                "pos_embed has shape {pos:?}, expected [1, 1 + grid², {dim}]"
            ));
        }
    };
    let grid = (tokens as f64).sqrt().round() as usize;
    if grid * grid != tokens {
        return infer_err(format!(
            "pos_embed holds {tokens} patch positions, not a square grid"
        ));
    }
    let fc1 = dims(map, "blocks.0.mlp.fc1.weight")?;
    let hidden = fc1[0];
    let mut vit = VitConfig {
        arch: "custom".into(),
        patch_size: p,
        img_size: grid * p,
        embed_dim: dim,
        depth,
        num_heads,
        mlp_ratio: hidden as f64 / dim as f64,
        qkv_bias: map.contains_key("blocks.0.attn.qkv.bias"),
        layer_norm_eps,
        drop_path_rate: 0.0,
    };
    for preset in ["vit_tiny", "vit_small", "vit_base"] {
        let mut candidate = VitConfig::by_name(preset, p)?;
        candidate.img_size = vit.img_size;
        candidate.layer_norm_eps = layer_norm_eps;
        if candidate
            == (VitConfig {
                arch: preset.into(),
                ..vit.clone()
            })
        {
            vit.arch = preset.into();
        }
    }
    let head = if map.contains_key("head.last_layer.weight_v") {
        let nlayers = (0..)
            .take_while(|i| map.contains_key(&format!("head.mlp.{}.weight", 2 * i)))
            .count();
        let nlayers = if nlayers == 0 && map.contains_key("head.mlp.weight") {
            1
        } else {
            nlayers
        };
        if nlayers == 0 {
            return infer_err("head.last_layer present but no head.mlp layers");
        }
        let first = if nlayers == 1 {
            "head.mlp.weight".to_string()
        } else {
            "head.mlp.0.weight".to_string()
        };
        let hidden_dim = dims(map, &first)?[0];
        let v = dims(map, "head.last_layer.weight_v")?;
        let [out_dim, bottleneck_dim] = v[..] else {
            return infer_err(format!("head.last_layer.weight_v has shape {v:?}"));
        };
        let g = map.get("head.last_layer.weight_g");
        let norm_last_layer = g.is_none_or(|g| g.data.iter().all(|&x| x == 1.0));
        Some(HeadConfig {
            in_dim: dim,
            out_dim,
            hidden_dim,
            bottleneck_dim,
            nlayers,
            norm_last_layer,
        })
    } else {
        None
    };
    let config = ModelConfig { vit, head };
    config.validate()?;
    Ok(config)
}

/// Checks that every tensor the config needs is present with the right shape and
/// returns the names in `map` that the model does not use.
pub fn check_tensors(config: &ModelConfig, map: &TensorMap) -> Result<Vec<String>> {
    let expected = expected_shapes(config);
    for (name, shape) in &expected {
        match map.get(name) {
            None => {
                return Err(ModelError::MissingTensor {
                    name: name.clone(),
                    expected: shape.clone(),
                });
            }
            Some(t) if &t.shape != shape => {
                return Err(ModelError::ShapeMismatch {
                    name: name.clone(),
                    expected: shape.clone(),
                    found: t.shape.clone(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(map
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .cloned()
        .collect())
}

/// Renames a Hugging Face `ViTModel` state dict to the official names, fusing q, k, v.
fn from_hugging_face(map: TensorMap) -> Result<(TensorMap, Vec<String>)> {
    let map = strip_prefix_all(map, "vit.");
    let mut out = TensorMap::new();
    let mut used = BTreeSet::new();
    let mv = |from: &str, to: &str, out: &mut TensorMap, used: &mut BTreeSet<String>| {
        if let Some(t) = map.get(from) {
            out.insert(to.to_string(), t.clone());
            used.insert(from.to_string());
        }
    };
    mv("embeddings.cls_token", "cls_token", &mut out, &mut used);
    mv(
        "embeddings.position_embeddings",
        "pos_embed",
        &mut out,
        &mut used,
    );
    for s in ["weight", "bias"] {
        mv(
            &format!("embeddings.patch_embeddings.projection.{s}"),
            &format!("patch_embed.proj.{s}"),
            &mut out,
            &mut used,
        );
        mv(
            &format!("layernorm.{s}"),
            &format!("norm.{s}"),
            &mut out,
            &mut used,
        );
    }
    let depth = (0..)
        .take_while(|i| {
            map.contains_key(&format!(
                "encoder.layer.{i}.attention.attention.query.weight"
            ))
        })
        .count();
    for i in 0..depth {
        let (src, dst) = (format!("encoder.layer.{i}"), format!("blocks.{i}"));
        for s in ["weight", "bias"] {
            mv(
                &format!("{src}.layernorm_before.{s}"),
                &format!("{dst}.norm1.{s}"),
                &mut out,
                &mut used,
            );
            mv(
                &format!("{src}.layernorm_after.{s}"),
                &format!("{dst}.norm2.{s}"),
                &mut out,
                &mut used,
            );
            mv(
                &format!("{src}.attention.output.dense.{s}"),
                &format!("{dst}.attn.proj.{s}"),
                &mut out,
                &mut used,
            );
            mv(
                &format!("{src}.intermediate.dense.{s}"),
                &format!("{dst}.mlp.fc1.{s}"),
                &mut out,
                &mut used,
            );
            mv(
                &format!("{src}.output.dense.{s}"),
                &format!("{dst}.mlp.fc2.{s}"),
                &mut out,
                &mut used,
            );
            let parts: Vec<String> = ["query", "key", "value"]
                .iter()
                .map(|q| format!("{src}.attention.attention.{q}.{s}"))
                .collect();
            if parts.iter().all(|n| map.contains_key(n)) {
                let tensors: Vec<&RawTensor> = parts.iter().map(|n| &map[n]).collect();
                let mut shape = tensors[0].shape.clone();
                if tensors.iter().any(|t| t.shape != shape) {
                    return infer_err(format!("{src}: query/key/value {s} shapes differ"));
                }
                shape[0] *= 3;
                let data = tensors
                    .iter()
                    .flat_map(|t| t.data.iter().copied())
                    .collect();
                out.insert(format!("{dst}.attn.qkv.{s}"), RawTensor::new(shape, data));
                used.extend(parts);
            }
        }
    }
    let ignored = map.keys().filter(|k| !used.contains(*k)).cloned().collect();
    Ok((out, ignored))
}

fn looks_like_hugging_face(map: &TensorMap) -> bool {
    map.keys()
        .any(|k| k.ends_with("embeddings.patch_embeddings.projection.weight"))
}

/// Normalises an official state dict: drops `module.` (DDP) and splits `backbone.`/`head.`.
fn from_official(map: TensorMap) -> (TensorMap, Vec<String>) {
    let map = strip_prefix_all(map, "module.");
    let map = strip_prefix_all(map, "model.");
    let map = strip_prefix_all(map, "state_dict.");
    let map = strip_prefix_all(map, "module.");
    if map.keys().any(|k| k.starts_with("backbone.")) {
        let mut out = TensorMap::new();
        let mut ignored = Vec::new();
        for (k, v) in map {
            if let Some(s) = k.strip_prefix("backbone.") {
                out.insert(s.to_string(), v);
            } else if k.starts_with("head.") {
                out.insert(k, v);
            } else {
                ignored.push(k);
            }
        }
        (out, ignored)
    } else {
        (map, Vec::new())
    }
}

/// Imports any supported weight file from its bytes.
pub fn import_bytes(bytes: &[u8], which: Which) -> Result<Imported> {
    if is_zip(bytes) {
        let raw = read_pth(bytes)?;
        let key = match which {
            Which::Teacher => "teacher.",
            Which::Student => "student.",
        };
        let has_training = raw
            .keys()
            .any(|k| k.starts_with("teacher.") || k.starts_with("student."));
        let (map, mut ignored, source) = if has_training {
            let (sel, rest) = select(&raw, key);
            if sel.is_empty() {
                return infer_err(format!(
                    "the training checkpoint has no `{}` weights",
                    key.trim_end_matches('.')
                ));
            }
            (
                sel,
                rest,
                SourceKind::PthTraining(key.trim_end_matches('.').to_string()),
            )
        } else {
            (raw, Vec::new(), SourceKind::PthBackbone)
        };
        let (map, more) = from_official(map);
        ignored.extend(more);
        return finish(map, DINO_LAYER_NORM_EPS, source, ignored);
    }
    // A safetensors file starts with its header length (u64 LE) and then the JSON header;
    // old pickles start with 0x80, and so does a header length of 128 mod 256, hence the `{`.
    if bytes.len() >= 8 && (bytes.first() != Some(&0x80) || bytes.get(8) == Some(&b'{')) {
        let (metadata, raw) = read_safetensors(bytes)?;
        if metadata.contains_key(CONFIG_KEY) {
            let ckpt = read_checkpoint(bytes)?;
            let config = ckpt.require_config()?.clone();
            let (sel, rest): (TensorMap, Vec<String>) = {
                let mut sel = TensorMap::new();
                let mut rest = Vec::new();
                for (k, v) in ckpt.tensors {
                    if expected_shapes(&config).contains_key(&k) {
                        sel.insert(k, v);
                    } else {
                        rest.push(k);
                    }
                }
                (sel, rest)
            };
            check_tensors(&config, &sel)?;
            return Ok(Imported {
                config,
                tensors: sel,
                source: SourceKind::Dinoscope,
                ignored: rest,
            });
        }
        if looks_like_hugging_face(&raw) {
            let (map, ignored) = from_hugging_face(raw)?;
            return finish(map, HF_LAYER_NORM_EPS, SourceKind::HuggingFace, ignored);
        }
        let (map, ignored) = from_official(raw);
        return finish(map, DINO_LAYER_NORM_EPS, SourceKind::Safetensors, ignored);
    }
    Err(ModelError::UnknownFormat {
        reason: "expected a PyTorch .pth (zip) or a safetensors file".into(),
    })
}

fn finish(
    map: TensorMap,
    eps: f64,
    source: SourceKind,
    mut ignored: Vec<String>,
) -> Result<Imported> {
    let config = infer_config(&map, eps)?;
    let unused = check_tensors(&config, &map)?;
    let expected = expected_shapes(&config);
    let tensors: TensorMap = map
        .into_iter()
        .filter(|(k, _)| expected.contains_key(k))
        .collect();
    ignored.extend(unused);
    for (name, t) in &tensors {
        if t.data.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite { name: name.clone() });
        }
    }
    Ok(Imported {
        config,
        tensors,
        source,
        ignored,
    })
}
