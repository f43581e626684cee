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

use std::collections::BTreeSet;

use serde_json::Value;

use crate::checkpoint::{CONFIG_KEY, read_checkpoint, read_safetensors};
use crate::config::{
    DINO_LAYER_NORM_EPS, DINOV3_LAYER_NORM_EPS, Family, Ffn, HF_LAYER_NORM_EPS, HeadConfig,
    ModelConfig, PosInterp, Position, VitConfig,
};
use crate::error::{ModelError, Result};
use crate::pth::{is_zip, read_pth};
use crate::vit::rope_periods;
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

/// Keeps the entries under `prefix` (stripped) and returns the rest's names; the tensors
/// move, they are not copied (a file's weights can be most of the memory there is).
fn select(map: TensorMap, prefix: &str) -> (TensorMap, Vec<String>) {
    let mut kept = TensorMap::new();
    let mut rest = Vec::new();
    for (k, v) in map {
        match k.strip_prefix(prefix) {
            Some(s) => {
                kept.insert(s.to_string(), v);
            }
            None => rest.push(k),
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

/// Tensors that a file may carry and the backbone never needs: named, so that everything
/// else can be refused.
fn known_unused(name: &str) -> bool {
    // HF ViTModel's pooler; DINOv2/v3's iBOT head; DINOv3's norm for local crops (training
    // only); a classifier on top of the backbone.
    ["pooler.", "ibot_head.", "local_cls_norm.", "classifier."]
        .iter()
        .any(|p| name.starts_with(p))
}

/// What a Hugging Face `config.json` says, as far as the architecture goes.
#[derive(Debug, Clone, Default)]
struct HfConfig {
    json: Option<serde_json::Map<String, Value>>,
}

impl HfConfig {
    fn parse(text: Option<&str>) -> Result<Self> {
        let Some(text) = text else {
            return Ok(Self::default());
        };
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => Ok(Self { json: Some(m) }),
            Ok(_) => Err(ModelError::BadConfig {
                reason: "config.json is not a JSON object".into(),
            }),
            Err(e) => Err(ModelError::BadConfig {
                reason: format!("config.json: {e}"),
            }),
        }
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.json.as_ref()?.get(field)
    }

    /// The field converted by `conv`, `None` when absent or null, an error naming the
    /// field when it has another type than `expected`.
    fn field<T>(
        &self,
        field: &str,
        expected: &str,
        conv: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => conv(v).map(Some).ok_or_else(|| ModelError::ConfigMismatch {
                field: field.into(),
                reason: format!("expected {expected}, found {v}"),
            }),
        }
    }

    fn usize(&self, field: &str) -> Result<Option<usize>> {
        self.field(field, "a non-negative integer", |v| {
            v.as_u64().map(|n| n as usize)
        })
    }

    fn f64(&self, field: &str) -> Result<Option<f64>> {
        self.field(field, "a number", Value::as_f64)
    }

    fn bool(&self, field: &str) -> Result<Option<bool>> {
        self.field(field, "true or false", Value::as_bool)
    }

    /// Errors unless the field is absent or equals what the tensors say.
    fn agree(&self, field: &str, found: usize, what: &str) -> Result<()> {
        match self.usize(field)? {
            Some(v) if v != found => Err(ModelError::ConfigMismatch {
                field: field.into(),
                reason: format!("config.json says {v}, but the tensors hold {found} ({what})"),
            }),
            _ => Ok(()),
        }
    }

    fn agree_bool(&self, field: &str, found: bool, what: &str) -> Result<()> {
        match self.bool(field)? {
            Some(v) if v != found => Err(ModelError::ConfigMismatch {
                field: field.into(),
                reason: format!("config.json says {v}, but the tensors say {found} ({what})"),
            }),
            _ => Ok(()),
        }
    }
}

/// What the file format tells the inference beyond the tensors.
#[derive(Debug, Clone, Default)]
struct Hints {
    /// LayerNorm epsilon, when the format fixes it.
    eps: Option<f64>,
    /// Family, when the format fixes it (Hugging Face classes).
    family: Option<Family>,
    /// RoPE base.
    rope_base: Option<f64>,
    /// The Hugging Face config, checked against the tensors.
    hf: HfConfig,
    /// Head count given by the user.
    num_heads: Option<usize>,
}

/// The family of a state dict under the official names.
fn detect_family(map: &TensorMap) -> Family {
    let has = |k: &str| map.contains_key(k);
    if has("rope_embed.periods") || has("storage_tokens") || (!has("pos_embed") && has("cls_token"))
    {
        Family::Dinov3
    } else if has("mask_token") || has("register_tokens") || has("blocks.0.ls1.gamma") {
        Family::Dinov2
    } else {
        Family::Dino
    }
}

/// The official preset name for a width and depth.
fn arch_name(family: Family, dim: usize, depth: usize, ffn: &Ffn) -> String {
    let swiglu = !matches!(ffn, Ffn::Mlp);
    match (family, dim, depth, swiglu) {
        (_, 192, 12, false) => "vit_tiny",
        (_, 384, 12, false) => "vit_small",
        (Family::Dinov3, 384, 12, true) => "vit_small_plus",
        (_, 768, 12, false) => "vit_base",
        (Family::Dinov2 | Family::Dinov3, 1024, 24, false) => "vit_large",
        (Family::Dinov3, 1024, 24, true) => "vit_large_plus",
        (Family::Dinov3, 1280, 32, true) => "vit_huge_plus",
        (Family::Dinov2, 1536, 40, true) => "vit_giant2",
        (Family::Dinov3, 4096, 40, true) => "vit_7b",
        _ => "custom",
    }
    .to_string()
}

/// Infers the full config from tensors under canonical names.
pub fn infer_config(map: &TensorMap, layer_norm_eps: f64) -> Result<ModelConfig> {
    infer_config_with(
        map,
        &Hints {
            eps: Some(layer_norm_eps),
            ..Hints::default()
        },
    )
}

fn infer_config_with(map: &TensorMap, hints: &Hints) -> Result<ModelConfig> {
    let hf = &hints.hf;
    let patch = dims(map, "patch_embed.proj.weight")?;
    let [dim, 3, p, p2] = patch[..] else {
        return infer_err(format!(
            "patch_embed.proj.weight has shape {patch:?}, expected [dim, 3, p, p]"
        ));
    };
    if p != p2 || p == 0 {
        return infer_err(format!("non-square patch {p}x{p2}"));
    }
    hf.agree("hidden_size", dim, "the width of patch_embed")?;
    hf.agree("patch_size", p, "the patch of patch_embed")?;
    let depth = (0..)
        .take_while(|i| map.contains_key(&format!("blocks.{i}.attn.qkv.weight")))
        .count();
    if depth == 0 {
        return infer_err("no `blocks.0.attn.qkv.weight`: not a Vision Transformer");
    }
    hf.agree("num_hidden_layers", depth, "the number of blocks")?;
    let family = hints.family.unwrap_or_else(|| detect_family(map));

    // Head count is not visible in any weight shape: config.json says it, DINOv3's RoPE
    // periods imply it (head_dim / 4 of them), and every other official release uses 64-wide heads.
    let periods = map.get("rope_embed.periods");
    if let Some(h) = hints.num_heads {
        hf.agree("num_attention_heads", h, "the head count given")?;
    }
    let stated = hints.num_heads.or(hf.usize("num_attention_heads")?);
    let num_heads = match (stated, periods) {
        (Some(h), _) => {
            if h == 0 || dim % h != 0 {
                return Err(ModelError::ConfigMismatch {
                    field: "num_attention_heads".into(),
                    reason: format!("{h} heads do not divide the width {dim}"),
                });
            }
            h
        }
        (None, Some(t)) => {
            let n = t.numel();
            if t.shape.len() != 1 || n == 0 || dim % (4 * n) != 0 {
                return infer_err(format!(
                    "`rope_embed.periods` holds {n} periods (shape {:?}), which fits no head width of a {dim}-wide model (width = heads × 4 × periods): the file is truncated or corrupt",
                    t.shape
                ));
            }
            dim / (4 * n)
        }
        (None, None) => {
            if dim % 64 != 0 {
                return infer_err(format!(
                    "width {dim} is not a multiple of the 64-wide heads of the official ViTs; give the head count in a config.json"
                ));
            }
            dim / 64
        }
    };

    let registers = match map.get(family.register_key()) {
        Some(t) => match t.shape[..] {
            [1, r, d] if d == dim => r,
            _ => {
                return infer_err(format!(
                    "`{}` has shape {:?}, expected [1, registers, {dim}]",
                    family.register_key(),
                    t.shape
                ));
            }
        },
        None => 0,
    };
    hf.agree(
        "num_register_tokens",
        registers,
        &format!("`{}`", family.register_key()),
    )?;

    let (position, img_size) = if map.contains_key("pos_embed") {
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
        hf.agree(
            "image_size",
            grid * p,
            "the grid of pos_embed times the patch",
        )?;
        // The official DINOv2 `_reg` releases interpolate with antialiasing, the others with
        // the +0.1 offset (hub/backbones.py).
        let interp = if family == Family::Dinov2 && registers > 0 {
            PosInterp::Antialias
        } else {
            PosInterp::Offset
        };
        (Position::Learned { interp }, grid * p)
    } else if family == Family::Dinov3 {
        let base = hints.rope_base.unwrap_or(100.0);
        (
            Position::Rope { base },
            hf.usize("image_size")?.unwrap_or(224),
        )
    } else {
        return infer_err("tensor `pos_embed` is missing");
    };

    let ffn = if let Some(t) = map.get("blocks.0.mlp.fc1.weight") {
        hf.agree_bool("use_swiglu_ffn", false, "blocks have fc1/fc2")?;
        hf.agree_bool("use_gated_mlp", false, "blocks have fc1/fc2")?;
        hf.agree("intermediate_size", t.shape[0], "rows of mlp.fc1")?;
        Ffn::Mlp
    } else if let Some(t) = map.get("blocks.0.mlp.w12.weight") {
        hf.agree_bool("use_swiglu_ffn", true, "blocks have a packed SwiGLU w12")?;
        Ffn::SwiGluPacked {
            hidden: t.shape[0] / 2,
        }
    } else if let Some(t) = map.get("blocks.0.mlp.w1.weight") {
        hf.agree_bool("use_gated_mlp", true, "blocks have SwiGLU w1/w2/w3")?;
        hf.agree("intermediate_size", t.shape[0], "rows of mlp.w1")?;
        Ffn::SwiGlu { hidden: t.shape[0] }
    } else {
        return infer_err("block 0 has no feed-forward weights (`mlp.fc1`, `mlp.w12` or `mlp.w1`)");
    };
    let hidden = match ffn {
        Ffn::Mlp => dims(map, "blocks.0.mlp.fc1.weight")?[0],
        Ffn::SwiGluPacked { hidden } | Ffn::SwiGlu { hidden } => hidden,
    };
    if let (Ffn::Mlp, Some(ratio)) = (&ffn, hf.f64("mlp_ratio")?)
        && (dim as f64 * ratio) as usize != hidden
    {
        return Err(ModelError::ConfigMismatch {
            field: "mlp_ratio".into(),
            reason: format!(
                "config.json says {ratio}, but mlp.fc1 has {hidden} rows for width {dim}"
            ),
        });
    }
    let layer_scale = map.contains_key("blocks.0.ls1.gamma");
    let qkv_bias = map.contains_key("blocks.0.attn.qkv.bias");
    let layer_norm_eps = match (hf.f64("layer_norm_eps")?, hints.eps) {
        (Some(e), _) | (None, Some(e)) => e,
        (None, None) => match family {
            Family::Dinov3 => DINOV3_LAYER_NORM_EPS,
            _ => DINO_LAYER_NORM_EPS,
        },
    };
    let vit = VitConfig {
        arch: arch_name(family, dim, depth, &ffn),
        patch_size: p,
        img_size,
        embed_dim: dim,
        depth,
        num_heads,
        mlp_ratio: hidden as f64 / dim as f64,
        qkv_bias,
        layer_norm_eps,
        drop_path_rate: 0.0,
        family,
        num_register_tokens: registers,
        layer_scale,
        ffn,
        position,
        mask_k_bias: family == Family::Dinov3 && qkv_bias,
        normalization: None,
    };
    let head = infer_head(map, dim)?;
    let config = ModelConfig {
        vit,
        head,
        ibot_head: None,
    };
    config.validate()?;
    Ok(config)
}

fn infer_head(map: &TensorMap, dim: usize) -> Result<Option<HeadConfig>> {
    if !map.contains_key("head.last_layer.weight_v") {
        return Ok(None);
    }
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
    Ok(Some(HeadConfig {
        in_dim: dim,
        out_dim,
        hidden_dim,
        bottleneck_dim,
        nlayers,
        norm_last_layer,
        weight_norm: true,
    }))
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

/// Renaming from one key layout to the official one, remembering what was consumed.
struct Renamer<'a> {
    from: &'a TensorMap,
    out: TensorMap,
    used: BTreeSet<String>,
}

impl<'a> Renamer<'a> {
    fn new(from: &'a TensorMap) -> Self {
        Self {
            from,
            out: TensorMap::new(),
            used: BTreeSet::new(),
        }
    }

    fn mv(&mut self, from: &str, to: &str) {
        if let Some(t) = self.from.get(from) {
            self.out.insert(to.to_string(), t.clone());
            self.used.insert(from.to_string());
        }
    }

    fn mv_both(&mut self, from: &str, to: &str) {
        for s in ["weight", "bias"] {
            self.mv(&format!("{from}.{s}"), &format!("{to}.{s}"));
        }
    }

    /// Stacks query, key and value rows into the official fused `qkv`; a missing part
    /// (DINOv3 drops the key bias, which is masked to zero) is filled with zeros when
    /// `zero_missing`.
    fn fuse_qkv(&mut self, parts: [String; 3], to: &str, zero_missing: bool) -> Result<()> {
        let found: Vec<Option<&RawTensor>> = parts.iter().map(|n| self.from.get(n)).collect();
        let Some(shape) = found.iter().flatten().next().map(|t| t.shape.clone()) else {
            return Ok(());
        };
        if found.iter().flatten().any(|t| t.shape != shape) {
            return infer_err(format!(
                "`{}`, `{}` and `{}` differ in shape",
                parts[0], parts[1], parts[2]
            ));
        }
        let mut data = Vec::with_capacity(3 * shape.iter().product::<usize>());
        for (name, t) in parts.iter().zip(&found) {
            match t {
                Some(t) => data.extend_from_slice(&t.data),
                None if zero_missing => {
                    data.extend(std::iter::repeat_n(0.0, shape.iter().product::<usize>()))
                }
                None => {
                    return Err(ModelError::MissingTensor {
                        name: name.clone(),
                        expected: shape.clone(),
                    });
                }
            }
            self.used.insert(name.clone());
        }
        let mut fused = shape;
        fused[0] *= 3;
        self.out.insert(to.to_string(), RawTensor::new(fused, data));
        Ok(())
    }

    fn finish(self) -> (TensorMap, Vec<String>) {
        let rest = self
            .from
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect();
        (self.out, rest)
    }
}

fn depth_of(map: &TensorMap, fmt: impl Fn(usize) -> String) -> usize {
    (0..).take_while(|i| map.contains_key(&fmt(*i))).count()
}

/// How a Hugging Face port names the official tensors: renames of single tensors and of
/// `weight`/`bias` pairs, at the top and per block, and the separate q, k, v projections.
struct HfLayout {
    /// Single tensors outside the blocks: (port, official).
    top: &'static [(&'static str, &'static str)],
    /// `weight`/`bias` pairs outside the blocks.
    top_pairs: &'static [(&'static str, &'static str)],
    /// Prefix of block `i`: `encoder.layer` (ViT, DINOv2) or `layer` (DINOv3).
    blocks: &'static str,
    /// Single tensors inside a block.
    block: &'static [(&'static str, &'static str)],
    /// `weight`/`bias` pairs inside a block.
    block_pairs: &'static [(&'static str, &'static str)],
    /// Names of the query, key and value projections inside a block (without `.weight`).
    qkv: [&'static str; 3],
    /// Whether a missing key bias is zero (DINOv3 drops its masked key bias).
    zero_missing_bias: bool,
}

/// `ViTModel` (DINO v1 on the Hub).
const HF_VIT: HfLayout = HfLayout {
    top: &[
        ("embeddings.cls_token", "cls_token"),
        ("embeddings.position_embeddings", "pos_embed"),
    ],
    top_pairs: &[
        ("embeddings.patch_embeddings.projection", "patch_embed.proj"),
        ("layernorm", "norm"),
    ],
    blocks: "encoder.layer",
    block: &[],
    block_pairs: &[
        ("layernorm_before", "norm1"),
        ("layernorm_after", "norm2"),
        ("attention.output.dense", "attn.proj"),
        ("intermediate.dense", "mlp.fc1"),
        ("output.dense", "mlp.fc2"),
    ],
    qkv: [
        "attention.attention.query",
        "attention.attention.key",
        "attention.attention.value",
    ],
    zero_missing_bias: false,
};

/// `Dinov2Model` and `Dinov2WithRegistersModel` (the inverse of `convert_dinov2_to_hf.py`).
const HF_DINOV2: HfLayout = HfLayout {
    top: &[
        ("embeddings.cls_token", "cls_token"),
        ("embeddings.mask_token", "mask_token"),
        ("embeddings.position_embeddings", "pos_embed"),
        ("embeddings.register_tokens", "register_tokens"),
    ],
    top_pairs: &[
        ("embeddings.patch_embeddings.projection", "patch_embed.proj"),
        ("layernorm", "norm"),
    ],
    blocks: "encoder.layer",
    block: &[
        ("layer_scale1.lambda1", "ls1.gamma"),
        ("layer_scale2.lambda1", "ls2.gamma"),
    ],
    block_pairs: &[
        ("norm1", "norm1"),
        ("norm2", "norm2"),
        ("attention.output.dense", "attn.proj"),
        ("mlp.fc1", "mlp.fc1"),
        ("mlp.fc2", "mlp.fc2"),
        ("mlp.weights_in", "mlp.w12"),
        ("mlp.weights_out", "mlp.w3"),
    ],
    qkv: HF_VIT.qkv,
    zero_missing_bias: false,
};

/// `DINOv3ViTModel` with an MLP (the inverse of `convert_dinov3_vit_to_hf.py`, which drops
/// the masked key bias and the RoPE periods).
const HF_DINOV3: HfLayout = HfLayout {
    top: &[
        ("embeddings.cls_token", "cls_token"),
        ("embeddings.mask_token", "mask_token"),
        ("embeddings.register_tokens", "storage_tokens"),
    ],
    top_pairs: &[
        ("embeddings.patch_embeddings", "patch_embed.proj"),
        ("norm", "norm"),
    ],
    blocks: "layer",
    block: &[
        ("layer_scale1.lambda1", "ls1.gamma"),
        ("layer_scale2.lambda1", "ls2.gamma"),
    ],
    block_pairs: &[
        ("norm1", "norm1"),
        ("norm2", "norm2"),
        ("attention.o_proj", "attn.proj"),
        ("mlp.up_proj", "mlp.fc1"),
        ("mlp.down_proj", "mlp.fc2"),
    ],
    qkv: ["attention.q_proj", "attention.k_proj", "attention.v_proj"],
    zero_missing_bias: true,
};

/// `DINOv3ViTModel` with the gated MLP (`use_gated_mlp`: SwiGLU w1, w2, w3).
const HF_DINOV3_GATED: HfLayout = HfLayout {
    block_pairs: &[
        ("norm1", "norm1"),
        ("norm2", "norm2"),
        ("attention.o_proj", "attn.proj"),
        ("mlp.gate_proj", "mlp.w1"),
        ("mlp.up_proj", "mlp.w2"),
        ("mlp.down_proj", "mlp.w3"),
    ],
    ..HF_DINOV3
};

/// A Hugging Face state dict in the official names, by its layout.
fn from_hf_layout(map: &TensorMap, layout: &HfLayout) -> Result<(TensorMap, Vec<String>)> {
    let mut r = Renamer::new(map);
    for (from, to) in layout.top {
        r.mv(from, to);
    }
    for (from, to) in layout.top_pairs {
        r.mv_both(from, to);
    }
    let blocks = layout.blocks;
    let [q, k, v] = layout.qkv;
    let depth = depth_of(map, |i| format!("{blocks}.{i}.{q}.weight"));
    for i in 0..depth {
        let (src, dst) = (format!("{blocks}.{i}"), format!("blocks.{i}"));
        for (from, to) in layout.block {
            r.mv(&format!("{src}.{from}"), &format!("{dst}.{to}"));
        }
        for (from, to) in layout.block_pairs {
            r.mv_both(&format!("{src}.{from}"), &format!("{dst}.{to}"));
        }
        for (s, zero_missing) in [("weight", false), ("bias", layout.zero_missing_bias)] {
            let parts = [q, k, v].map(|p| format!("{src}.{p}.{s}"));
            r.fuse_qkv(parts, &format!("{dst}.attn.qkv.{s}"), zero_missing)?;
        }
    }
    Ok(r.finish())
}

/// A Hugging Face `DINOv3ViTModel` state dict in the official names.
fn from_hf_dinov3(map: &TensorMap) -> Result<(TensorMap, Vec<String>)> {
    let gated = map.contains_key("layer.0.mlp.gate_proj.weight");
    let layout = if gated { &HF_DINOV3_GATED } else { &HF_DINOV3 };
    let mut map = map.clone();
    if let Some(t) = map.get_mut("embeddings.mask_token") {
        // [1, 1, dim] in the port, [1, dim] in the official code.
        let d = *t.shape.last().unwrap_or(&0);
        t.shape = vec![1, d];
    }
    from_hf_layout(&map, layout)
}

/// The Hugging Face model class of a state dict, judged by its key names.
fn hugging_face_class(map: &TensorMap) -> Option<&'static str> {
    let any = |suffix: &str| map.keys().any(|k| k.ends_with(suffix));
    if any("encoder.layer.0.layernorm_before.weight") {
        Some("ViTModel")
    } else if any("encoder.layer.0.norm1.weight")
        && any("embeddings.patch_embeddings.projection.weight")
    {
        if any("embeddings.register_tokens") {
            Some("Dinov2WithRegistersModel")
        } else {
            Some("Dinov2Model")
        }
    } else if any("layer.0.attention.q_proj.weight") {
        Some("DINOv3ViTModel")
    } else {
        None
    }
}

/// Keeps the backbone of a Hugging Face file: strips the base-model prefix of task models
/// (`vit.`, `dinov2.`, `dinov2_with_registers.`, `dinov3_vit.`) and sets the rest aside.
fn hugging_face_backbone(map: TensorMap) -> (TensorMap, Vec<String>) {
    for prefix in [
        "vit.",
        "dinov2.",
        "dinov2_with_registers.",
        "dinov3_vit.",
        "model.",
    ] {
        if map.keys().any(|k| k.starts_with(prefix)) {
            return select(map, prefix);
        }
    }
    (map, Vec::new())
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
        let raw = read_pth(bytes)?;
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
        if metadata.contains_key(CONFIG_KEY) {
            let ckpt = read_checkpoint(bytes)?;
            let config = ckpt.require_config()?.clone();
            let expected = expected_shapes(&config);
            let mut sel = TensorMap::new();
            let mut rest = Vec::new();
            for (k, v) in ckpt.tensors {
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
        let dim = dims(&map, "patch_embed.proj.weight")?[0];
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
