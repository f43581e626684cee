//! The architecture of a weight file from its tensors' names and shapes, checked against
//! what the format says (a Hugging Face `config.json`, a head count given by the user).

use serde_json::Value;

use crate::config::{
    DINO_LAYER_NORM_EPS, DINOV3_LAYER_NORM_EPS, Family, Ffn, HeadConfig, ModelConfig, PosInterp,
    Position, VitConfig,
};
use crate::error::{ModelError, Result};
use crate::tensors::TensorMap;
use crate::vit::weights::expected_shapes;

pub(super) fn infer_err<T>(reason: impl Into<String>) -> Result<T> {
    Err(ModelError::Infer {
        reason: reason.into(),
    })
}

pub(super) fn dims(map: &TensorMap, name: &str) -> Result<Vec<usize>> {
    map.get(name)
        .map(|t| t.shape.clone())
        .ok_or_else(|| ModelError::Infer {
            reason: format!("tensor `{name}` is missing"),
        })
}

/// The first dimension of the weight matrix `name` (its output features), refusing a tensor
/// that is not a matrix.
pub(super) fn rows(map: &TensorMap, name: &str) -> Result<usize> {
    match dims(map, name)?[..] {
        [rows, _] => Ok(rows),
        ref other => infer_err(format!(
            "tensor `{name}` has shape {other:?}; a weight matrix has two dimensions"
        )),
    }
}

/// What a Hugging Face `config.json` says, as far as the architecture goes.
#[derive(Debug, Clone, Default)]
pub(super) struct HfConfig {
    pub(super) json: Option<serde_json::Map<String, Value>>,
}

impl HfConfig {
    pub(super) fn parse(text: Option<&str>) -> Result<Self> {
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

    pub(super) fn get(&self, field: &str) -> Option<&Value> {
        self.json.as_ref()?.get(field)
    }

    /// The field converted by `conv`, `None` when absent or null, an error naming the
    /// field when it has another type than `expected`.
    pub(super) fn field<T>(
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

    pub(super) fn usize(&self, field: &str) -> Result<Option<usize>> {
        self.field(field, "a non-negative integer", |v| {
            v.as_u64().map(|n| n as usize)
        })
    }

    pub(super) fn f64(&self, field: &str) -> Result<Option<f64>> {
        self.field(field, "a number", Value::as_f64)
    }

    pub(super) fn bool(&self, field: &str) -> Result<Option<bool>> {
        self.field(field, "true or false", Value::as_bool)
    }

    /// Errors unless the field is absent or equals what the tensors say.
    pub(super) fn agree(&self, field: &str, found: usize, what: &str) -> Result<()> {
        match self.usize(field)? {
            Some(v) if v != found => Err(ModelError::ConfigMismatch {
                field: field.into(),
                reason: format!("config.json says {v}, but the tensors hold {found} ({what})"),
            }),
            _ => Ok(()),
        }
    }

    pub(super) fn agree_bool(&self, field: &str, found: bool, what: &str) -> Result<()> {
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
pub(super) struct Hints {
    /// LayerNorm epsilon, when the format fixes it.
    pub(super) eps: Option<f64>,
    /// Family, when the format fixes it (Hugging Face classes).
    pub(super) family: Option<Family>,
    /// RoPE base.
    pub(super) rope_base: Option<f64>,
    /// The Hugging Face config, checked against the tensors.
    pub(super) hf: HfConfig,
    /// Head count given by the user.
    pub(super) num_heads: Option<usize>,
}

/// The family of a state dict under the official names.
pub(super) fn detect_family(map: &TensorMap) -> Family {
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
pub(super) fn arch_name(family: Family, dim: usize, depth: usize, ffn: &Ffn) -> String {
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

pub(super) fn infer_config_with(map: &TensorMap, hints: &Hints) -> Result<ModelConfig> {
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

    let ffn = if map.contains_key("blocks.0.mlp.fc1.weight") {
        hf.agree_bool("use_swiglu_ffn", false, "blocks have fc1/fc2")?;
        hf.agree_bool("use_gated_mlp", false, "blocks have fc1/fc2")?;
        hf.agree(
            "intermediate_size",
            rows(map, "blocks.0.mlp.fc1.weight")?,
            "rows of mlp.fc1",
        )?;
        Ffn::Mlp
    } else if map.contains_key("blocks.0.mlp.w12.weight") {
        hf.agree_bool("use_swiglu_ffn", true, "blocks have a packed SwiGLU w12")?;
        Ffn::SwiGluPacked {
            hidden: rows(map, "blocks.0.mlp.w12.weight")? / 2,
        }
    } else if map.contains_key("blocks.0.mlp.w1.weight") {
        hf.agree_bool("use_gated_mlp", true, "blocks have SwiGLU w1/w2/w3")?;
        let hidden = rows(map, "blocks.0.mlp.w1.weight")?;
        hf.agree("intermediate_size", hidden, "rows of mlp.w1")?;
        Ffn::SwiGlu { hidden }
    } else {
        return infer_err("block 0 has no feed-forward weights (`mlp.fc1`, `mlp.w12` or `mlp.w1`)");
    };
    let hidden = match ffn {
        Ffn::Mlp => rows(map, "blocks.0.mlp.fc1.weight")?,
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

pub(super) fn infer_head(map: &TensorMap, dim: usize) -> Result<Option<HeadConfig>> {
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
    let hidden_dim = rows(map, &first)?;
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
