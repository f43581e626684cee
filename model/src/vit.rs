//! The Vision Transformer of `vision_transformer.py` (facebookresearch/dino), in burn.

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Distribution, FloatDType, Tensor, TensorData};

use crate::config::{Precision, VitConfig};
use crate::error::{ModelError, Result};
use crate::interp::{bicubic_matrix, pos_embed_scales};

/// Per-sample stochastic-depth multipliers for one forward pass.
///
/// `masks[block]` holds the two residual-branch multipliers of that block (attention, MLP),
/// each `[batch, 1, 1]` with values `0` or `1 / keep_prob`, exactly what the official
/// `drop_path` multiplies by. The trainer draws them from its own seeded RNG so that a
/// resumed run replays the same noise.
#[derive(Debug, Clone)]
pub struct DropPathMasks {
    /// One `[attention, mlp]` pair per block.
    pub masks: Vec<[Tensor<3>; 2]>,
}

impl Precision {
    /// The dtype matrix products run in.
    pub fn compute_dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::F16 => FloatDType::F16,
        }
    }

    /// `x` in the dtype matrix products run in (a no-op for f32).
    pub fn compute<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        x.cast(self.compute_dtype())
    }

    /// A linear layer on `x` (already in the compute dtype) with its f32 master weights cast
    /// to that dtype, as autocast does; the gradient flows back to the f32 weights.
    pub fn linear<const D: usize>(self, layer: &Linear, x: Tensor<D>) -> Tensor<D> {
        match self {
            Precision::F32 => layer.forward(x),
            Precision::F16 => burn::tensor::module::linear(
                x,
                self.compute(layer.weight.val()),
                layer.bias.as_ref().map(|b| self.compute(b.val())),
            ),
        }
    }

    /// GELU evaluated in f32 and rounded back to the compute dtype, as PyTorch's half-precision
    /// kernels do.
    pub fn gelu<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        self.compute(gelu(to_f32(x)))
    }
}

/// `x` back in f32, where autocast keeps full precision (residual stream, norms, softmax, loss).
pub fn to_f32<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.cast(FloatDType::F32)
}

/// Multi-head self-attention with one fused `qkv` projection (`Attention` in the official code).
#[derive(Module, Debug)]
pub struct Attention {
    /// Fused query/key/value projection, `[dim, 3 * dim]`.
    pub qkv: Linear,
    /// Output projection.
    pub proj: Linear,
    num_heads: usize,
}

impl Attention {
    fn qkv_heads(&self, x: Tensor<3>, p: Precision) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [batch, tokens, dim] = x.dims();
        let head_dim = dim / self.num_heads;
        // [batch, tokens, 3 * dim] -> [3, batch, heads, tokens, head_dim]
        let qkv = p
            .linear(&self.qkv, p.compute(x))
            .reshape([batch, tokens, 3, self.num_heads, head_dim])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| {
            qkv.clone()
                .narrow(0, i, 1)
                .reshape([batch, self.num_heads, tokens, head_dim])
        };
        (part(0), part(1), part(2))
    }

    fn merge_heads(&self, x: Tensor<4>, p: Precision) -> Tensor<3> {
        let [batch, heads, tokens, head_dim] = x.dims();
        let merged = x.swap_dims(1, 2).reshape([batch, tokens, heads * head_dim]);
        to_f32(p.linear(&self.proj, p.compute(merged)))
    }

    /// Attention through the backend's fused kernel; no weights are materialised.
    ///
    /// # Shapes
    /// `x`: `[batch, tokens, dim]` (f32) → `[batch, tokens, dim]` (f32).
    pub fn forward(&self, x: Tensor<3>, p: Precision) -> Tensor<3> {
        match p {
            Precision::F32 => {
                let (q, k, v) = self.qkv_heads(x, p);
                let out = attention(q, k, v, None, None, AttentionModuleOptions::default());
                self.merge_heads(out, p)
            }
            // Autocast runs the softmax in f32 between two f16 products; the fused kernel's
            // CPU fallback would run it in f16.
            Precision::F16 => self.forward_with_attention(x, p).0,
        }
    }

    /// Attention written out, returning the softmax weights as well.
    ///
    /// # Shapes
    /// `x`: `[batch, tokens, dim]` → (`[batch, tokens, dim]`, `[batch, heads, tokens, tokens]`).
    /// The weights come back in f32 (autocast runs softmax in f32).
    pub fn forward_with_attention(&self, x: Tensor<3>, p: Precision) -> (Tensor<3>, Tensor<4>) {
        let (q, k, v) = self.qkv_heads(x, p);
        let [_, _, _, head_dim] = q.dims();
        let scale = (head_dim as f64).powf(-0.5);
        let logits = to_f32(q.matmul(k.swap_dims(2, 3))).mul_scalar(scale);
        let weights = softmax(logits, 3);
        let out = p.compute(weights.clone()).matmul(v);
        (self.merge_heads(out, p), weights)
    }
}

