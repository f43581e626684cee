//! The Vision Transformer of `vision_transformer.py` (facebookresearch/dino), in burn.

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Distribution, FloatDType, Tensor, TensorData};

use crate::config::{Family, Ffn, Normalization, PosInterp, Position, Precision, VitConfig};
use crate::cpu::fused;
use crate::error::{ModelError, Result};
use crate::interp::{antialias_bicubic_matrix, bicubic_matrix, pos_embed_scales};

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
        linear_rows(
            x,
            self.compute(layer.weight.val()),
            layer.bias.as_ref().map(|b| self.compute(b.val())),
        )
    }

    /// GELU evaluated in f32 and rounded back to the compute dtype, as PyTorch's half-precision
    /// kernels do.
    pub fn gelu<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        self.compute(fused::gelu(to_f32(x)))
    }

    /// SiLU in f32, rounded back to the compute dtype (as [`Precision::gelu`]).
    pub fn silu<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        self.compute(silu(to_f32(x)))
    }
}

/// `x · weight + bias` with every leading dim of `x` folded into the rows: one
/// `[rows, d_in] × [d_in, d_out]` product instead of one per image. burn's own fold policy
/// keeps narrow outputs (`d_out` = the token width) batched, which on the CPU runs the
/// projection, fc2 and every input gradient as a few hundred 65-row products.
fn linear_rows<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let dims = x.dims();
    if D < 2 {
        return burn::tensor::module::linear(x, weight, bias);
    }
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let out = fused::linear(x.reshape([rows, d_in]), weight, bias);
    let mut out_dims = dims;
    out_dims[D - 1] = out.dims()[1];
    out.reshape(out_dims)
}

/// DINOv3's rotary tables for one patch grid: `sin` and `cos`, each `[1, 1, patches, head_dim]`.
#[derive(Debug, Clone)]
pub struct RopeTables {
    /// Sines of the angles.
    pub sin: Tensor<4>,
    /// Cosines of the angles.
    pub cos: Tensor<4>,
}

/// The angles of `RopePositionEmbedding.forward` at inference (no shift, jitter or rescale),
/// row-major `[grid_h * grid_w, head_dim]`, in the official order of f32 operations:
/// coordinates `2 (i + 0.5) / n − 1` per axis ("separate" normalisation), `2π · coord / period`
/// for y then x, the two halves tiled twice.
pub fn rope_angles(periods: &[f32], grid_h: usize, grid_w: usize) -> Vec<f32> {
    let quarter = periods.len();
    let head_dim = 4 * quarter;
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    let coord = |i: usize, n: usize| 2.0f32 * ((i as f32 + 0.5) / n as f32) - 1.0;
    let mut out = Vec::with_capacity(grid_h * grid_w * head_dim);
    for i in 0..grid_h {
        for j in 0..grid_w {
            let (y, x) = (coord(i, grid_h), coord(j, grid_w));
            let half: Vec<f32> = periods
                .iter()
                .map(|p| two_pi * y / p)
                .chain(periods.iter().map(|p| two_pi * x / p))
                .collect();
            out.extend_from_slice(&half);
            out.extend_from_slice(&half);
        }
    }
    out
}

/// The periods DINOv3 derives from its base (`base ** (2 k / (head_dim / 2))`, in f32), used
/// when a file does not store `rope_embed.periods` (the Hugging Face port drops it).
pub fn rope_periods(base: f64, head_dim: usize) -> Vec<f32> {
    let quarter = head_dim / 4;
    (0..quarter)
        .map(|k| (base as f32).powf(2.0 * k as f32 / (head_dim / 2) as f32))
        .collect()
}

impl RopeTables {
    /// Tables for a `grid_h × grid_w` patch grid.
    pub fn new(periods: &[f32], grid_h: usize, grid_w: usize, device: &Device) -> Self {
        let angles = rope_angles(periods, grid_h, grid_w);
        let shape = [1, 1, grid_h * grid_w, 4 * periods.len()];
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        RopeTables {
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
        }
    }

