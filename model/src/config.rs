//! Model configurations and the official presets.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// LayerNorm epsilon of the official DINO ViTs (`partial(nn.LayerNorm, eps=1e-6)`).
pub const DINO_LAYER_NORM_EPS: f64 = 1e-6;
/// LayerNorm epsilon of the Hugging Face `ViTModel` port (`layer_norm_eps` in its config.json).
pub const HF_LAYER_NORM_EPS: f64 = 1e-12;

/// Arithmetic of the network's matrix products: the official `--use_fp16` (PyTorch autocast).
///
/// `F16` keeps every weight, the residual stream, LayerNorm, softmax, the L2 normalisation and
/// the loss in f32 and runs the linear layers, GELU and attention in f16, as autocast does on
/// a GPU. Weights stay f32 masters; the trainer pairs it with dynamic loss scaling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere.
    #[default]
    F32,
    /// Mixed precision: f16 matrix products, f32 weights and reductions.
    F16,
}

/// Hyperparameters of a Vision Transformer backbone, as in `vision_transformer.py`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// Preset name (`vit_tiny`, `vit_small`, `vit_base`) or `custom`.
    pub arch: String,
    /// Side of a square patch in pixels.
    pub patch_size: usize,
    /// Image side the position embedding was trained for (its grid is `img_size / patch_size`).
    pub img_size: usize,
    /// Token width.
    pub embed_dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// MLP hidden width as a multiple of `embed_dim`.
    pub mlp_ratio: f64,
    /// Whether the fused qkv projection has a bias (true for every official preset).
    pub qkv_bias: bool,
    /// LayerNorm epsilon (1e-6 official, 1e-12 in the Hugging Face port).
    pub layer_norm_eps: f64,
    /// Stochastic-depth rate of the last block; earlier blocks get a linear ramp from 0.
    pub drop_path_rate: f64,
}

impl VitConfig {
    fn preset(arch: &str, patch_size: usize, embed_dim: usize, num_heads: usize) -> Self {
        Self {
            arch: arch.to_string(),
            patch_size,
            img_size: 224,
            embed_dim,
            depth: 12,
            num_heads,
            mlp_ratio: 4.0,
            qkv_bias: true,
            layer_norm_eps: DINO_LAYER_NORM_EPS,
            drop_path_rate: 0.0,
        }
    }

    /// ViT-Tiny: width 192, depth 12, 3 heads (`vit_tiny` in facebookresearch/dino `vision_transformer.py`).
    pub fn vit_tiny(patch_size: usize) -> Self {
        Self::preset("vit_tiny", patch_size, 192, 3)
    }

    /// ViT-Small: width 384, depth 12, 6 heads (`vit_small` in `vision_transformer.py`; DeiT-S, Touvron et al. 2021).
    pub fn vit_small(patch_size: usize) -> Self {
        Self::preset("vit_small", patch_size, 384, 6)
    }

    /// ViT-Base: width 768, depth 12, 12 heads (`vit_base` in `vision_transformer.py`; Dosovitskiy et al. 2021).
    pub fn vit_base(patch_size: usize) -> Self {
        Self::preset("vit_base", patch_size, 768, 12)
    }

    /// A preset by its official name (`vit_tiny`, `vit_small`, `vit_base`).
    pub fn by_name(arch: &str, patch_size: usize) -> Result<Self> {
        match arch {
            "vit_tiny" => Ok(Self::vit_tiny(patch_size)),
            "vit_small" => Ok(Self::vit_small(patch_size)),
            "vit_base" => Ok(Self::vit_base(patch_size)),
            other => Err(ModelError::InvalidConfig {
                reason: format!("unknown arch `{other}`; expected vit_tiny, vit_small or vit_base"),
            }),
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// Hidden width of the MLP (`int(dim * mlp_ratio)` as in the official code).
    pub fn mlp_hidden_dim(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// Side of the position-embedding grid stored in the weights.
    pub fn pos_grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Checks the constraints every forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(ModelError::InvalidConfig { reason });
        if self.patch_size == 0 || self.embed_dim == 0 || self.depth == 0 || self.num_heads == 0 {
            return bad("patch_size, embed_dim, depth and num_heads must be positive".into());
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return bad(format!(
                "embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        if self.img_size < self.patch_size || !self.img_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "img_size {} must be a positive multiple of patch_size {}",
                self.img_size, self.patch_size
            ));
        }
        if !(self.mlp_ratio > 0.0) || !(self.layer_norm_eps > 0.0) {
            return bad("mlp_ratio and layer_norm_eps must be positive".into());
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return bad(format!(
                "drop_path_rate {} must be in [0, 1)",
                self.drop_path_rate
            ));
        }
        Ok(())
    }
}

/// Hyperparameters of the DINO projection head (`DINOHead` in `vision_transformer.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// Input width (the backbone's `embed_dim`).
    pub in_dim: usize,
    /// Number of prototypes (official default 65536).
    pub out_dim: usize,
    /// Hidden width of the MLP (2048 official).
    pub hidden_dim: usize,
    /// Width of the L2-normalised bottleneck (256 official).
    pub bottleneck_dim: usize,
    /// Number of linear layers in the MLP before the bottleneck output (3 official).
    pub nlayers: usize,
    /// Whether the weight-norm gain of the last layer is frozen at 1.
    pub norm_last_layer: bool,
}

impl HeadConfig {
    /// The official head for a backbone of width `in_dim`: 3 layers, hidden 2048, bottleneck 256.
    pub fn dino(in_dim: usize, out_dim: usize) -> Self {
        Self {
            in_dim,
            out_dim,
            hidden_dim: 2048,
            bottleneck_dim: 256,
            nlayers: 3,
            norm_last_layer: true,
        }
    }

    /// Checks that the head can be built.
    pub fn validate(&self) -> Result<()> {
        if self.in_dim == 0
            || self.out_dim == 0
            || self.hidden_dim == 0
            || self.bottleneck_dim == 0
            || self.nlayers == 0
        {
            return Err(ModelError::InvalidConfig {
                reason: "every head dimension and nlayers must be positive".into(),
            });
        }
        Ok(())
    }
}

/// A backbone with an optional DINO head: what a checkpoint describes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The Vision Transformer.
    pub vit: VitConfig,
    /// The projection head, absent for backbone-only files such as the official releases.
    pub head: Option<HeadConfig>,
}

impl ModelConfig {
    /// Checks both parts.
    pub fn validate(&self) -> Result<()> {
        self.vit.validate()?;
        if let Some(head) = &self.head {
            head.validate()?;
            if head.in_dim != self.vit.embed_dim {
                return Err(ModelError::InvalidConfig {
                    reason: format!(
                        "head in_dim {} differs from backbone embed_dim {}",
                        head.in_dim, self.vit.embed_dim
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_official_numbers() {
        let s = VitConfig::vit_small(16);
        assert_eq!(
            (s.embed_dim, s.depth, s.num_heads, s.head_dim()),
            (384, 12, 6, 64)
        );
        assert_eq!(s.mlp_hidden_dim(), 1536);
        assert_eq!(VitConfig::vit_tiny(8).num_heads, 3);
        assert_eq!(VitConfig::vit_base(8).embed_dim, 768);
        assert!(VitConfig::by_name("vit_huge", 16).is_err());
    }

    #[test]
    fn validate_rejects_broken_configs() {
        let mut c = VitConfig::vit_small(16);
        c.num_heads = 5;
        assert!(c.validate().is_err());
        let mut c = VitConfig::vit_small(16);
        c.img_size = 100;
        assert!(c.validate().is_err());
        assert!(VitConfig::vit_small(16).validate().is_ok());
    }
}
