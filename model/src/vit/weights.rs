//! The mapping table between official tensor names and our modules, and [`DinoModel`].
//!
//! Every file format (our safetensors, official `.pth`, Hugging Face safetensors) is first
//! read into a [`TensorMap`] keyed by the official names (`blocks.3.attn.qkv.weight`,
//! `head.last_layer.weight_v`, …) and shaped as PyTorch stores them (`Linear.weight` is
//! `[out, in]`). Loading into burn modules is then one table, here.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Device, Tensor};

use super::head::DinoHead;
use super::transformer::{SwiGlu, VisionTransformer};
use crate::config::{Family, Ffn, HeadConfig, ModelConfig, VitConfig};
use crate::error::{ModelError, Result};
use crate::tensors::{RawTensor, TensorMap};

fn take(map: &TensorMap, name: &str, expected: &[usize]) -> Result<RawTensor> {
    let t = map.get(name).ok_or_else(|| ModelError::MissingTensor {
        name: name.to_string(),
        expected: expected.to_vec(),
    })?;
    if t.shape != expected {
        return Err(ModelError::ShapeMismatch {
            name: name.to_string(),
            expected: expected.to_vec(),
            found: t.shape.clone(),
        });
    }
    if t.data.iter().any(|v| !v.is_finite()) {
        return Err(ModelError::NonFinite {
            name: name.to_string(),
        });
    }
    Ok(t.clone())
}

fn param<const D: usize>(t: &RawTensor, device: &Device, require_grad: bool) -> Param<Tensor<D>> {
    Param::from_tensor(t.to_tensor::<D>(device)).set_require_grad(require_grad)
}

fn load_linear(linear: &mut Linear, map: &TensorMap, prefix: &str, device: &Device) -> Result<()> {
    let [d_in, d_out] = linear.weight.dims();
    let w = take(map, &format!("{prefix}.weight"), &[d_out, d_in])?;
    linear.weight = param(&w.transpose2(), device, true);
    if let Some(bias) = &mut linear.bias {
        *bias = param(
            &take(map, &format!("{prefix}.bias"), &[d_out])?,
            device,
            true,
        );
    }
    Ok(())
}

fn save_linear(linear: &Linear, out: &mut TensorMap, prefix: &str) {
    out.insert(
        format!("{prefix}.weight"),
        RawTensor::from_tensor(linear.weight.val()).transpose2(),
    );
    if let Some(bias) = &linear.bias {
        out.insert(format!("{prefix}.bias"), RawTensor::from_tensor(bias.val()));
    }
}

fn load_norm(norm: &mut LayerNorm, map: &TensorMap, prefix: &str, device: &Device) -> Result<()> {
    let [d] = norm.gamma.dims();
    norm.gamma = param(&take(map, &format!("{prefix}.weight"), &[d])?, device, true);
    if let Some(beta) = &mut norm.beta {
        *beta = param(&take(map, &format!("{prefix}.bias"), &[d])?, device, true);
    }
    Ok(())
}

fn save_norm(norm: &LayerNorm, out: &mut TensorMap, prefix: &str) {
    out.insert(
        format!("{prefix}.weight"),
        RawTensor::from_tensor(norm.gamma.val()),
    );
    if let Some(beta) = &norm.beta {
        out.insert(format!("{prefix}.bias"), RawTensor::from_tensor(beta.val()));
    }
}

/// Reorders the official conv weight `[dim, 3, p, p]` into our patch matrix `[3·p·p, dim]`.
fn conv_to_matrix(conv: &RawTensor) -> RawTensor {
    let dim = conv.shape[0];
    let k = conv.numel() / dim;
    RawTensor::new(vec![dim, k], conv.data.clone()).transpose2()
}

/// Stacks two `[rows, cols]` tensors into `[2 rows, cols]` (DINOv3's `w1`, `w2` into our `w12`).
fn stack_rows(a: &RawTensor, b: &RawTensor) -> RawTensor {
    let mut shape = a.shape.clone();
    shape[0] += b.shape[0];
    RawTensor::new(shape, a.data.iter().chain(&b.data).copied().collect())
}

/// The first or second half of the rows of a tensor (the inverse of [`stack_rows`]).
fn half_rows(t: &RawTensor, second: bool) -> RawTensor {
    let mut shape = t.shape.clone();
    shape[0] /= 2;
    let n = t.numel() / 2;
    let data = if second { &t.data[n..] } else { &t.data[..n] };
    RawTensor::new(shape, data.to_vec())
}

