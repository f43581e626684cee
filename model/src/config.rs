//! Model configurations and the official presets.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// LayerNorm epsilon of the official DINO ViTs (`partial(nn.LayerNorm, eps=1e-6)`).
pub const DINO_LAYER_NORM_EPS: f64 = 1e-6;
/// LayerNorm epsilon of the Hugging Face `ViTModel` port (`layer_norm_eps` in its config.json).
pub const HF_LAYER_NORM_EPS: f64 = 1e-12;
/// LayerNorm epsilon of the DINOv3 releases (`norm_layer="layernormbf16"` in `hub/backbones.py`).
pub const DINOV3_LAYER_NORM_EPS: f64 = 1e-5;

/// The release line a backbone belongs to: it names the model and sets defaults (norm eps,
/// key names), while the math is chosen by the other fields of [`VitConfig`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// DINO (Caron et al. 2021), facebookresearch/dino.
    #[default]
    Dino,
    /// DINOv2 (Oquab et al. 2023), facebookresearch/dinov2, with or without registers.
    Dinov2,
    /// DINOv3 (Siméoni et al. 2025), facebookresearch/dinov3.
    Dinov3,
}

impl Family {
    /// The name users know the family by.
    pub fn display_name(self) -> &'static str {
        match self {
            Family::Dino => "DINO",
            Family::Dinov2 => "DINOv2",
            Family::Dinov3 => "DINOv3",
        }
    }

    /// Official key of the extra tokens between CLS and the patches.
    pub fn register_key(self) -> &'static str {
        match self {
            Family::Dinov3 => "storage_tokens",
            _ => "register_tokens",
        }
    }
}

/// Largest accepted image side in pixels: a guard against decompression bombs, and the
/// largest `img_size` a config may give.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Largest patch side a config may give.
pub const MAX_PATCH: usize = 256;
/// Largest width (backbone or head layer) a config may give.
pub const MAX_WIDTH: usize = 16_384;
/// Largest number of blocks a config may give.
pub const MAX_DEPTH: usize = 512;
/// Largest number of register (storage) tokens a config may give.
pub const MAX_REGISTERS: usize = 256;
/// Largest feed-forward expansion a config may give.
pub const MAX_MLP_RATIO: f64 = 16.0;
/// Largest number of head prototypes a config may give (official: 65,536 to 262,144).
pub const MAX_PROTOTYPES: usize = 1 << 22;
/// Largest number of head layers a config may give (official: 3).
pub const MAX_HEAD_LAYERS: usize = 16;

/// ImageNet channel means (torchvision `Normalize` in the official code).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Per-channel mean and standard deviation the pixels are normalised with: what the weights
/// were trained with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Channel means, RGB, of pixels in [0, 1].
    pub mean: [f32; 3],
    /// Channel standard deviations, RGB.
    pub std: [f32; 3],
}

impl Normalization {
    /// ImageNet statistics: DINO, DINOv2 and DINOv3's web-image (LVD-1689M) releases.
    pub const IMAGENET: Normalization = Normalization {
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };
    /// DINOv3's satellite releases (`*_sat493m-*.pth`), from the DINOv3 README.
    pub const SAT493M: Normalization = Normalization {
        mean: [0.430, 0.411, 0.296],
        std: [0.213, 0.156, 0.143],
    };
}

impl Normalization {
    /// Refuses statistics no image set has: non-finite, a deviation outside (1e-6, 1000] or a
    /// mean beyond ±1000 (pixels are in [0, 1]).
    pub fn validate(&self) -> Result<()> {
        let ok = self.mean.iter().all(|m| m.is_finite() && m.abs() <= 1e3)
            && self.std.iter().all(|s| *s > 1e-6 && *s <= 1e3);
        if ok {
            Ok(())
        } else {
            Err(ModelError::InvalidConfig {
                reason: format!(
                    "image mean {:?} / std {:?} are not pixel statistics (finite, |mean| <= 1000, std in (1e-6, 1000])",
                    self.mean, self.std
                ),
            })
        }
    }
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization::IMAGENET
    }
}