/// The two-layer MLP of a block (`Mlp`: fc1 → GELU → fc2).
#[derive(Module, Debug)]
pub struct Mlp {
    /// Expansion layer.
    pub fc1: Linear,
    /// Projection back to the token width.
    pub fc2: Linear,
}

impl Mlp {
    /// # Shapes
    /// `[..., dim]` (f32) → `[..., dim]` (f32).
    pub fn forward<const D: usize>(&self, x: Tensor<D>, p: Precision) -> Tensor<D> {
        let hidden = p.gelu(p.linear(&self.fc1, p.compute(x)));
        to_f32(p.linear(&self.fc2, hidden))
    }
}

/// A pre-norm transformer block (`Block`).
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before attention.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attn: Attention,
    /// Norm before the MLP.
    pub norm2: LayerNorm,
    /// Feed-forward network.
    pub mlp: Mlp,
}

impl Block {
    fn residual(x: Tensor<3>, branch: Tensor<3>, mask: Option<&Tensor<3>>) -> Tensor<3> {
        match mask {
            Some(m) => x + branch * m.clone(),
            None => x + branch,
        }
    }

    /// # Shapes
    /// `[batch, tokens, dim]` → `[batch, tokens, dim]`.
    pub fn forward(&self, x: Tensor<3>, drop: Option<&[Tensor<3>; 2]>, p: Precision) -> Tensor<3> {
        let y = self.attn.forward(self.norm1.forward(x.clone()), p);
        let x = Self::residual(x, y, drop.map(|d| &d[0]));
        let y = self.mlp.forward(self.norm2.forward(x.clone()), p);
        Self::residual(x, y, drop.map(|d| &d[1]))
    }

    /// Like [`Block::forward`] (no drop-path), also returning this block's attention weights.
    pub fn forward_with_attention(&self, x: Tensor<3>, p: Precision) -> (Tensor<3>, Tensor<4>) {
        let (y, attn) = self
            .attn
            .forward_with_attention(self.norm1.forward(x.clone()), p);
        let x = x + y;
        let y = self.mlp.forward(self.norm2.forward(x.clone()), p);
        (x + y, attn)
    }
}

/// Output of [`VisionTransformer::forward_with_attention`].
#[derive(Debug, Clone)]
pub struct AttentionOutput {
    /// Normalised tokens after the last block, `[batch, 1 + patches, dim]` (CLS first).
    pub tokens: Tensor<3>,
    /// Softmax attention of the requested block, `[batch, heads, tokens, tokens]`.
    pub attention: Tensor<4>,
    /// Patch-grid rows of the input.
    pub grid_h: usize,
    /// Patch-grid columns of the input.
    pub grid_w: usize,
}

/// The DINO Vision Transformer backbone (`VisionTransformer`, `num_classes=0`).
#[derive(Module, Debug)]
pub struct VisionTransformer {
    /// Patch projection as a matrix, `[3 * patch * patch, dim]`; the official
    /// `patch_embed.proj` is a stride-`patch` convolution, which is the same map.
    pub patch_weight: Param<Tensor<2>>,
    /// Patch projection bias, `[dim]`.
    pub patch_bias: Param<Tensor<1>>,
    /// Learned CLS token, `[1, 1, dim]`.
    pub cls_token: Param<Tensor<3>>,
    /// Learned position embedding, `[1, 1 + grid * grid, dim]`.
    pub pos_embed: Param<Tensor<3>>,
    /// Transformer blocks.
    pub blocks: Vec<Block>,
    /// Final norm.
    pub norm: LayerNorm,
    patch_size: usize,
    grid: usize,
    drop_path_rate: f64,
    /// How the matrix products are computed; not part of the weights.
    #[module(skip)]
    precision: Precision,
}