fn load_swiglu(
    swiglu: &mut SwiGlu,
    family: Family,
    map: &TensorMap,
    b: &str,
    device: &Device,
) -> Result<()> {
    if family == Family::Dinov3 {
        // w1 and w2 stacked: the first half of w12 gives x1 (gated by SiLU), the second x2.
        let [d_in, d_out2] = swiglu.w12.weight.dims();
        let h = d_out2 / 2;
        let mut parts = TensorMap::new();
        for s in ["weight", "bias"] {
            let shape: Vec<usize> = if s == "weight" {
                vec![h, d_in]
            } else {
                vec![h]
            };
            let name1 = format!("{b}.mlp.w1.{s}");
            let name2 = format!("{b}.mlp.w2.{s}");
            if s == "bias" && swiglu.w12.bias.is_none() {
                continue;
            }
            let w1 = take(map, &name1, &shape)?;
            let w2 = take(map, &name2, &shape)?;
            parts.insert(format!("w12.{s}"), stack_rows(&w1, &w2));
        }
        load_linear(&mut swiglu.w12, &parts, "w12", device)?;
    } else {
        load_linear(&mut swiglu.w12, map, &format!("{b}.mlp.w12"), device)?;
    }
    load_linear(&mut swiglu.w3, map, &format!("{b}.mlp.w3"), device)
}

fn save_swiglu(swiglu: &SwiGlu, family: Family, out: &mut TensorMap, b: &str) {
    if family == Family::Dinov3 {
        let mut packed = TensorMap::new();
        save_linear(&swiglu.w12, &mut packed, "w12");
        for (s, t) in packed {
            let s = s.trim_start_matches("w12.");
            out.insert(format!("{b}.mlp.w1.{s}"), half_rows(&t, false));
            out.insert(format!("{b}.mlp.w2.{s}"), half_rows(&t, true));
        }
    } else {
        save_linear(&swiglu.w12, out, &format!("{b}.mlp.w12"));
    }
    save_linear(&swiglu.w3, out, &format!("{b}.mlp.w3"));
}

fn load_gamma(
    gamma: &mut Option<Param<Tensor<1>>>,
    map: &TensorMap,
    name: &str,
    device: &Device,
) -> Result<()> {
    if let Some(g) = gamma {
        let [d] = g.dims();
        *g = param(&take(map, name, &[d])?, device, true);
    }
    Ok(())
}

impl VisionTransformer {
    /// Replaces every weight with the tensor of the same official name under `prefix`
    /// (`""` for a bare backbone, `"backbone."` inside a full DINO model).
    pub fn load_tensors(&mut self, map: &TensorMap, prefix: &str, device: &Device) -> Result<()> {
        let dim = self.embed_dim();
        let p = self.patch_size();
        let family = self.family();
        let conv = take(
            map,
            &format!("{prefix}patch_embed.proj.weight"),
            &[dim, 3, p, p],
        )?;
        self.patch_weight = param(&conv_to_matrix(&conv), device, true);
        self.patch_bias = param(
            &take(map, &format!("{prefix}patch_embed.proj.bias"), &[dim])?,
            device,
            true,
        );
        self.cls_token = param(
            &take(map, &format!("{prefix}cls_token"), &[1, 1, dim])?,
            device,
            true,
        );
        if let Some(pos) = &mut self.pos_embed {
            let pos_len = pos.dims()[1];
            *pos = param(
                &take(map, &format!("{prefix}pos_embed"), &[1, pos_len, dim])?,
                device,
                true,
            );
        }
        if let Some(reg) = &mut self.register_tokens {
            let r = reg.dims()[1];
            *reg = param(
                &take(
                    map,
                    &format!("{prefix}{}", family.register_key()),
                    &[1, r, dim],
                )?,
                device,
                true,
            );
        }
        if let Some(mask) = &mut self.mask_token {
            *mask = param(
                &take(map, &format!("{prefix}mask_token"), &[1, dim])?,
                device,
                true,
            );
        }
        if let Some(periods) = self.rope_periods() {
            let n = periods.len();
            let t = take(map, &format!("{prefix}rope_embed.periods"), &[n])?;
            if t.data.iter().any(|&v| !(v > 0.0)) {
                return Err(ModelError::InvalidConfig {
                    reason: format!(
                        "`{prefix}rope_embed.periods` must be positive: {:?}",
                        t.data
                    ),
                });
            }
            self.set_rope_periods(Some(t.data));
        }
        for (i, block) in self.blocks.iter_mut().enumerate() {
            let b = format!("{prefix}blocks.{i}");
            load_norm(&mut block.norm1, map, &format!("{b}.norm1"), device)?;
            load_linear(&mut block.attn.qkv, map, &format!("{b}.attn.qkv"), device)?;
            load_linear(&mut block.attn.proj, map, &format!("{b}.attn.proj"), device)?;
            load_gamma(&mut block.ls1, map, &format!("{b}.ls1.gamma"), device)?;
            load_norm(&mut block.norm2, map, &format!("{b}.norm2"), device)?;
            if let Some(mlp) = &mut block.mlp {
                load_linear(&mut mlp.fc1, map, &format!("{b}.mlp.fc1"), device)?;
                load_linear(&mut mlp.fc2, map, &format!("{b}.mlp.fc2"), device)?;
            }
            if let Some(swiglu) = &mut block.swiglu {
                load_swiglu(swiglu, family, map, &b, device)?;
            }
            load_gamma(&mut block.ls2, map, &format!("{b}.ls2.gamma"), device)?;
        }
        load_norm(&mut self.norm, map, &format!("{prefix}norm"), device)
    }