/// How a learned position embedding is resampled to another patch grid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PosInterp {
    /// `interpolate(scale_factor=(grid + 0.1) / M, mode="bicubic")`: DINO and the DINOv2
    /// releases without registers (`interpolate_offset=0.1`).
    #[default]
    Offset,
    /// `interpolate(size=grid, mode="bicubic", antialias=True)`: the DINOv2 `_reg` releases
    /// (`interpolate_antialias=True, interpolate_offset=0`).
    Antialias,
}

/// Where the tokens get their positions from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Position {
    /// A learned absolute embedding added to CLS and patches (DINO, DINOv2).
    Learned {
        /// How it is resized for other grids.
        interp: PosInterp,
    },
    /// Axial rotary embedding of queries and keys of the patch tokens (DINOv3).
    Rope {
        /// Base of the geometric period ladder (`pos_embed_rope_base`, 100 in every release).
        base: f64,
    },
}

impl Default for Position {
    fn default() -> Self {
        Position::Learned {
            interp: PosInterp::Offset,
        }
    }
}

/// The feed-forward network of a block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ffn {
    /// fc1 → GELU → fc2 with `int(dim * mlp_ratio)` hidden units.
    #[default]
    Mlp,
    /// SwiGLU with one packed input projection `w12` (DINOv2 `SwiGLUFFNFused`, ViT-g).
    SwiGluPacked {
        /// Hidden width (`w3` input).
        hidden: usize,
    },
    /// SwiGLU with separate `w1`, `w2` (DINOv3 `SwiGLUFFN`, the `plus` and 7B releases).
    SwiGlu {
        /// Hidden width (`w3` input).
        hidden: usize,
    },
}

/// Hidden width of DINOv2's `SwiGLUFFNFused` for a block of width `dim` and `mlp_ratio`.
pub fn dinov2_swiglu_hidden(dim: usize, mlp_ratio: f64) -> usize {
    let h = (dim as f64 * mlp_ratio) as usize;
    (h * 2 / 3).div_ceil(8) * 8
}