impl VitConfig {
    /// Builds the backbone with the official initialisation: truncated normal (std 0.02) for
    /// linear weights, CLS token and position embedding, zero biases, unit LayerNorm gains.
    pub fn init(&self, device: &Device) -> Result<VisionTransformer> {
        self.validate()?;
        let dim = self.embed_dim;
        let linear = |d_in: usize, d_out: usize, bias: bool| {
            let mut l = LinearConfig::new(d_in, d_out).with_bias(bias).init(device);
            l.weight = Param::from_tensor(trunc_normal([d_in, d_out], device));
            if let Some(b) = &mut l.bias {
                *b = Param::from_tensor(Tensor::zeros([d_out], device));
            }
            l
        };
        let norm = || {
            LayerNormConfig::new(dim)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let blocks = (0..self.depth)
            .map(|_| Block {
                norm1: norm(),
                attn: Attention {
                    qkv: linear(dim, 3 * dim, self.qkv_bias),
                    proj: linear(dim, dim, true),
                    num_heads: self.num_heads,
                },
                norm2: norm(),
                mlp: Mlp {
                    fc1: linear(dim, self.mlp_hidden_dim(), true),
                    fc2: linear(self.mlp_hidden_dim(), dim, true),
                },
            })
            .collect();
        let grid = self.pos_grid();
        let patch_in = 3 * self.patch_size * self.patch_size;
        // The official code leaves the conv at PyTorch's default (Kaiming-uniform) init.
        let bound = 1.0 / (patch_in as f64).sqrt();
        Ok(VisionTransformer {
            patch_weight: Param::from_tensor(Tensor::random(
                [patch_in, dim],
                Distribution::Uniform(-bound, bound),
                device,
            )),
            patch_bias: Param::from_tensor(Tensor::random(
                [dim],
                Distribution::Uniform(-bound, bound),
                device,
            )),
            cls_token: Param::from_tensor(trunc_normal([1, 1, dim], device)),
            pos_embed: Param::from_tensor(trunc_normal([1, 1 + grid * grid, dim], device)),
            blocks,
            norm: norm(),
            patch_size: self.patch_size,
            grid,
            drop_path_rate: self.drop_path_rate,
            precision: Precision::F32,
        })
    }
}

/// A normal(0, 0.02) draw truncated to ±2 (`trunc_normal_(std=.02)` with its default absolute bounds,
/// which at this std never bind in practice; we clamp for the same support).
pub fn trunc_normal<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 0.02), device).clamp(-2.0, 2.0)
}

impl VisionTransformer {
    /// The same network computing its matrix products in `precision`.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// How the matrix products are computed.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Side of a patch in pixels.
    pub fn patch_size(&self) -> usize {
        self.patch_size
    }

    /// Number of transformer blocks.
    pub fn depth(&self) -> usize {
        self.blocks.len()
    }

    /// Attention heads per block.
    pub fn num_heads(&self) -> usize {
        self.blocks.first().map_or(0, |b| b.attn.num_heads)
    }

    /// Token width.
    pub fn embed_dim(&self) -> usize {
        self.cls_token.dims()[2]
    }

    /// Stochastic-depth rate of block `i` (the official linear ramp `linspace(0, rate, depth)`).
    pub fn drop_path_prob(&self, block: usize) -> f64 {
        let depth = self.depth();
        if depth <= 1 {
            return self.drop_path_rate * block as f64;
        }
        self.drop_path_rate * block as f64 / (depth - 1) as f64
    }

    /// Checks that an input of `h × w` pixels can be tokenised.
    pub fn check_input(&self, h: usize, w: usize) -> Result<()> {
        let p = self.patch_size;
        if h < p || w < p || !h.is_multiple_of(p) || !w.is_multiple_of(p) {
            return Err(ModelError::Image {
                reason: format!(
                    "input of {w}x{h} pixels is not a positive multiple of the patch size {p}; resize or crop it first"
                ),
            });
        }
        Ok(())
    }