    /// Every weight under its official name and layout, prefixed by `prefix`.
    pub fn save_tensors(&self, out: &mut TensorMap, prefix: &str) {
        let dim = self.embed_dim();
        let p = self.patch_size();
        let family = self.family();
        let m = RawTensor::from_tensor(self.patch_weight.val()).transpose2();
        out.insert(
            format!("{prefix}patch_embed.proj.weight"),
            RawTensor::new(vec![dim, 3, p, p], m.data),
        );
        out.insert(
            format!("{prefix}patch_embed.proj.bias"),
            RawTensor::from_tensor(self.patch_bias.val()),
        );
        out.insert(
            format!("{prefix}cls_token"),
            RawTensor::from_tensor(self.cls_token.val()),
        );
        if let Some(pos) = &self.pos_embed {
            out.insert(
                format!("{prefix}pos_embed"),
                RawTensor::from_tensor(pos.val()),
            );
        }
        if let Some(reg) = &self.register_tokens {
            out.insert(
                format!("{prefix}{}", family.register_key()),
                RawTensor::from_tensor(reg.val()),
            );
        }
        if let Some(mask) = &self.mask_token {
            out.insert(
                format!("{prefix}mask_token"),
                RawTensor::from_tensor(mask.val()),
            );
        }
        if let Some(periods) = self.rope_periods() {
            out.insert(
                format!("{prefix}rope_embed.periods"),
                RawTensor::new(vec![periods.len()], periods.to_vec()),
            );
        }
        for (i, block) in self.blocks.iter().enumerate() {
            let b = format!("{prefix}blocks.{i}");
            save_norm(&block.norm1, out, &format!("{b}.norm1"));
            save_linear(&block.attn.qkv, out, &format!("{b}.attn.qkv"));
            save_linear(&block.attn.proj, out, &format!("{b}.attn.proj"));
            save_norm(&block.norm2, out, &format!("{b}.norm2"));
            if let Some(mlp) = &block.mlp {
                save_linear(&mlp.fc1, out, &format!("{b}.mlp.fc1"));
                save_linear(&mlp.fc2, out, &format!("{b}.mlp.fc2"));
            }
            if let Some(swiglu) = &block.swiglu {
                save_swiglu(swiglu, family, out, &b);
            }
            for (name, g) in [("ls1", &block.ls1), ("ls2", &block.ls2)] {
                if let Some(g) = g {
                    out.insert(format!("{b}.{name}.gamma"), RawTensor::from_tensor(g.val()));
                }
            }
        }
        save_norm(&self.norm, out, &format!("{prefix}norm"));
    }
}

/// Official index of MLP layer `i` inside `head.mlp` (an `nn.Sequential` with GELUs between).
fn head_mlp_index(i: usize, nlayers: usize) -> Option<usize> {
    (nlayers > 1).then_some(2 * i)
}

fn head_mlp_name(prefix: &str, i: usize, nlayers: usize) -> String {
    match head_mlp_index(i, nlayers) {
        Some(idx) => format!("{prefix}mlp.{idx}"),
        None => format!("{prefix}mlp"),
    }
}