    /// Rotates the last `patches` tokens of `x` (`[batch, heads, tokens, head_dim]`) as the
    /// official `rope_apply` does; CLS and register tokens pass through.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, tokens, head_dim] = x.dims();
        let patches = self.sin.dims()[2];
        let prefix = tokens - patches;
        let half = head_dim / 2;
        let body = x.clone().narrow(2, prefix, patches);
        let rotated = Tensor::cat(
            vec![
                body.clone().narrow(3, half, half).neg(),
                body.clone().narrow(3, 0, half),
            ],
            3,
        );
        let body = body * self.cos.clone() + rotated * self.sin.clone();
        if prefix == 0 {
            body
        } else {
            Tensor::cat(vec![x.narrow(2, 0, prefix), body], 2)
        }
    }
}

/// `x` back in f32, where autocast keeps full precision (residual stream, norms, softmax, loss).
pub fn to_f32<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.cast(FloatDType::F32)
}

/// `layer` (an `nn.LayerNorm` of `eps`) on `x`: one kernel forward and backward on the CPU
/// backend, burn's op elsewhere.
fn layer_norm<const D: usize>(layer: &LayerNorm, x: Tensor<D>, eps: f64) -> Tensor<D> {
    match &layer.beta {
        Some(beta) if fused::applies(&x) => {
            fused::layer_norm(x, layer.gamma.val(), beta.val(), eps)
        }
        _ => layer.forward(x),
    }
}

/// Multi-head self-attention with one fused `qkv` projection (`Attention` in the official code).
#[derive(Module, Debug)]
pub struct Attention {
    /// Fused query/key/value projection, `[dim, 3 * dim]`.
    pub qkv: Linear,
    /// Output projection.
    pub proj: Linear,
    num_heads: usize,
    /// DINOv3's `LinearKMaskedBias`: the key third of the bias is multiplied by 0.
    #[module(skip)]
    mask_k_bias: bool,
}

impl Attention {
    fn qkv_linear(&self, x: Tensor<3>, p: Precision) -> Tensor<3> {
        match (&self.qkv.bias, self.mask_k_bias) {
            (Some(bias), true) => {
                let b = bias.val();
                let dim = b.dims()[0] / 3;
                let masked = Tensor::cat(
                    vec![
                        b.clone().narrow(0, 0, dim),
                        b.clone().narrow(0, dim, dim).zeros_like(),
                        b.narrow(0, 2 * dim, dim),
                    ],
                    0,
                );
                linear_rows(x, p.compute(self.qkv.weight.val()), Some(p.compute(masked)))
            }
            _ => p.linear(&self.qkv, x),
        }
    }

