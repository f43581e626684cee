//! Hugging Face ports (`ViTModel`, `Dinov2Model`, `Dinov2WithRegistersModel`,
//! `DINOv3ViTModel`): how each names the official tensors, and the renaming back.

use std::collections::BTreeSet;

use crate::error::{ModelError, Result};
use crate::tensors::{RawTensor, TensorMap};

use super::infer::infer_err;

/// Keeps the entries under `prefix` (stripped) and returns the rest's names; the tensors
/// move, they are not copied (a file's weights can be most of the memory there is).
pub(super) fn select(map: TensorMap, prefix: &str) -> (TensorMap, Vec<String>) {
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

/// Renaming from one key layout to the official one, remembering what was consumed.
pub(super) struct Renamer<'a> {
    from: &'a TensorMap,
    out: TensorMap,
    used: BTreeSet<String>,
}

impl<'a> Renamer<'a> {
    pub(super) fn new(from: &'a TensorMap) -> Self {
        Self {
            from,
            out: TensorMap::new(),
            used: BTreeSet::new(),
        }
    }

    pub(super) fn mv(&mut self, from: &str, to: &str) {
        if let Some(t) = self.from.get(from) {
            self.out.insert(to.to_string(), t.clone());
            self.used.insert(from.to_string());
        }
    }

    pub(super) fn mv_both(&mut self, from: &str, to: &str) {
        for s in ["weight", "bias"] {
            self.mv(&format!("{from}.{s}"), &format!("{to}.{s}"));
        }
    }

    /// Stacks query, key and value rows into the official fused `qkv`; a missing part
    /// (DINOv3 drops the key bias, which is masked to zero) is filled with zeros when
    /// `zero_missing`.
    pub(super) fn fuse_qkv(
        &mut self,
        parts: [String; 3],
        to: &str,
        zero_missing: bool,
    ) -> Result<()> {
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
        match fused.first_mut() {
            Some(rows) => *rows *= 3,
            None => return infer_err(format!("`{}` has no dimensions", parts[0])),
        }
        self.out.insert(to.to_string(), RawTensor::new(fused, data));
        Ok(())
    }

    pub(super) fn finish(self) -> (TensorMap, Vec<String>) {
        let rest = self
            .from
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect();
        (self.out, rest)
    }
}

pub(super) fn depth_of(map: &TensorMap, fmt: impl Fn(usize) -> String) -> usize {
    (0..).take_while(|i| map.contains_key(&fmt(*i))).count()
}

/// How a Hugging Face port names the official tensors: renames of single tensors and of
/// `weight`/`bias` pairs, at the top and per block, and the separate q, k, v projections.
pub(super) struct HfLayout {
    /// Single tensors outside the blocks: (port, official).
    pub(super) top: &'static [(&'static str, &'static str)],
    /// `weight`/`bias` pairs outside the blocks.
    pub(super) top_pairs: &'static [(&'static str, &'static str)],
    /// Prefix of block `i`: `encoder.layer` (ViT, DINOv2) or `layer` (DINOv3).
    pub(super) blocks: &'static str,
    /// Single tensors inside a block.
    pub(super) block: &'static [(&'static str, &'static str)],
    /// `weight`/`bias` pairs inside a block.
    pub(super) block_pairs: &'static [(&'static str, &'static str)],
    /// Names of the query, key and value projections inside a block (without `.weight`).
    pub(super) qkv: [&'static str; 3],
    /// Whether a missing key bias is zero (DINOv3 drops its masked key bias).
    pub(super) zero_missing_bias: bool,
}

/// `ViTModel` (DINO v1 on the Hub).
pub(super) const HF_VIT: HfLayout = HfLayout {
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
pub(super) const HF_DINOV2: HfLayout = HfLayout {
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
pub(super) const HF_DINOV3: HfLayout = HfLayout {
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
pub(super) const HF_DINOV3_GATED: HfLayout = HfLayout {
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
pub(super) fn from_hf_layout(
    map: &TensorMap,
    layout: &HfLayout,
) -> Result<(TensorMap, Vec<String>)> {
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
pub(super) fn from_hf_dinov3(map: &TensorMap) -> Result<(TensorMap, Vec<String>)> {
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
pub(super) fn hugging_face_class(map: &TensorMap) -> Option<&'static str> {
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
pub(super) fn hugging_face_backbone(map: TensorMap) -> (TensorMap, Vec<String>) {
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