/// Hidden width of DINOv3's `SwiGLUFFN` (`int(hidden * 2 / 3)` rounded up to `align`).
pub fn dinov3_swiglu_hidden(dim: usize, ffn_ratio: f64, align: usize) -> usize {
    let d = ((dim as f64 * ffn_ratio) as usize * 2) / 3;
    d.div_ceil(align) * align
}

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
    /// Release line (names, defaults); absent in files written before DINOv2 support.
    #[serde(default)]
    pub family: Family,
    /// Register (DINOv2) or storage (DINOv3) tokens between CLS and the patches.
    #[serde(default)]
    pub num_register_tokens: usize,
    /// Whether each residual branch is scaled by a learned per-channel `gamma` (LayerScale).
    #[serde(default)]
    pub layer_scale: bool,
    /// MLP or SwiGLU.
    #[serde(default)]
    pub ffn: Ffn,
    /// Learned absolute position embedding or RoPE.
    #[serde(default)]
    pub position: Position,
    /// DINOv3's `mask_k_bias`: the key third of the qkv bias is held at zero.
    #[serde(default)]
    pub mask_k_bias: bool,
    /// Pixel statistics of the training data, when not ImageNet's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<Normalization>,
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
            family: Family::Dino,
            num_register_tokens: 0,
            layer_scale: false,
            ffn: Ffn::Mlp,
            position: Position::default(),
            mask_k_bias: false,
            normalization: None,
        }
    }

    /// A DINOv2 hub backbone (`dinov2_vit{s,b,l,g}14[_reg4]` in `hub/backbones.py`): patch 14,
    /// 518 px, LayerScale; `registers` 0 or 4 (the `_reg` releases interpolate with antialiasing).
    pub fn dinov2(size: &str, registers: usize) -> Result<Self> {
        let (arch, dim, depth, heads) = match size {
            "s" | "small" => ("vit_small", 384, 12, 6),
            "b" | "base" => ("vit_base", 768, 12, 12),
            "l" | "large" => ("vit_large", 1024, 24, 16),
            "g" | "giant" => ("vit_giant2", 1536, 40, 24),
            other => {
                return Err(ModelError::InvalidConfig {
                    reason: format!("unknown DINOv2 size `{other}`; expected s, b, l or g"),
                });
            }
        };
        let mut c = Self::preset(arch, 14, dim, heads);
        c.depth = depth;
        c.img_size = 518;
        c.family = Family::Dinov2;
        c.num_register_tokens = registers;
        c.layer_scale = true;
        if arch == "vit_giant2" {
            c.ffn = Ffn::SwiGluPacked {
                hidden: dinov2_swiglu_hidden(dim, 4.0),
            };
        }
        c.position = Position::Learned {
            interp: if registers > 0 {
                PosInterp::Antialias
            } else {
                PosInterp::Offset
            },
        };
        Ok(c)
    }

    /// A DINOv3 hub backbone (`dinov3_vit*16*` in `hub/backbones.py`): patch 16, RoPE base 100,
    /// 4 storage tokens, LayerScale, K-bias mask, LayerNorm eps 1e-5.
    pub fn dinov3(size: &str) -> Result<Self> {
        let (arch, dim, depth, heads, ffn) = match size {
            "s" | "small" => ("vit_small", 384, 12, 6, Ffn::Mlp),
            "s+" | "splus" => (
                "vit_small_plus",
                384,
                12,
                6,
                Ffn::SwiGlu {
                    hidden: dinov3_swiglu_hidden(384, 6.0, 8),
                },
            ),
            "b" | "base" => ("vit_base", 768, 12, 12, Ffn::Mlp),
            "l" | "large" => ("vit_large", 1024, 24, 16, Ffn::Mlp),
            "l+" | "lplus" => (
                "vit_large_plus",
                1024,
                24,
                16,
                Ffn::SwiGlu {
                    hidden: dinov3_swiglu_hidden(1024, 6.0, 8),
                },
            ),
            "h+" | "hplus" => (
                "vit_huge_plus",
                1280,
                32,
                20,
                Ffn::SwiGlu {
                    hidden: dinov3_swiglu_hidden(1280, 6.0, 8),
                },
            ),
            "7b" => (
                "vit_7b",
                4096,
                40,
                32,
                Ffn::SwiGlu {
                    hidden: dinov3_swiglu_hidden(4096, 3.0, 64),
                },
            ),
            other => {
                return Err(ModelError::InvalidConfig {
                    reason: format!(
                        "unknown DINOv3 size `{other}`; expected s, s+, b, l, h+ or 7b"
                    ),
                });
            }
        };
        let mut c = Self::preset(arch, 16, dim, heads);
        c.depth = depth;
        c.family = Family::Dinov3;
        c.num_register_tokens = 4;
        c.layer_scale = true;
        c.ffn = ffn;
        c.position = Position::Rope { base: 100.0 };
        c.mask_k_bias = true;
        c.layer_norm_eps = DINOV3_LAYER_NORM_EPS;
        c.qkv_bias = arch != "vit_7b";
        Ok(c)
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

    /// Hidden width of the feed-forward network (`int(dim * mlp_ratio)` for the MLP as in the
    /// official code; the stored width for SwiGLU).
    pub fn mlp_hidden_dim(&self) -> usize {
        match self.ffn {
            Ffn::Mlp => (self.embed_dim as f64 * self.mlp_ratio) as usize,
            Ffn::SwiGluPacked { hidden } | Ffn::SwiGlu { hidden } => hidden,
        }
    }

    /// Side of the position-embedding grid stored in the weights.
    pub fn pos_grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// The pixel normalisation the weights expect.
    pub fn normalization(&self) -> Normalization {
        self.normalization.unwrap_or(Normalization::IMAGENET)
    }

    /// Whether the model has a learned absolute position embedding (`pos_embed`).
    pub fn has_pos_embed(&self) -> bool {
        matches!(self.position, Position::Learned { .. })
    }

    /// Tokens before the patches: CLS and the registers.
    pub fn prefix_tokens(&self) -> usize {
        1 + self.num_register_tokens
    }

    /// Whether the model has the `mask_token` of masked-image modelling (DINOv2, DINOv3).
    pub fn has_mask_token(&self) -> bool {
        self.family != Family::Dino
    }

    /// Number of scalar weights of the backbone (for memory estimates before anything is built).
    pub fn num_params(&self) -> usize {
        let d = self.embed_dim;
        let h = self.mlp_hidden_dim();
        let ffn = match self.ffn {
            Ffn::Mlp => d * h + h + h * d + d,
            Ffn::SwiGluPacked { .. } | Ffn::SwiGlu { .. } => 2 * (d * h + h) + h * d + d,
        };
        let block =
            4 * d + 3 * d * d + 3 * d + d * d + d + ffn + if self.layer_scale { 2 * d } else { 0 };
        let pos = if self.has_pos_embed() {
            (1 + self.pos_grid() * self.pos_grid()) * d
        } else {
            0
        };
        3 * self.patch_size * self.patch_size * d
            + d
            + d * (1 + self.num_register_tokens)
            + pos
            + self.depth * block
            + 2 * d
            + if self.has_mask_token() { d } else { 0 }
    }

    /// "DINOv2 ViT-S/14, 4 registers, LayerScale": what `dino info` and the viewer call it.
    pub fn describe(&self) -> String {
        let size = match (self.embed_dim, self.depth) {
            (192, 12) => "Ti".to_string(),
            (384, 12) => "S".into(),
            (768, 12) => "B".into(),
            (1024, 24) => "L".into(),
            (1280, 32) => "H".into(),
            (1536, 40) => "g".into(),
            (4096, 40) => "7B".into(),
            (d, n) => format!("{d}x{n}"),
        };
        // DINOv3 calls its SwiGLU variants of ViT-S, L and H "plus" (vits16plus, vitl16plus, …).
        let plus = if self.family == Family::Dinov3
            && matches!(self.ffn, Ffn::SwiGlu { .. })
            && matches!(size.as_str(), "S" | "L" | "H")
        {
            "+"
        } else {
            ""
        };
        let mut parts = vec![format!(
            "{} ViT-{size}{plus}/{}",
            self.family.display_name(),
            self.patch_size
        )];
        if self.num_register_tokens > 0 {
            let what = if self.family == Family::Dinov3 {
                "storage tokens"
            } else {
                "registers"
            };
            parts.push(format!("{} {what}", self.num_register_tokens));
        }
        if self.layer_scale {
            parts.push("LayerScale".into());
        }
        match self.ffn {
            Ffn::Mlp => {}
            Ffn::SwiGluPacked { .. } | Ffn::SwiGlu { .. } => parts.push("SwiGLU".into()),
        }
        if let Position::Rope { .. } = self.position {
            parts.push("RoPE".into());
        }
        parts.join(", ")
    }

    /// Checks the constraints every forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(ModelError::InvalidConfig { reason });
        if self.patch_size == 0 || self.embed_dim == 0 || self.depth == 0 || self.num_heads == 0 {
            return bad("patch_size, embed_dim, depth and num_heads must be positive".into());
        }
        // Bounds far above every released model (the 7B: width 4096, 40 blocks, 32 heads),
        // so that a forged config cannot ask for absurd sizes or make index arithmetic wrap.
        for (name, value, max) in [
            ("patch_size", self.patch_size, MAX_PATCH),
            ("embed_dim", self.embed_dim, MAX_WIDTH),
            ("depth", self.depth, MAX_DEPTH),
            ("num_heads", self.num_heads, self.embed_dim),
            ("img_size", self.img_size, MAX_IMAGE_SIDE as usize),
            (
                "num_register_tokens",
                self.num_register_tokens,
                MAX_REGISTERS,
            ),
        ] {
            if value > max {
                return bad(format!(
                    "{name} {value} is above the largest this reader accepts ({max})"
                ));
            }
        }
        if !(self.layer_norm_eps <= 1.0) || !(self.mlp_ratio <= MAX_MLP_RATIO) {
            return bad(format!(
                "layer_norm_eps {} must be in (0, 1] and mlp_ratio {} in (0, {MAX_MLP_RATIO}]",
                self.layer_norm_eps, self.mlp_ratio
            ));
        }
        if let Some(n) = &self.normalization {
            n.validate()?;
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
        if let Position::Rope { base } = self.position
            && !(self.head_dim().is_multiple_of(4) && base > 0.0 && base <= 1e12)
        {
            return bad(format!(
                "RoPE needs a head width divisible by 4 (got {}) and a positive base (got {base})",
                self.head_dim()
            ));
        }
        if self.mlp_hidden_dim() == 0 || self.mlp_hidden_dim() > MAX_MLP_RATIO as usize * MAX_WIDTH
        {
            return bad(format!(
                "the feed-forward hidden width {} must be positive and at most {}",
                self.mlp_hidden_dim(),
                MAX_MLP_RATIO as usize * MAX_WIDTH
            ));
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
    /// Whether the last layer is weight-normalised (DINO, DINOv2) or a plain linear layer
    /// (DINOv3's `DINOHead`); absent in files written before DINOv3 training.
    #[serde(default = "weight_norm_default")]
    pub weight_norm: bool,
}

/// Files written before DINOv3 training always had a weight-normalised last layer.
fn weight_norm_default() -> bool {
    true
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
            weight_norm: true,
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
        for (name, value, max) in [
            ("head in_dim", self.in_dim, MAX_WIDTH),
            ("head hidden_dim", self.hidden_dim, MAX_WIDTH),
            ("head bottleneck_dim", self.bottleneck_dim, MAX_WIDTH),
            ("head out_dim", self.out_dim, MAX_PROTOTYPES),
            ("head nlayers", self.nlayers, MAX_HEAD_LAYERS),
        ] {
            if value > max {
                return Err(ModelError::InvalidConfig {
                    reason: format!(
                        "{name} {value} is above the largest this reader accepts ({max})"
                    ),
                });
            }
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
    /// A separate head for iBOT's masked patches (DINOv2's `ibot.separate_head`, always in
    /// DINOv3); absent when the DINO head serves both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ibot_head: Option<HeadConfig>,
}

impl ModelConfig {
    /// Checks both parts.
    pub fn validate(&self) -> Result<()> {
        self.vit.validate()?;
        for head in self.head.iter().chain(&self.ibot_head) {
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
    fn family_presets_follow_the_hub_definitions() {
        let g = VitConfig::dinov2("g", 4).unwrap();
        // (int(6144 * 2 / 3) + 7) // 8 * 8 = 4096 (SwiGLUFFNFused).
        assert_eq!(g.mlp_hidden_dim(), 4096);
        assert_eq!(
            g.describe(),
            "DINOv2 ViT-g/14, 4 registers, LayerScale, SwiGLU"
        );
        let s = VitConfig::dinov2("s", 0).unwrap();
        assert_eq!(s.describe(), "DINOv2 ViT-S/14, LayerScale");
        assert_eq!(
            s.position,
            Position::Learned {
                interp: PosInterp::Offset
            }
        );
        assert_eq!(VitConfig::dinov3("s+").unwrap().mlp_hidden_dim(), 1536);
        assert_eq!(VitConfig::dinov3("h+").unwrap().mlp_hidden_dim(), 5120);
        assert_eq!(VitConfig::dinov3("7b").unwrap().mlp_hidden_dim(), 8192);
        assert_eq!(
            VitConfig::dinov3("s+").unwrap().describe(),
            "DINOv3 ViT-S+/16, 4 storage tokens, LayerScale, SwiGLU, RoPE"
        );
        let b = VitConfig::dinov3("b").unwrap();
        assert!(b.validate().is_ok() && b.mask_k_bias && !b.has_pos_embed());
        // sum(p.numel() for p in dinov2_vits14_reg(pretrained=False).parameters()).
        assert_eq!(VitConfig::dinov2("s", 4).unwrap().num_params(), 22_058_112);
        assert!(VitConfig::dinov3("7b").unwrap().num_params() > 6_500_000_000);
    }

    #[test]
    fn old_configs_without_family_fields_still_parse() {
        let json = r#"{"arch":"vit_small","patch_size":16,"img_size":224,"embed_dim":384,"depth":12,"num_heads":6,"mlp_ratio":4.0,"qkv_bias":true,"layer_norm_eps":1e-6,"drop_path_rate":0.1}"#;
        let c: VitConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.family, Family::Dino);
        assert_eq!(c.prefix_tokens(), 1);
        assert_eq!(
            c,
            VitConfig {
                drop_path_rate: 0.1,
                ..VitConfig::vit_small(16)
            }
        );
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