    fn qkv_heads(
        &self,
        x: Tensor<3>,
        rope: Option<&RopeTables>,
        p: Precision,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [batch, tokens, dim] = x.dims();
        let head_dim = dim / self.num_heads;
        // [batch, tokens, 3 * dim] -> [3, batch, heads, tokens, head_dim]
        let qkv = self
            .qkv_linear(p.compute(x), p)
            .reshape([batch, tokens, 3, self.num_heads, head_dim])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| {
            qkv.clone()
                .narrow(0, i, 1)
                .reshape([batch, self.num_heads, tokens, head_dim])
        };
        let (q, k, v) = (part(0), part(1), part(2));
        match rope {
            // The official code rotates in the tables' dtype (f32) and casts back.
            Some(r) => (
                p.compute(r.apply(to_f32(q))),
                p.compute(r.apply(to_f32(k))),
                v,
            ),
            None => (q, k, v),
        }
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
    pub fn forward(&self, x: Tensor<3>, rope: Option<&RopeTables>, p: Precision) -> Tensor<3> {
        match p {
            Precision::F32 => {
                if rope.is_none() && fused::applies(&x) {
                    let qkv = self.qkv_linear(x.clone(), p);
                    if let Some(out) = fused::qkv_attention(&qkv, self.num_heads) {
                        return to_f32(p.linear(&self.proj, out));
                    }
                }
                let (q, k, v) = self.qkv_heads(x, rope, p);
                let out = attention(q, k, v, None, None, AttentionModuleOptions::default());
                self.merge_heads(out, p)
            }
            // Autocast runs the softmax in f32 between two f16 products; the fused kernel's
            // CPU fallback would run it in f16.
            Precision::F16 => self.forward_with_attention(x, rope, p).0,
        }
    }

    /// Attention written out, returning the softmax weights as well.
    ///
    /// # Shapes
    /// `x`: `[batch, tokens, dim]` → (`[batch, tokens, dim]`, `[batch, heads, tokens, tokens]`).
    /// The weights come back in f32 (autocast runs softmax in f32).
    pub fn forward_with_attention(
        &self,
        x: Tensor<3>,
        rope: Option<&RopeTables>,
        p: Precision,
    ) -> (Tensor<3>, Tensor<4>) {
        let (q, k, v) = self.qkv_heads(x, rope, p);
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

/// SwiGLU (`w3(silu(x1) * x2)`), with DINOv2's packed `w12` or DINOv3's `w1`/`w2` stacked
/// into one `[dim, 2 * hidden]` projection: the first half gives `x1`, the second `x2`.
#[derive(Module, Debug)]
pub struct SwiGlu {
    /// Both input projections, `[dim, 2 * hidden]`.
    pub w12: Linear,
    /// Output projection.
    pub w3: Linear,
}

impl SwiGlu {
    /// # Shapes
    /// `[..., dim]` (f32) → `[..., dim]` (f32).
    pub fn forward<const D: usize>(&self, x: Tensor<D>, p: Precision) -> Tensor<D> {
        let x12 = p.linear(&self.w12, p.compute(x));
        let hidden = x12.dims()[D - 1] / 2;
        let x1 = x12.clone().narrow(D - 1, 0, hidden);
        let x2 = x12.narrow(D - 1, hidden, hidden);
        to_f32(p.linear(&self.w3, p.silu(x1) * x2))
    }
}

/// A pre-norm transformer block (`Block` in DINO and DINOv2, `SelfAttentionBlock` in DINOv3).
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before attention.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attn: Attention,
    /// LayerScale of the attention branch (`ls1.gamma`), DINOv2 and DINOv3.
    pub ls1: Option<Param<Tensor<1>>>,
    /// Norm before the feed-forward network.
    pub norm2: LayerNorm,
    /// Feed-forward network when it is an MLP.
    pub mlp: Option<Mlp>,
    /// Feed-forward network when it is SwiGLU.
    pub swiglu: Option<SwiGlu>,
    /// LayerScale of the feed-forward branch (`ls2.gamma`).
    pub ls2: Option<Param<Tensor<1>>>,
    /// Epsilon of both norms (burn's `LayerNorm` keeps its own private).
    #[module(skip)]
    norm_eps: f64,
}

impl Block {
    fn residual(
        x: Tensor<3>,
        branch: Tensor<3>,
        gamma: Option<&Param<Tensor<1>>>,
        mask: Option<&Tensor<3>>,
    ) -> Tensor<3> {
        let branch = match gamma {
            Some(g) => branch * g.val().unsqueeze::<3>(),
            None => branch,
        };
        match mask {
            Some(m) => x + branch * m.clone(),
            None => x + branch,
        }
    }

    fn ffn(&self, x: Tensor<3>, p: Precision) -> Tensor<3> {
        match (&self.mlp, &self.swiglu) {
            (Some(mlp), _) => mlp.forward(x, p),
            (None, Some(swiglu)) => swiglu.forward(x, p),
            (None, None) => unreachable!("every block is built with one feed-forward network"),
        }
    }

    /// # Shapes
    /// `[batch, tokens, dim]` → `[batch, tokens, dim]`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: Option<&RopeTables>,
        drop: Option<&[Tensor<3>; 2]>,
        p: Precision,
    ) -> Tensor<3> {
        let y = self
            .attn
            .forward(layer_norm(&self.norm1, x.clone(), self.norm_eps), rope, p);
        let x = Self::residual(x, y, self.ls1.as_ref(), drop.map(|d| &d[0]));
        let y = self.ffn(layer_norm(&self.norm2, x.clone(), self.norm_eps), p);
        Self::residual(x, y, self.ls2.as_ref(), drop.map(|d| &d[1]))
    }

    /// Like [`Block::forward`] (no drop-path), also returning this block's attention weights.
    pub fn forward_with_attention(
        &self,
        x: Tensor<3>,
        rope: Option<&RopeTables>,
        p: Precision,
    ) -> (Tensor<3>, Tensor<4>) {
        let (y, attn) = self.attn.forward_with_attention(
            layer_norm(&self.norm1, x.clone(), self.norm_eps),
            rope,
            p,
        );
        let x = Self::residual(x, y, self.ls1.as_ref(), None);
        let y = self.ffn(layer_norm(&self.norm2, x.clone(), self.norm_eps), p);
        (Self::residual(x, y, self.ls2.as_ref(), None), attn)
    }
}

/// Output of [`VisionTransformer::forward_with_attention`].
#[derive(Debug, Clone)]
pub struct AttentionOutput {
    /// Normalised tokens after the last block, `[batch, prefix + patches, dim]`: CLS, then
    /// the registers, then the patches.
    pub tokens: Tensor<3>,
    /// Softmax attention of the requested block, `[batch, heads, tokens, tokens]`.
    pub attention: Tensor<4>,
    /// Patch-grid rows of the input.
    pub grid_h: usize,
    /// Patch-grid columns of the input.
    pub grid_w: usize,
    /// Tokens before the patches (1 + registers).
    pub prefix_tokens: usize,
}

/// The Vision Transformer backbone of the DINO line (`VisionTransformer` in DINO,
/// `DinoVisionTransformer` in DINOv2 and DINOv3), configured per family.
#[derive(Module, Debug)]
pub struct VisionTransformer {
    /// Patch projection as a matrix, `[3 * patch * patch, dim]`; the official
    /// `patch_embed.proj` is a stride-`patch` convolution, which is the same map.
    pub patch_weight: Param<Tensor<2>>,
    /// Patch projection bias, `[dim]`.
    pub patch_bias: Param<Tensor<1>>,
    /// Learned CLS token, `[1, 1, dim]`.
    pub cls_token: Param<Tensor<3>>,
    /// Learned position embedding, `[1, 1 + grid * grid, dim]` (absent with RoPE).
    pub pos_embed: Option<Param<Tensor<3>>>,
    /// Register (DINOv2) or storage (DINOv3) tokens, `[1, registers, dim]`.
    pub register_tokens: Option<Param<Tensor<3>>>,
    /// The masked-patch token of iBOT, `[1, dim]` (DINOv2, DINOv3).
    pub mask_token: Option<Param<Tensor<2>>>,
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
    /// How `pos_embed` is resized for other grids.
    #[module(skip)]
    pos_interp: PosInterp,
    /// RoPE periods (`rope_embed.periods`, a buffer, not trained), `[head_dim / 4]`.
    #[module(skip)]
    rope_periods: Option<Vec<f32>>,
    /// Release line: decides the official key names of the weights.
    #[module(skip)]
    family: Family,
    /// Pixel statistics the weights expect.
    #[module(skip)]
    normalization: Normalization,
    /// Epsilon of the final norm.
    #[module(skip)]
    norm_eps: f64,
}

impl VitConfig {
    /// Builds the backbone with the official initialisation: truncated normal (std 0.02) for
    /// linear weights, CLS token and position embedding, zero biases, unit LayerNorm gains;
    /// LayerScale at 1e-5, registers N(0, 1e-6) (DINOv2) or N(0, 0.02) (DINOv3), a zero mask token.
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
        let hidden = self.mlp_hidden_dim();
        let scale = || {
            self.layer_scale
                .then(|| Param::from_tensor(Tensor::full([dim], 1e-5, device)))
        };
        let blocks = (0..self.depth)
            .map(|_| {
                let (mlp, swiglu) = match self.ffn {
                    Ffn::Mlp => (
                        Some(Mlp {
                            fc1: linear(dim, hidden, true),
                            fc2: linear(hidden, dim, true),
                        }),
                        None,
                    ),
                    Ffn::SwiGluPacked { .. } | Ffn::SwiGlu { .. } => (
                        None,
                        Some(SwiGlu {
                            w12: linear(dim, 2 * hidden, true),
                            w3: linear(hidden, dim, true),
                        }),
                    ),
                };
                Block {
                    norm1: norm(),
                    attn: Attention {
                        qkv: linear(dim, 3 * dim, self.qkv_bias),
                        proj: linear(dim, dim, true),
                        num_heads: self.num_heads,
                        mask_k_bias: self.mask_k_bias,
                    },
                    ls1: scale(),
                    norm2: norm(),
                    mlp,
                    swiglu,
                    ls2: scale(),
                    norm_eps: self.layer_norm_eps,
                }
            })
            .collect();
        let grid = self.pos_grid();
        let patch_in = 3 * self.patch_size * self.patch_size;
        // The official code leaves the conv at PyTorch's default (Kaiming-uniform) init.
        let bound = 1.0 / (patch_in as f64).sqrt();
        let (pos_embed, pos_interp, rope_periods) = match self.position {
            Position::Learned { interp } => (
                Some(Param::from_tensor(trunc_normal(
                    [1, 1 + grid * grid, dim],
                    device,
                ))),
                interp,
                None,
            ),
            Position::Rope { base } => (
                None,
                PosInterp::default(),
                Some(rope_periods(base, self.head_dim())),
            ),
        };
        let register_std = if self.family == Family::Dinov3 {
            0.02
        } else {
            1e-6
        };
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
            // DINOv2's `init_weights` draws CLS like the registers (normal, std 1e-6).
            cls_token: Param::from_tensor(if self.family == Family::Dinov2 {
                Tensor::random([1, 1, dim], Distribution::Normal(0.0, 1e-6), device)
            } else {
                trunc_normal([1, 1, dim], device)
            }),
            pos_embed,
            register_tokens: (self.num_register_tokens > 0).then(|| {
                Param::from_tensor(Tensor::random(
                    [1, self.num_register_tokens, dim],
                    Distribution::Normal(0.0, register_std),
                    device,
                ))
            }),
            mask_token: self
                .has_mask_token()
                .then(|| Param::from_tensor(Tensor::zeros([1, dim], device))),
            blocks,
            norm: norm(),
            patch_size: self.patch_size,
            grid,
            drop_path_rate: self.drop_path_rate,
            precision: Precision::F32,
            pos_interp,
            rope_periods,
            family: self.family,
            normalization: self.normalization(),
            norm_eps: self.layer_norm_eps,
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

