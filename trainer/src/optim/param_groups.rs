//! DINOv2's parameter groups (`utils/param_groups.py` `get_params_groups_with_decay`): a
//! learning-rate multiplier per parameter from layer-wise decay (the embeddings learn slowest,
//! the last block and the heads fastest) and the patch-embedding multiplier, no weight decay
//! on biases, norms and LayerScale, and the head's last layer marked for its frozen epochs.
//!
//! Names are the official ones (`backbone.blocks.3.attn.qkv.weight`, `dino_head.last_layer.
//! weight_g`), as `optim::official_param_name` gives them.

/// The multipliers of one parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamGroup {
    /// Multiplies the scheduled learning rate.
    pub lr_multiplier: f64,
    /// Multiplies the scheduled weight decay (0 or 1).
    pub wd_multiplier: f64,
    /// Whether the head's last layer (its learning rate is 0 while frozen).
    pub is_last_layer: bool,
}

/// The group of the parameter `name` (official naming, `backbone.` or a head prefix) in a
/// backbone of `depth` blocks, with `layer_decay` (0.9 for ViT-S/B, 1.0 for ViT-L/g) and
/// `patch_embed_lr_mult` (0.2).
pub fn dinov2_param_group(
    name: &str,
    depth: usize,
    layer_decay: f64,
    patch_embed_lr_mult: f64,
) -> ParamGroup {
    // Each sub-model is grouped on its own: inside the backbone every name counts as
    // backbone; a head has no blocks, so its layer id is 0 + 1 and its multiplier 1.
    let (layers, layer_id) = match name.strip_prefix("backbone.") {
        Some(inner) => {
            let embedding = [
                "pos_embed",
                "patch_embed",
                "mask_token",
                "cls_token",
                "register_tokens",
            ]
            .iter()
            .any(|k| inner.contains(k));
            let block = inner
                .strip_prefix("blocks.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|i| i.parse::<usize>().ok());
            let id = if embedding {
                0
            } else if let Some(i) = block {
                i + 1
            } else {
                depth + 1
            };
            (depth, id)
        }
        None => (0, 1),
    };
    let mut lr_multiplier = layer_decay.powi((layers + 1 - layer_id) as i32);
    if name.contains("patch_embed") {
        lr_multiplier *= patch_embed_lr_mult;
    }
    let no_decay = name.ends_with(".bias") || name.contains("norm") || name.contains("gamma");
    ParamGroup {
        lr_multiplier,
        wd_multiplier: if no_decay { 0.0 } else { 1.0 },
        is_last_layer: name.contains("last_layer"),
    }
}