impl DinoHead {
    /// Replaces every weight with the tensor of the same official name under `prefix` (`"head."`).
    pub fn load_tensors(&mut self, map: &TensorMap, prefix: &str, device: &Device) -> Result<()> {
        let n = self.mlp.len();
        for (i, layer) in self.mlp.iter_mut().enumerate() {
            load_linear(layer, map, &head_mlp_name(prefix, i, n), device)?;
        }
        let [bottleneck, out_dim] = self.last_layer_v.dims();
        if !self.weight_norm() {
            let w = take(
                map,
                &format!("{prefix}last_layer.weight"),
                &[out_dim, bottleneck],
            )?;
            self.last_layer_v = param(&w.transpose2(), device, true);
            return Ok(());
        }
        let v = take(
            map,
            &format!("{prefix}last_layer.weight_v"),
            &[out_dim, bottleneck],
        )?;
        self.last_layer_v = param(&v.transpose2(), device, true);
        let g = take(map, &format!("{prefix}last_layer.weight_g"), &[out_dim, 1])?;
        let frozen = !self.last_layer_g.is_require_grad();
        self.last_layer_g = param(&RawTensor::new(vec![out_dim], g.data), device, !frozen);
        Ok(())
    }

    /// Every weight under its official name and layout, prefixed by `prefix`.
    pub fn save_tensors(&self, out: &mut TensorMap, prefix: &str) {
        let n = self.mlp.len();
        for (i, layer) in self.mlp.iter().enumerate() {
            save_linear(layer, out, &head_mlp_name(prefix, i, n));
        }
        if !self.weight_norm() {
            out.insert(
                format!("{prefix}last_layer.weight"),
                RawTensor::from_tensor(self.last_layer_v.val()).transpose2(),
            );
            return;
        }
        out.insert(
            format!("{prefix}last_layer.weight_v"),
            RawTensor::from_tensor(self.last_layer_v.val()).transpose2(),
        );
        let g = RawTensor::from_tensor(self.last_layer_g.val());
        out.insert(
            format!("{prefix}last_layer.weight_g"),
            RawTensor::new(vec![g.numel(), 1], g.data),
        );
    }
}

/// A backbone with its optional head, as stored in a checkpoint.
#[derive(burn::module::Module, Debug)]
pub struct DinoModel {
    /// The Vision Transformer.
    pub backbone: VisionTransformer,
    /// The DINO projection head, when the file has one.
    pub head: Option<DinoHead>,
    /// iBOT's own head (`ibot_head.` in the official keys), when it is not the DINO head.
    pub ibot_head: Option<DinoHead>,
}

impl ModelConfig {
    /// Builds a freshly initialised model.
    pub fn init(&self, device: &Device) -> Result<DinoModel> {
        self.validate()?;
        Ok(DinoModel {
            backbone: self.vit.init(device)?,
            head: self.head.as_ref().map(|h| h.init(device)).transpose()?,
            ibot_head: self
                .ibot_head
                .as_ref()
                .map(|h| h.init(device))
                .transpose()?,
        })
    }

    /// Builds the model and fills it from `map`, where the backbone's names carry
    /// `backbone_prefix` and the head's `head.` after `prefix`.
    pub fn load(&self, map: &TensorMap, prefix: &str, device: &Device) -> Result<DinoModel> {
        let mut model = self.init(device)?;
        model.backbone.load_tensors(map, prefix, device)?;
        if let Some(head) = &mut model.head {
            head.load_tensors(map, &format!("{prefix}head."), device)?;
        }
        if let Some(head) = &mut model.ibot_head {
            head.load_tensors(map, &format!("{prefix}ibot_head."), device)?;
        }
        Ok(model)
    }
}

impl DinoModel {
    /// The same model computing its matrix products in `precision` (weights unchanged).
    pub fn with_precision(self, precision: crate::config::Precision) -> Self {
        DinoModel {
            backbone: self.backbone.with_precision(precision),
            head: self.head.map(|h| h.with_precision(precision)),
            ibot_head: self.ibot_head.map(|h| h.with_precision(precision)),
        }
    }

    /// Every weight under its official name (backbone keys bare, head keys under `head.`),
    /// each name prefixed by `prefix`.
    pub fn save_tensors(&self, out: &mut TensorMap, prefix: &str) {
        self.backbone.save_tensors(out, prefix);
        if let Some(head) = &self.head {
            head.save_tensors(out, &format!("{prefix}head."));
        }
        if let Some(head) = &self.ibot_head {
            head.save_tensors(out, &format!("{prefix}ibot_head."));
        }
    }

    /// Number of scalar parameters.
    pub fn num_params(&self) -> usize {
        let mut map = TensorMap::new();
        self.save_tensors(&mut map, "");
        map.values().map(RawTensor::numel).sum()
    }
}