    /// Position embedding for an `h_patches × w_patches` grid, interpolated exactly as the
    /// official `interpolate_pos_encoding` does (bicubic, `scale_factor` with the +0.1 offset).
    ///
    /// # Shapes
    /// → `[1, 1 + h_patches * w_patches, dim]`.
    pub fn interpolate_pos_encoding(&self, h_patches: usize, w_patches: usize) -> Tensor<3> {
        let pos = self.pos_embed.val();
        let n = self.grid;
        if h_patches * w_patches == n * n && h_patches == w_patches {
            return pos;
        }
        let device = pos.device();
        let dim = self.embed_dim();
        let (rows, cols, row_scale, col_scale) = pos_embed_scales(n, h_patches, w_patches);
        let cls = pos.clone().narrow(1, 0, 1);
        let grid = pos.narrow(1, 1, n * n).reshape([n, n * dim]);
        let m_rows = Tensor::<2>::from_data(
            TensorData::new(bicubic_matrix(n, rows, row_scale), [rows, n]),
            &device,
        );
        let m_cols = Tensor::<3>::from_data(
            TensorData::new(bicubic_matrix(n, cols, col_scale), [1, cols, n]),
            &device,
        );
        // rows: [rows, n] x [n, n * dim] -> [rows, n, dim]; cols: [1, cols, n] x [rows, n, dim] -> [rows, cols, dim]
        let resized = m_cols.matmul(m_rows.matmul(grid).reshape([rows, n, dim]));
        Tensor::cat(vec![cls, resized.reshape([1, rows * cols, dim])], 1)
    }

    /// Patch embedding, CLS token and position encoding (`prepare_tokens`).
    ///
    /// # Shapes
    /// `images`: `[batch, 3, h, w]` (h, w multiples of the patch) → `[batch, 1 + patches, dim]`.
    pub fn prepare_tokens(&self, images: Tensor<4>) -> Tensor<3> {
        let [batch, channels, h, w] = images.dims();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        // [b, c, gh, p, gw, p] -> [b, gh, gw, c, p, p]: the order of the conv weight's input.
        let patches = images
            .reshape([batch, channels, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([batch, gh * gw, channels * p * p]);
        let p16 = self.precision;
        let x = to_f32(
            p16.compute(patches)
                .matmul(p16.compute(self.patch_weight.val()).unsqueeze::<3>())
                + p16.compute(self.patch_bias.val()).unsqueeze::<3>(),
        );
        let dim = self.embed_dim();
        let cls = self.cls_token.val().expand([batch, 1, dim]);
        let x = Tensor::cat(vec![cls, x], 1);
        x + self.interpolate_pos_encoding(gh, gw)
    }

    /// Normalised output tokens (CLS first) of the whole network.
    ///
    /// # Shapes
    /// `images`: `[batch, 3, h, w]` → `[batch, 1 + patches, dim]`.
    pub fn forward_tokens(&self, images: Tensor<4>, drop: Option<&DropPathMasks>) -> Tensor<3> {
        let mut x = self.prepare_tokens(images);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x, drop.and_then(|d| d.masks.get(i)), self.precision);
        }
        self.norm.forward(x)
    }

    /// CLS features, the official `forward` (`norm(x)[:, 0]`).
    ///
    /// # Shapes
    /// `images`: `[batch, 3, h, w]` → `[batch, dim]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_train(images, None)
    }

    /// CLS features with optional stochastic depth, for training.
    ///
    /// # Shapes
    /// `images`: `[batch, 3, h, w]` → `[batch, dim]`.
    pub fn forward_train(&self, images: Tensor<4>, drop: Option<&DropPathMasks>) -> Tensor<2> {
        let tokens = self.forward_tokens(images, drop);
        let [batch, _, dim] = tokens.dims();
        tokens.narrow(1, 0, 1).reshape([batch, dim])
    }

    /// Runs the network and returns the softmax attention of block `layer` (0-based; the
    /// official `get_last_selfattention` is `layer = depth - 1`) next to the final tokens.
    ///
    /// # Shapes
    /// `images`: `[batch, 3, h, w]` → tokens `[batch, 1 + patches, dim]`,
    /// attention `[batch, heads, 1 + patches, 1 + patches]`.
    pub fn forward_with_attention(
        &self,
        images: Tensor<4>,
        layer: usize,
    ) -> Result<AttentionOutput> {
        let [_, _, h, w] = images.dims();
        self.check_input(h, w)?;
        if layer >= self.depth() {
            return Err(ModelError::InvalidConfig {
                reason: format!(
                    "layer {layer} does not exist; the model has {} blocks",
                    self.depth()
                ),
            });
        }
        let mut x = self.prepare_tokens(images);
        let mut attention = None;
        for (i, block) in self.blocks.iter().enumerate() {
            if i == layer {
                let (y, a) = block.forward_with_attention(x, self.precision);
                x = y;
                attention = Some(a);
            } else {
                x = block.forward(x, None, self.precision);
            }
        }
        Ok(AttentionOutput {
            tokens: self.norm.forward(x),
            attention: attention.expect("layer < depth was checked above"),
            grid_h: h / self.patch_size,
            grid_w: w / self.patch_size,
        })
    }
}