    /// Register or storage tokens between CLS and the patches.
    pub fn num_register_tokens(&self) -> usize {
        self.register_tokens.as_ref().map_or(0, |r| r.dims()[1])
    }

    /// Tokens before the patches (CLS and registers).
    pub fn prefix_tokens(&self) -> usize {
        1 + self.num_register_tokens()
    }

    /// The pixel normalisation the weights expect.
    pub fn normalization(&self) -> Normalization {
        self.normalization
    }

    /// The release line the weights come from.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The RoPE periods, when the model uses RoPE.
    pub fn rope_periods(&self) -> Option<&[f32]> {
        self.rope_periods.as_deref()
    }

    /// Replaces the RoPE periods (loading them from a file); `None` for absolute embeddings.
    pub fn set_rope_periods(&mut self, periods: Option<Vec<f32>>) {
        self.rope_periods = periods;
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
    /// official `interpolate_pos_encoding` does: bicubic with `scale_factor` and the +0.1
    /// offset (DINO, DINOv2), or antialiased bicubic to the exact size (DINOv2 `_reg`).
    /// `None` for RoPE models.
    ///
    /// # Shapes
    /// → `[1, 1 + h_patches * w_patches, dim]`.
    pub fn interpolate_pos_encoding(
        &self,
        h_patches: usize,
        w_patches: usize,
    ) -> Option<Tensor<3>> {
        let pos = self.pos_embed.as_ref()?.val();
        let n = self.grid;
        if h_patches * w_patches == n * n && h_patches == w_patches {
            return Some(pos);
        }
        let device = pos.device();
        let dim = self.embed_dim();
        let (rows, cols, m_rows, m_cols) = match self.pos_interp {
            PosInterp::Offset => {
                let (rows, cols, row_scale, col_scale) = pos_embed_scales(n, h_patches, w_patches);
                (
                    rows,
                    cols,
                    bicubic_matrix(n, rows, row_scale),
                    bicubic_matrix(n, cols, col_scale),
                )
            }
            PosInterp::Antialias => (
                h_patches,
                w_patches,
                antialias_bicubic_matrix(n, h_patches),
                antialias_bicubic_matrix(n, w_patches),
            ),
        };
        let cls = pos.clone().narrow(1, 0, 1);
        let grid = pos.narrow(1, 1, n * n).reshape([n, n * dim]);
        let m_rows = Tensor::<2>::from_data(TensorData::new(m_rows, [rows, n]), &device);
        let m_cols = Tensor::<3>::from_data(TensorData::new(m_cols, [1, cols, n]), &device);
        // rows: [rows, n] x [n, n * dim] -> [rows, n, dim]; cols: [1, cols, n] x [rows, n, dim] -> [rows, cols, dim]
        let resized = m_cols.matmul(m_rows.matmul(grid).reshape([rows, n, dim]));
        Some(Tensor::cat(
            vec![cls, resized.reshape([1, rows * cols, dim])],
            1,
        ))
    }

    /// The rotary tables for a grid, when the model uses RoPE.
    pub fn rope_tables(&self, grid_h: usize, grid_w: usize) -> Option<RopeTables> {
        let periods = self.rope_periods.as_ref()?;
        Some(RopeTables::new(
            periods,
            grid_h,
            grid_w,
            &self.cls_token.val().device(),
        ))
    }

    /// Patch embedding, CLS token, position encoding and registers (`prepare_tokens`,
    /// `prepare_tokens_with_masks` without masks).
    ///
    /// # Shapes
    /// `images`: `[batch, 3, h, w]` (h, w multiples of the patch) → `[batch, prefix + patches, dim]`.
    pub fn prepare_tokens(&self, images: Tensor<4>) -> Tensor<3> {
        self.prepare_tokens_with_masks(images, None)
    }

    /// As [`VisionTransformer::prepare_tokens`], replacing the embeddings of the patches
    /// where `masks` is true by the learned `mask_token` before CLS and positions are added
    /// (`prepare_tokens_with_masks` of DINOv2 and DINOv3: iBOT's masked student input).
    /// Models without a mask token (DINO) ignore `masks`.
    ///
    /// # Shapes
    /// `images`: `[batch, 3, h, w]`, `masks`: `[batch, patches]` → `[batch, prefix + patches, dim]`.
    pub fn prepare_tokens_with_masks(
        &self,
        images: Tensor<4>,
        masks: Option<Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let [batch, channels, h, w] = images.dims();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        // [b, c, gh, p, gw, p] -> [b, gh, gw, c, p, p]: the order of the conv weight's input.
        let patches = images
            .reshape([batch, channels, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([batch, gh * gw, channels * p * p]);
        let p16 = self.precision;
        let x = to_f32(linear_rows(
            p16.compute(patches),
            p16.compute(self.patch_weight.val()),
            Some(p16.compute(self.patch_bias.val())),
        ));
        let dim = self.embed_dim();
        let x = match (masks, &self.mask_token) {
            (Some(m), Some(token)) => {
                let m = m.unsqueeze_dim::<3>(2).expand([batch, gh * gw, dim]);
                x.mask_where(
                    m,
                    token.val().unsqueeze::<3>().expand([batch, gh * gw, dim]),
                )
            }
            _ => x,
        };
        let cls = self.cls_token.val().expand([batch, 1, dim]);
        let x = Tensor::cat(vec![cls, x], 1);
        // DINOv2 adds the position embedding to CLS and patches, then inserts the registers
        // after CLS; DINOv3 has no position embedding, so the order is the same.
        let x = match self.interpolate_pos_encoding(gh, gw) {
            Some(pos) => x + pos,
            None => x,
        };
        match &self.register_tokens {
            Some(reg) => {
                let r = reg.dims()[1];
                let tokens = x.dims()[1];
                Tensor::cat(
                    vec![
                        x.clone().narrow(1, 0, 1),
                        reg.val().expand([batch, r, dim]),
                        x.narrow(1, 1, tokens - 1),
                    ],
                    1,
                )
            }
            None => x,
        }
    }

    /// Normalised output tokens (CLS, registers, patches) of the whole network.
    ///
    /// # Shapes
    /// `images`: `[batch, 3, h, w]` → `[batch, prefix + patches, dim]`.
    pub fn forward_tokens(&self, images: Tensor<4>, drop: Option<&DropPathMasks>) -> Tensor<3> {
        self.forward_tokens_masked(images, None, drop)
    }

    /// As [`VisionTransformer::forward_tokens`] with masked patches (see
    /// [`VisionTransformer::prepare_tokens_with_masks`]).
    ///
    /// # Shapes
    /// `images`: `[batch, 3, h, w]`, `masks`: `[batch, patches]` → `[batch, prefix + patches, dim]`.
    pub fn forward_tokens_masked(
        &self,
        images: Tensor<4>,
        masks: Option<Tensor<2, Bool>>,
        drop: Option<&DropPathMasks>,
    ) -> Tensor<3> {
        let [_, _, h, w] = images.dims();
        let rope = self.rope_tables(h / self.patch_size, w / self.patch_size);
        let mut x = self.prepare_tokens_with_masks(images, masks);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(
                x,
                rope.as_ref(),
                drop.and_then(|d| d.masks.get(i)),
                self.precision,
            );
        }
        layer_norm(&self.norm, x, self.norm_eps)
    }

    /// The normalised tokens after each of the last `n` blocks, oldest first: the official
    /// `get_intermediate_layers(x, n)` (DINO) and `get_intermediate_layers(x, n, norm=True)`
    /// (DINOv2), which the linear evaluations read.
    ///
    /// # Shapes
    /// `images`: `[batch, 3, h, w]` → `n` × `[batch, prefix + patches, dim]`.
    pub fn last_blocks(&self, images: Tensor<4>, n: usize) -> Vec<Tensor<3>> {
        let [_, _, h, w] = images.dims();
        let rope = self.rope_tables(h / self.patch_size, w / self.patch_size);
        let mut x = self.prepare_tokens_with_masks(images, None);
        let first = self.blocks.len().saturating_sub(n);
        let mut out = Vec::with_capacity(n);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x, rope.as_ref(), None, self.precision);
            if i >= first {
                out.push(layer_norm(&self.norm, x.clone(), self.norm_eps));
            }
        }
        out
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
    /// `images`: `[batch, 3, h, w]` → tokens `[batch, prefix + patches, dim]`,
    /// attention `[batch, heads, prefix + patches, prefix + patches]`.
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
        let (gh, gw) = (h / self.patch_size, w / self.patch_size);
        let rope = self.rope_tables(gh, gw);
        let mut x = self.prepare_tokens(images);
        let mut attention = None;
        for (i, block) in self.blocks.iter().enumerate() {
            if i == layer {
                let (y, a) = block.forward_with_attention(x, rope.as_ref(), self.precision);
                x = y;
                attention = Some(a);
            } else {
                x = block.forward(x, rope.as_ref(), None, self.precision);
            }
        }
        Ok(AttentionOutput {
            tokens: layer_norm(&self.norm, x, self.norm_eps),
            attention: attention.expect("layer < depth was checked above"),
            grid_h: gh,
            grid_w: gw,
            prefix_tokens: self.prefix_tokens(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_periods_follow_the_official_ladder() {
        // base ** (2 k / (head_dim / 2)) for head_dim 16: 100^(k/4).
        let p = rope_periods(100.0, 16);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0], 1.0);
        assert!((p[2] - 10.0).abs() < 1e-5 && (p[3] - 31.622776).abs() < 1e-4);
    }

    #[test]
    fn rope_angles_are_y_then_x_tiled_twice() {
        let a = rope_angles(&[1.0, 2.0], 2, 3);
        assert_eq!(a.len(), 6 * 8);
        // Patch (0, 2): y = 2 * 0.25 - 1 = -0.5, x = 2 * (2.5 / 3) - 1 = 2/3.
        let row = &a[2 * 8..3 * 8];
        let two_pi = std::f32::consts::TAU;
        let expect = [
            two_pi * -0.5,
            two_pi * -0.5 / 2.0,
            two_pi * (2.0 / 3.0),
            two_pi * (2.0 / 3.0) / 2.0,
        ];
        for k in 0..4 {
            assert!((row[k] - expect[k]).abs() < 1e-5, "{row:?}");
            assert_eq!(row[k], row[k + 4]);
        }
    }
}
