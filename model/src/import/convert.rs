//! Import of real-world weight files into our checkpoint layout, with the architecture
//! inferred from tensor shapes.
//!
//! Supported, for the three families (DINO, DINOv2, DINOv3):
//! - official backbone releases (`dino_deitsmall16_pretrain.pth`,
//!   `dinov2_vits14_reg4_pretrain.pth`, `dinov3_vits16_pretrain_lvd1689m-08c60483.pth`);
//! - official training checkpoints: DINO's `checkpoint.pth` (`teacher`/`student`, `module.`,
//!   `backbone.`/`head.`), DINOv2's `teacher_checkpoint.pth` (`{"teacher": …}`,
//!   `backbone.blocks.{chunk}.{i}`, `dino_head.`/`ibot_head.`) and its fvcore checkpoints
//!   (`model.teacher.…`);
//! - Hugging Face `ViTModel` (`facebook/dino-vits16`), `Dinov2Model`, `Dinov2WithRegistersModel`
//!   and `DINOv3ViTModel` safetensors, with their `config.json` when given;
//! - safetensors with the official names, and our own checkpoints.
//!
//! Every tensor of the file is either used, or known not to matter for the backbone (a
//! pooler, an iBOT head, a training-only norm, the other network of a training checkpoint);
//! anything else stops the import with its name, unless the caller allows unused tensors.

use crate::checkpoint::{config_from_metadata, read_safetensors};
use crate::config::{
    DINO_LAYER_NORM_EPS, DINOV3_LAYER_NORM_EPS, Family, HF_LAYER_NORM_EPS, ModelConfig,
};
use crate::error::{ModelError, Result};
use crate::tensors::{RawTensor, TensorMap};
use crate::vit::transformer::rope_periods;
use crate::vit::weights::expected_shapes;

use super::hf::{
    HF_DINOV2, HF_VIT, from_hf_dinov3, from_hf_layout, hugging_face_backbone, hugging_face_class,
    select,
};
use super::infer::{HfConfig, Hints, check_tensors, dims, infer_config_with, infer_err};
use super::pth::{PthLimits, is_zip, read_pth_with};

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
    /// Hugging Face safetensors; the string is the model class (`ViTModel`, `Dinov2Model`, …).
    HuggingFace(String),
    /// Safetensors with the official key names but no dinoscope config.
    Safetensors,
}

/// How to import a file.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The network of a training checkpoint.
    pub which: Which,
    /// The Hugging Face `config.json` that sits beside a `model.safetensors`, if any.
    pub hf_config: Option<String>,
    /// Import even when the file has tensors the importer does not understand (they are
    /// listed in [`Imported::ignored`]); by default such a file is refused.
    pub allow_unused: bool,
    /// Attention heads, for files that cannot say (an official `.pth` of a custom model
    /// whose heads are not 64 wide); overrides the inference, checked against config.json.
    pub num_heads: Option<usize>,
    /// Refuse models whose f32 weights exceed this many bytes (and say what they need):
    /// the browser's 4 GiB WebAssembly memory, or the machine's free memory.
    pub max_weight_bytes: Option<u64>,
    /// How that limit came about, for the message ("the browser's WebAssembly memory …").
    pub limit_reason: String,
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
    /// Tensors of the file that were not used (pooler, iBOT head, the other network, …).
    pub ignored: Vec<String>,
}

fn strip_prefix_all(map: TensorMap, prefix: &str) -> TensorMap {
    if !map.keys().all(|k| k.starts_with(prefix)) {
        return map;
    }
    map.into_iter()
        .map(|(k, v)| (k[prefix.len()..].to_string(), v))
        .collect()
}

/// Tensors that a file may carry and the backbone never needs: named, so that everything
/// else can be refused.
fn known_unused(name: &str) -> bool {
    // HF ViTModel's pooler; DINOv2/v3's iBOT head; DINOv3's norm for local crops (training
    // only); a classifier on top of the backbone.
    ["pooler.", "ibot_head.", "local_cls_norm.", "classifier."]
        .iter()
        .any(|p| name.starts_with(p))
}

/// `blocks.{chunk}.{i}.…` (DINOv2 `block_chunks > 0`, with the global index `i`) → `blocks.{i}.…`.
fn unchunk_blocks(map: TensorMap) -> TensorMap {
    let chunked = |k: &str| -> Option<String> {
        let rest = k.strip_prefix("blocks.")?;
        let (chunk, rest) = rest.split_once('.')?;
        let (i, rest) = rest.split_once('.')?;
        (chunk.parse::<usize>().is_ok() && i.parse::<usize>().is_ok())
            .then(|| format!("blocks.{i}.{rest}"))
    };
    if !map.keys().any(|k| chunked(k).is_some()) {
        return map;
    }
    map.into_iter()
        .map(|(k, v)| match chunked(&k) {
            Some(new) => (new, v),
            None => (k, v),
        })
        .collect()
}