/// The expected official shape of every tensor of a model with this config (for `dino info`
/// and for validating imports without building the model).
pub fn expected_shapes(config: &ModelConfig) -> BTreeMap<String, Vec<usize>> {
    let vit = &config.vit;
    let VitConfig {
        embed_dim: d,
        patch_size: p,
        depth,
        ..
    } = *vit;
    let h = vit.mlp_hidden_dim();
    let g = vit.pos_grid();
    let mut s = BTreeMap::new();
    s.insert("patch_embed.proj.weight".into(), vec![d, 3, p, p]);
    s.insert("patch_embed.proj.bias".into(), vec![d]);
    s.insert("cls_token".into(), vec![1, 1, d]);
    if vit.has_pos_embed() {
        s.insert("pos_embed".into(), vec![1, 1 + g * g, d]);
    } else {
        s.insert("rope_embed.periods".into(), vec![vit.head_dim() / 4]);
    }
    if vit.num_register_tokens > 0 {
        s.insert(
            vit.family.register_key().into(),
            vec![1, vit.num_register_tokens, d],
        );
    }
    if vit.has_mask_token() {
        s.insert("mask_token".into(), vec![1, d]);
    }
    for i in 0..depth {
        let b = format!("blocks.{i}");
        let mut entries = vec![
            ("norm1.weight", vec![d]),
            ("norm1.bias", vec![d]),
            ("attn.qkv.weight", vec![3 * d, d]),
            ("attn.proj.weight", vec![d, d]),
            ("attn.proj.bias", vec![d]),
            ("norm2.weight", vec![d]),
            ("norm2.bias", vec![d]),
        ];
        match vit.ffn {
            Ffn::Mlp => entries.extend([
                ("mlp.fc1.weight", vec![h, d]),
                ("mlp.fc1.bias", vec![h]),
                ("mlp.fc2.weight", vec![d, h]),
                ("mlp.fc2.bias", vec![d]),
            ]),
            Ffn::SwiGluPacked { .. } => entries.extend([
                ("mlp.w12.weight", vec![2 * h, d]),
                ("mlp.w12.bias", vec![2 * h]),
                ("mlp.w3.weight", vec![d, h]),
                ("mlp.w3.bias", vec![d]),
            ]),
            Ffn::SwiGlu { .. } => entries.extend([
                ("mlp.w1.weight", vec![h, d]),
                ("mlp.w1.bias", vec![h]),
                ("mlp.w2.weight", vec![h, d]),
                ("mlp.w2.bias", vec![h]),
                ("mlp.w3.weight", vec![d, h]),
                ("mlp.w3.bias", vec![d]),
            ]),
        }
        if vit.layer_scale {
            entries.extend([("ls1.gamma", vec![d]), ("ls2.gamma", vec![d])]);
        }
        for (n, shape) in entries {
            s.insert(format!("{b}.{n}"), shape);
        }
        if vit.qkv_bias {
            s.insert(format!("{b}.attn.qkv.bias"), vec![3 * d]);
        }
    }
    s.insert("norm.weight".into(), vec![d]);
    s.insert("norm.bias".into(), vec![d]);
    for (prefix, head) in [("head.", &config.head), ("ibot_head.", &config.ibot_head)] {
        let Some(head) = head else { continue };
        let HeadConfig {
            in_dim,
            out_dim,
            hidden_dim,
            bottleneck_dim,
            nlayers,
            weight_norm,
            ..
        } = *head;
        let dims: Vec<(usize, usize)> = if nlayers == 1 {
            vec![(in_dim, bottleneck_dim)]
        } else {
            let mut v = vec![(in_dim, hidden_dim)];
            v.extend(std::iter::repeat_n((hidden_dim, hidden_dim), nlayers - 2));
            v.push((hidden_dim, bottleneck_dim));
            v
        };
        for (i, (din, dout)) in dims.iter().enumerate() {
            let name = head_mlp_name(prefix, i, nlayers);
            s.insert(format!("{name}.weight"), vec![*dout, *din]);
            s.insert(format!("{name}.bias"), vec![*dout]);
        }
        if weight_norm {
            s.insert(
                format!("{prefix}last_layer.weight_v"),
                vec![out_dim, bottleneck_dim],
            );
            s.insert(format!("{prefix}last_layer.weight_g"), vec![out_dim, 1]);
        } else {
            s.insert(
                format!("{prefix}last_layer.weight"),
                vec![out_dim, bottleneck_dim],
            );
        }
    }
    s
}
