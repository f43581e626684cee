//! Named f32 tensors in the official PyTorch layout, and the mapping table between them
//! and our modules.
//!
//! Every file format (our safetensors, official `.pth`, Hugging Face safetensors) is first
//! read into a [`TensorMap`] keyed by the official names (`blocks.3.attn.qkv.weight`,
//! `head.last_layer.weight_v`, …) and shaped as PyTorch stores them (`Linear.weight` is
//! `[out, in]`). Loading into burn modules is then one table, here.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{HeadConfig, ModelConfig, VitConfig};
use crate::error::{ModelError, Result};
use crate::head::DinoHead;
use crate::vit::VisionTransformer;

/// A dense f32 tensor with its shape, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl RawTensor {
    /// A tensor from its shape and values; panics if they disagree (a bug, not bad input).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?} vs {} values",
            data.len()
        );
        Self { shape, data }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The transpose of a 2-D tensor.
    pub fn transpose2(&self) -> RawTensor {
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut out = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = self.data[i * c + j];
            }
        }
        RawTensor::new(vec![c, r], out)
    }

    fn from_tensor<const D: usize>(t: Tensor<D>) -> RawTensor {
        let shape = t.dims().to_vec();
        let data = t
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("converted to f32 above");
        RawTensor::new(shape, data)
    }

    fn to_tensor<const D: usize>(&self, device: &Device) -> Tensor<D> {
        Tensor::from_data(
            TensorData::new(self.data.clone(), self.shape.clone()),
            device,
        )
    }
}

/// Official tensor names → values.
pub type TensorMap = BTreeMap<String, RawTensor>;

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

impl VisionTransformer {
    /// Replaces every weight with the tensor of the same official name under `prefix`
    /// (`""` for a bare backbone, `"backbone."` inside a full DINO model).
    pub fn load_tensors(&mut self, map: &TensorMap, prefix: &str, device: &Device) -> Result<()> {
        let dim = self.embed_dim();
        let p = self.patch_size();
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
        let pos_len = self.pos_embed.dims()[1];
        self.pos_embed = param(
            &take(map, &format!("{prefix}pos_embed"), &[1, pos_len, dim])?,
            device,
            true,
        );
        for (i, block) in self.blocks.iter_mut().enumerate() {
            let b = format!("{prefix}blocks.{i}");
            load_norm(&mut block.norm1, map, &format!("{b}.norm1"), device)?;
            load_linear(&mut block.attn.qkv, map, &format!("{b}.attn.qkv"), device)?;
            load_linear(&mut block.attn.proj, map, &format!("{b}.attn.proj"), device)?;
            load_norm(&mut block.norm2, map, &format!("{b}.norm2"), device)?;
            load_linear(&mut block.mlp.fc1, map, &format!("{b}.mlp.fc1"), device)?;
            load_linear(&mut block.mlp.fc2, map, &format!("{b}.mlp.fc2"), device)?;
        }
        load_norm(&mut self.norm, map, &format!("{prefix}norm"), device)
    }

    /// Every weight under its official name and layout, prefixed by `prefix`.
    pub fn save_tensors(&self, out: &mut TensorMap, prefix: &str) {
        let dim = self.embed_dim();
        let p = self.patch_size();
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
        out.insert(
            format!("{prefix}pos_embed"),
            RawTensor::from_tensor(self.pos_embed.val()),
        );
        for (i, block) in self.blocks.iter().enumerate() {
            let b = format!("{prefix}blocks.{i}");
            save_norm(&block.norm1, out, &format!("{b}.norm1"));
            save_linear(&block.attn.qkv, out, &format!("{b}.attn.qkv"));
            save_linear(&block.attn.proj, out, &format!("{b}.attn.proj"));
            save_norm(&block.norm2, out, &format!("{b}.norm2"));
            save_linear(&block.mlp.fc1, out, &format!("{b}.mlp.fc1"));
            save_linear(&block.mlp.fc2, out, &format!("{b}.mlp.fc2"));
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
}

impl ModelConfig {
    /// Builds a freshly initialised model.
    pub fn init(&self, device: &Device) -> Result<DinoModel> {
        self.validate()?;
        Ok(DinoModel {
            backbone: self.vit.init(device)?,
            head: self.head.as_ref().map(|h| h.init(device)).transpose()?,
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
        Ok(model)
    }
}

impl DinoModel {
    /// The same model computing its matrix products in `precision` (weights unchanged).
    pub fn with_precision(self, precision: crate::config::Precision) -> Self {
        DinoModel {
            backbone: self.backbone.with_precision(precision),
            head: self.head.map(|h| h.with_precision(precision)),
        }
    }

    /// Every weight under its official name (backbone keys bare, head keys under `head.`),
    /// each name prefixed by `prefix`.
    pub fn save_tensors(&self, out: &mut TensorMap, prefix: &str) {
        self.backbone.save_tensors(out, prefix);
        if let Some(head) = &self.head {
            head.save_tensors(out, &format!("{prefix}head."));
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
    let VitConfig {
        embed_dim: d,
        patch_size: p,
        depth,
        ..
    } = config.vit;
    let h = config.vit.mlp_hidden_dim();
    let g = config.vit.pos_grid();
    let mut s = BTreeMap::new();
    s.insert("patch_embed.proj.weight".into(), vec![d, 3, p, p]);
    s.insert("patch_embed.proj.bias".into(), vec![d]);
    s.insert("cls_token".into(), vec![1, 1, d]);
    s.insert("pos_embed".into(), vec![1, 1 + g * g, d]);
    for i in 0..depth {
        let b = format!("blocks.{i}");
        for (n, shape) in [
            ("norm1.weight", vec![d]),
            ("norm1.bias", vec![d]),
            ("attn.qkv.weight", vec![3 * d, d]),
            ("attn.proj.weight", vec![d, d]),
            ("attn.proj.bias", vec![d]),
            ("norm2.weight", vec![d]),
            ("norm2.bias", vec![d]),
            ("mlp.fc1.weight", vec![h, d]),
            ("mlp.fc1.bias", vec![h]),
            ("mlp.fc2.weight", vec![d, h]),
            ("mlp.fc2.bias", vec![d]),
        ] {
            s.insert(format!("{b}.{n}"), shape);
        }
        if config.vit.qkv_bias {
            s.insert(format!("{b}.attn.qkv.bias"), vec![3 * d]);
        }
    }
    s.insert("norm.weight".into(), vec![d]);
    s.insert("norm.bias".into(), vec![d]);
    if let Some(HeadConfig {
        in_dim,
        out_dim,
        hidden_dim,
        bottleneck_dim,
        nlayers,
        ..
    }) = config.head
    {
        let dims: Vec<(usize, usize)> = if nlayers == 1 {
            vec![(in_dim, bottleneck_dim)]
        } else {
            let mut v = vec![(in_dim, hidden_dim)];
            v.extend(std::iter::repeat_n((hidden_dim, hidden_dim), nlayers - 2));
            v.push((hidden_dim, bottleneck_dim));
            v
        };
        for (i, (din, dout)) in dims.iter().enumerate() {
            let name = head_mlp_name("head.", i, nlayers);
            s.insert(format!("{name}.weight"), vec![*dout, *din]);
            s.insert(format!("{name}.bias"), vec![*dout]);
        }
        s.insert(
            "head.last_layer.weight_v".into(),
            vec![out_dim, bottleneck_dim],
        );
        s.insert("head.last_layer.weight_g".into(), vec![out_dim, 1]);
    }
    s
}