/// Folds DINOv3's `qkv.bias_mask` buffers into the biases (`bias * bias_mask`, as
/// `LinearKMaskedBias.forward`), after checking they hold the official 1 / 0 / 1 pattern.
fn fold_bias_masks(mut map: TensorMap) -> Result<TensorMap> {
    let masks: Vec<String> = map
        .keys()
        .filter(|k| k.ends_with(".attn.qkv.bias_mask"))
        .cloned()
        .collect();
    for name in masks {
        let mask = map.remove(&name).expect("listed above");
        let bias_name = name.trim_end_matches("_mask").to_string();
        let n = mask.numel();
        let third = n / 3;
        let official = n.is_multiple_of(3)
            && mask.data.iter().enumerate().all(|(i, &m)| {
                let want = if (third..2 * third).contains(&i) {
                    0.0
                } else {
                    1.0
                };
                m == want
            });
        if !official {
            return infer_err(format!(
                "`{name}` is not the official key-bias mask (1 for queries and values, 0 for keys); the file is corrupt or was saved before init_weights"
            ));
        }
        let Some(bias) = map.get_mut(&bias_name) else {
            return Err(ModelError::MissingTensor {
                name: bias_name,
                expected: vec![n],
            });
        };
        if bias.numel() != n {
            return Err(ModelError::ShapeMismatch {
                name: bias_name,
                expected: vec![n],
                found: bias.shape.clone(),
            });
        }
        for (b, m) in bias.data.iter_mut().zip(&mask.data) {
            *b *= m;
        }
    }
    Ok(map)
}

/// Normalises an official state dict: drops `module.` (DDP) and similar wrappers, splits
/// `backbone.` from the DINO head (`head.`, DINOv2's `dino_head.`), un-chunks the blocks
/// and folds the key-bias masks.
fn from_official(map: TensorMap) -> Result<(TensorMap, Vec<String>)> {
    let map = strip_prefix_all(map, "module.");
    let map = strip_prefix_all(map, "model.");
    let map = strip_prefix_all(map, "state_dict.");
    let map = strip_prefix_all(map, "module.");
    let (map, rest) = if map.keys().any(|k| k.starts_with("backbone.")) {
        let mut out = TensorMap::new();
        let mut rest = Vec::new();
        for (k, v) in map {
            if let Some(s) = k.strip_prefix("backbone.") {
                out.insert(s.to_string(), v);
            } else if k.starts_with("head.") {
                out.insert(k, v);
            } else if let Some(s) = k.strip_prefix("dino_head.") {
                out.insert(format!("head.{s}"), v);
            } else {
                rest.push(k);
            }
        }
        (out, rest)
    } else {
        (map, Vec::new())
    };
    Ok((fold_bias_masks(unchunk_blocks(map))?, rest))
}

/// The training-checkpoint prefix of `which` in `raw`, when the file is one: `teacher.`
/// (DINO, DINOv2 `teacher_checkpoint.pth`) or `model.teacher.` (DINOv2 fvcore checkpoints).
fn training_prefix(raw: &TensorMap, which: Which) -> Option<(String, String)> {
    let net = match which {
        Which::Teacher => "teacher",
        Which::Student => "student",
    };
    for outer in ["", "model."] {
        let any_net = raw.keys().any(|k| {
            k.starts_with(&format!("{outer}teacher.")) || k.starts_with(&format!("{outer}student."))
        });
        if any_net {
            return Some((format!("{outer}{net}."), net.to_string()));
        }
    }
    None
}

/// Imports any supported weight file from its bytes.
pub fn import_bytes(bytes: &[u8], which: Which) -> Result<Imported> {
    import_with(
        bytes,
        &ImportOptions {
            which,
            ..ImportOptions::default()
        },
    )
}

/// Imports any supported weight file from its bytes, with options.
pub fn import_with(bytes: &[u8], options: &ImportOptions) -> Result<Imported> {
    let hf = HfConfig::parse(options.hf_config.as_deref())?;
    if is_zip(bytes) {
        let limits = options
            .max_weight_bytes
            .map_or_else(PthLimits::generous, |max| {
                PthLimits::both(max, options.limit_reason.clone())
            });
        let raw = read_pth_with(bytes, limits)?;
        let (map, other, source) = match training_prefix(&raw, options.which) {
            Some((prefix, net)) => {
                let (sel, rest) = select(raw, &prefix);
                if sel.is_empty() {
                    return infer_err(format!("the training checkpoint has no `{net}` weights"));
                }
                (sel, rest, SourceKind::PthTraining(net))
            }
            None => {
                // `pytorch_model.bin` of a Hugging Face repository is a pickle too.
                // The class is judged by key suffixes, so the prefix can stay until then.
                if let Some(class) = hugging_face_class(&raw) {
                    let (backbone, other) = hugging_face_backbone(raw);
                    return import_hugging_face(class, &backbone, other, hf, options);
                }
                (raw, Vec::new(), SourceKind::PthBackbone)
            }
        };
        let (map, rest) = from_official(map)?;
        let hints = Hints {
            hf,
            num_heads: options.num_heads,
            ..Hints::default()
        };
        return finish(map, hints, source, other, rest, options);
    }
    // A safetensors file starts with its header length (u64 LE) and then the JSON header;
    // old pickles start with 0x80, and so does a header length of 128 mod 256, hence the `{`.
    if bytes.len() >= 8 && (bytes.first() != Some(&0x80) || bytes.get(8) == Some(&b'{')) {
        let (metadata, raw) = read_safetensors(bytes)?;
        if let Some(config) = config_from_metadata(&metadata)? {
            // The tensors are already read: a dinoscope checkpoint is parsed once.
            let expected = expected_shapes(&config);
            let mut sel = TensorMap::new();
            let mut rest = Vec::new();
            for (k, v) in raw {
                if expected.contains_key(&k) {
                    sel.insert(k, v);
                } else {
                    // Our training checkpoints keep the student, optimizer and trainer state
                    // under their own prefixes next to the teacher.
                    rest.push(k);
                }
            }
            check_tensors(&config, &sel)?;
            return Ok(Imported {
                config,
                tensors: sel,
                source: SourceKind::Dinoscope,
                ignored: rest,
            });
        }
        if let Some(class) = hugging_face_class(&raw) {
            let (backbone, other) = hugging_face_backbone(raw);
            return import_hugging_face(class, &backbone, other, hf, options);
        }
        let (map, rest) = from_official(raw)?;
        let hints = Hints {
            hf,
            num_heads: options.num_heads,
            ..Hints::default()
        };
        return finish(
            map,
            hints,
            SourceKind::Safetensors,
            Vec::new(),
            rest,
            options,
        );
    }
    Err(ModelError::UnknownFormat {
        reason: "expected a PyTorch .pth (zip) or a safetensors file".into(),
    })
}

/// Imports a Hugging Face state dict of model class `class` (`ViTModel`, `Dinov2Model`, …).
fn import_hugging_face(
    class: &str,
    raw: &TensorMap,
    other: Vec<String>,
    hf: HfConfig,
    options: &ImportOptions,
) -> Result<Imported> {
    let (map, rest) = match class {
        "ViTModel" => from_hf_layout(raw, &HF_VIT)?,
        "DINOv3ViTModel" => from_hf_dinov3(raw)?,
        _ => from_hf_layout(raw, &HF_DINOV2)?,
    };
    let (family, eps) = match class {
        "ViTModel" => (Family::Dino, HF_LAYER_NORM_EPS),
        "DINOv3ViTModel" => (Family::Dinov3, DINOV3_LAYER_NORM_EPS),
        _ => (Family::Dinov2, DINO_LAYER_NORM_EPS),
    };
    let rope_base = hf.f64("rope_theta")?;
    let mut map = map;
    if family == Family::Dinov3 && !map.contains_key("rope_embed.periods") {
        // The port recomputes the periods from rope_theta; so do we.
        let dim = match dims(&map, "patch_embed.proj.weight")?[..] {
            [dim, ..] => dim,
            [] => return infer_err("tensor `patch_embed.proj.weight` has no dimensions"),
        };
        let heads = match options.num_heads.or(hf.usize("num_attention_heads")?) {
            Some(h) if h > 0 => h,
            _ => (dim / 64).max(1),
        };
        let periods = rope_periods(rope_base.unwrap_or(100.0), dim / heads);
        map.insert(
            "rope_embed.periods".into(),
            RawTensor::new(vec![periods.len()], periods),
        );
    }
    let hints = Hints {
        eps: Some(eps),
        family: Some(family),
        rope_base,
        hf,
        num_heads: options.num_heads,
    };
    finish(
        map,
        hints,
        SourceKind::HuggingFace(class.to_string()),
        other,
        rest,
        options,
    )
}

/// Infers the config, checks every tensor, and sorts the leftovers: `other` (parts of the
/// file that are not this network) and known extras are listed as ignored; anything else
/// is refused unless `allow_unused`.
fn finish(
    map: TensorMap,
    hints: Hints,
    source: SourceKind,
    other: Vec<String>,
    rest: Vec<String>,
    options: &ImportOptions,
) -> Result<Imported> {
    let config = infer_config_with(&map, &hints)?;
    if let Some(limit) = options.max_weight_bytes {
        let needed = config.vit.num_params() as u64 * 4;
        if needed > limit {
            return Err(ModelError::TooLarge {
                model: config.vit.describe(),
                needed_mib: needed.div_ceil(1 << 20),
                available: options.limit_reason.clone(),
            });
        }
    }
    let unused = check_tensors(&config, &map)?;
    let expected = expected_shapes(&config);
    let tensors: TensorMap = map
        .into_iter()
        .filter(|(k, _)| expected.contains_key(k))
        .collect();
    let mut ignored = other;
    let mut unknown = Vec::new();
    for name in rest.into_iter().chain(unused) {
        if known_unused(&name) || options.allow_unused {
            ignored.push(name);
        } else {
            unknown.push(name);
        }
    }
    if !unknown.is_empty() {
        return Err(ModelError::UnknownTensors {
            model: config.vit.describe(),
            names: unknown,
        });
    }
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
