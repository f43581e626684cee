//! The optimisers of `main_dino.py` (AdamW, SGD with momentum, LARS) with DINO's parameter
//! groups and per-parameter gradient clipping, and the EMA teacher update, written against
//! burn's module mapper so that every rule of `main_dino.py` / `utils.py` is explicit:
//!
//! - weight decay only on weights with 2 or more dimensions that are not biases
//!   (`utils.get_params_groups`); the official `last_layer.weight_g` is `[out, 1]`, so it
//!   counts as 2-D even though we store it as a vector;
//! - each gradient is rescaled to norm ≤ `clip` on its own (`utils.clip_gradients`);
//! - while `epoch < freeze_last_layer` the last layer gets no gradient at all, so AdamW
//!   skips it, weight decay included (`utils.cancel_gradients_last_layer`);
//! - AdamW is PyTorch's: decoupled decay `p ← p(1 − lr·wd)`, bias-corrected moments, a
//!   step count per parameter;
//! - SGD is PyTorch's with momentum 0.9: `d = g + wd·p`, `buf ← 0.9·buf + d`, `p ← p − lr·buf`;
//! - LARS is `utils.LARS`: on every parameter that is not 1-D, `d = g + wd·p` scaled by the
//!   trust ratio `0.001·‖p‖/‖d‖` (1 when either norm is 0); `mu ← 0.9·mu + d`, `p ← p − lr·mu`.

use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use dino_model::{DinoModel, RawTensor};

/// Adam β₁ (PyTorch default).
pub const BETA1: f64 = 0.9;
/// Adam β₂ (PyTorch default).
pub const BETA2: f64 = 0.999;
/// Adam ε (PyTorch default).
pub const EPS: f64 = 1e-8;

/// Momentum of SGD and LARS (`torch.optim.SGD(..., momentum=0.9)`, `LARS(momentum=0.9)`).
pub const MOMENTUM: f64 = 0.9;
/// LARS trust coefficient (`eta=0.001`).
pub const LARS_ETA: f64 = 0.001;

/// `--optimizer`: the three choices of `main_dino.py`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `torch.optim.AdamW` (the default, for ViTs).
    #[default]
    AdamW,
    /// `torch.optim.SGD` with momentum 0.9.
    Sgd,
    /// `utils.LARS` (for convnets and large batches).
    Lars,
}

impl OptimizerKind {
    /// The names of the per-parameter state tensors, as PyTorch's state dict calls them.
    pub fn buffer_names(self) -> &'static [&'static str] {
        match self {
            OptimizerKind::AdamW => &["exp_avg", "exp_avg_sq"],
            OptimizerKind::Sgd => &["momentum_buffer"],
            OptimizerKind::Lars => &["mu"],
        }
    }
}

/// One parameter's optimiser state: its buffers (see [`OptimizerKind::buffer_names`]), the
/// steps it took and its shape.
#[derive(Debug, Clone)]
struct ParamState {
    buffers: Vec<Tensor<1>>,
    step: u64,
    shape: Vec<usize>,
}

/// The optimiser and its state for every parameter, keyed by the parameter's module path.
#[derive(Debug, Clone, Default)]
pub struct Optimizer {
    kind: OptimizerKind,
    state: HashMap<String, ParamState>,
}

/// The hyperparameters of one optimiser step.
#[derive(Debug, Clone, Copy)]
pub struct StepParams {
    /// Learning rate of this iteration.
    pub lr: f64,
    /// Weight decay of this iteration (regularised group only).
    pub weight_decay: f64,
    /// Gradient-norm limit (per parameter for DINO, per sub-model for DINOv2); 0 disables
    /// clipping.
    pub clip_grad: f64,
    /// Whether the last layer is still frozen this epoch.
    pub freeze_last_layer: bool,
    /// DINOv2's rules instead of DINO's; `None` for DINO.
    pub dinov2: Option<Dinov2Rules>,
}

/// DINOv2's optimiser rules (`train/train.py`, `utils/param_groups.py`), which differ from
/// DINO's in three ways: learning-rate multipliers per parameter (layer decay, patch-embedding
/// multiplier) with weight decay off for biases, norms and LayerScale
/// ([`crate::optim::param_groups::dinov2_param_group`]); `clip_grad_norm_` on the global gradient norm
/// of each sub-model (backbone, head) instead of each parameter's; and a frozen last layer gets
/// learning rate 0 (its AdamW moments still move) instead of no gradient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dinov2Rules {
    /// Blocks of the backbone.
    pub depth: usize,
    /// Layer-wise learning-rate decay (`optim.layerwise_decay`, 0.9).
    pub layer_decay: f64,
    /// Learning-rate multiplier of the patch embedding (`optim.patch_embed_lr_mult`, 0.2).
    pub patch_embed_lr_mult: f64,
}

/// The settings DINOv2's parameter groups take (`optim.layerwise_decay`,
/// `optim.patch_embed_lr_mult`), saved with a DINOv2 or DINOv3 run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dinov2Groups {
    /// Layer-wise learning-rate decay (0.9).
    pub layer_decay: f64,
    /// Learning-rate multiplier of the patch embedding (0.2).
    pub patch_embed_lr_mult: f64,
}

impl Default for Dinov2Groups {
    fn default() -> Self {
        Self {
            layer_decay: 0.9,
            patch_embed_lr_mult: 0.2,
        }
    }
}

impl Dinov2Groups {
    /// The rules for a backbone of `depth` blocks.
    pub fn rules(self, depth: usize) -> Dinov2Rules {
        Dinov2Rules {
            depth,
            layer_decay: self.layer_decay,
            patch_embed_lr_mult: self.patch_embed_lr_mult,
        }
    }
}

/// The run's optimiser section (`optim` in `config.json`): which optimiser, how gradients
/// are clipped, the arithmetic and DINOv2's parameter groups. The values that change over the
/// run (learning rate, weight decay) are in the schedule section.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// `adamw` (official default), `sgd` or `lars`.
    pub optimizer: OptimizerKind,
    /// Gradient-norm clip (per parameter for DINO, per sub-model for DINOv2); 0 = off.
    pub clip_grad: f64,
    /// f32, or mixed precision with dynamic loss scaling (`--use_fp16`).
    pub precision: dino_model::Precision,
    /// Loss scale an f16 run starts from.
    pub loss_scale: f64,
    /// DINOv2's parameter groups; absent for DINO, whose groups are `main_dino.py`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dinov2: Option<Dinov2Groups>,
}

impl Default for OptimConfig {
    /// `main_dino.py`'s: AdamW, clipping at 3.0, f32.
    fn default() -> Self {
        Self {
            optimizer: OptimizerKind::AdamW,
            clip_grad: 3.0,
            precision: dino_model::Precision::F32,
            loss_scale: crate::optim::amp::INIT_SCALE,
            dinov2: None,
        }
    }
}

/// Whether the official code puts this parameter in the regularised group.
pub fn is_regularized(path: &str, rank: usize) -> bool {
    if path.ends_with("last_layer_g") {
        return true;
    }
    let bias = path.ends_with(".bias") || path.ends_with(".beta") || path.ends_with("patch_bias");
    rank >= 2 && !bias
}

/// Whether the parameter belongs to the head's last layer.
pub fn is_last_layer(path: &str) -> bool {
    path.contains("last_layer")
}

struct PathTracker {
    stack: Vec<String>,
}

impl PathTracker {
    fn enter(&mut self, name: &str) {
        self.stack.push(name.to_string());
    }
    fn exit(&mut self) {
        self.stack.pop();
    }
    fn path(&self) -> String {
        self.stack.join(".")
    }
}

struct StepMapper<'a> {
    grads: &'a mut GradientsParams,
    state: &'a mut Optimizer,
    params: StepParams,
    path: PathTracker,
    /// DINOv2: the clip coefficient of each sub-model (the path's first segment), `[1]`.
    submodel_clip: HashMap<String, Tensor<1>>,
}

/// The sub-model a parameter path belongs to (`backbone`, `head`): what DINOv2 clips as one.
fn submodel(path: &str) -> &str {
    path.split('.').next().unwrap_or(path)
}

/// Sums each sub-model's squared gradient norms (for `clip_grad_norm_`).
struct SquaredNorms<'a> {
    grads: &'a GradientsParams,
    path: PathTracker,
    sums: HashMap<String, Tensor<1>>,
}

impl ModuleVisitor for SquaredNorms<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(g) = self.grads.get::<D>(param.id) else {
            return;
        };
        let sq = g.square().sum();
        let key = submodel(&self.path.path()).to_string();
        let total = match self.sums.remove(&key) {
            Some(t) => t + sq,
            None => sq,
        };
        self.sums.insert(key, total);
    }
}

impl ModuleMapper for StepMapper<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let path = self.path.path();
        let group = self.params.dinov2.map(|r| {
            crate::optim::param_groups::dinov2_param_group(
                &official_param_name(&path),
                r.depth,
                r.layer_decay,
                r.patch_embed_lr_mult,
            )
        });
        if group.is_none() && self.params.freeze_last_layer && is_last_layer(&path) {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let require_grad = tensor.is_require_grad();
        let shape = tensor.dims().to_vec();
        let n: usize = shape.iter().product();
        let p = tensor.inner().reshape([n]);
        let mut g = grad.reshape([n]);
        if let Some(coef) = self.submodel_clip.get(submodel(&path)) {
            g = g * coef.clone();
        } else if group.is_none() && self.params.clip_grad > 0.0 {
            // clip_coef = clip / (‖g‖ + 1e-6), applied only when < 1; kept on the device (no sync).
            let norm = g.clone().square().sum().sqrt();
            let coef = norm
                .add_scalar(1e-6)
                .recip()
                .mul_scalar(self.params.clip_grad)
                .clamp_max(1.0);
            g = g * coef;
        }
        let device = p.device();
        let kind = self.state.kind;
        let (buffers, step) = match self.state.state.remove(&path) {
            Some(s) => (s.buffers, s.step),
            None => (
                kind.buffer_names()
                    .iter()
                    .map(|_| Tensor::zeros([n], &device))
                    .collect(),
                0,
            ),
        };
        let step = step + 1;
        let StepParams {
            lr, weight_decay, ..
        } = self.params;
        let (lr, wd) = match group {
            Some(g) => {
                let frozen = g.is_last_layer && self.params.freeze_last_layer;
                let lr = if frozen { 0.0 } else { lr * g.lr_multiplier };
                (lr, weight_decay * g.wd_multiplier)
            }
            None if is_regularized(&path, shape.len()) => (lr, weight_decay),
            None => (lr, 0.0),
        };
        let (p, buffers) = match kind {
            OptimizerKind::AdamW => adamw(p, g, buffers, step, lr, wd),
            OptimizerKind::Sgd => {
                let d = if wd != 0.0 {
                    g + p.clone().mul_scalar(wd)
                } else {
                    g
                };
                momentum(p, d, buffers, lr)
            }
            OptimizerKind::Lars => {
                if official_ndim(&path, shape.len()) == 1 {
                    momentum(p, g, buffers, lr)
                } else {
                    let d = g + p.clone().mul_scalar(wd);
                    let d = d.clone() * trust_ratio(&p, &d);
                    momentum(p, d, buffers, lr)
                }
            }
        };
        self.state.state.insert(
            path,
            ParamState {
                buffers,
                step,
                shape: shape.clone(),
            },
        );
        let mut out: Tensor<D> = Tensor::from_inner(p.reshape(to_array::<D>(&shape)));
        if require_grad {
            out = out.require_grad();
        }
        Param::from_mapped_value(id, out, mapper)
    }
}

/// PyTorch's AdamW: decoupled decay, then the bias-corrected moment update.
fn adamw(
    p: Tensor<1>,
    g: Tensor<1>,
    buffers: Vec<Tensor<1>>,
    step: u64,
    lr: f64,
    wd: f64,
) -> (Tensor<1>, Vec<Tensor<1>>) {
    let [m, v]: [Tensor<1>; 2] = buffers.try_into().expect("AdamW keeps two buffers");
    let p = if wd != 0.0 {
        p.mul_scalar(1.0 - lr * wd)
    } else {
        p
    };
    let m = m.mul_scalar(BETA1) + g.clone().mul_scalar(1.0 - BETA1);
    let v = v.mul_scalar(BETA2) + g.square().mul_scalar(1.0 - BETA2);
    let bc1 = 1.0 - BETA1.powi(step as i32);
    let bc2 = 1.0 - BETA2.powi(step as i32);
    let denom = v.clone().sqrt().div_scalar(bc2.sqrt()).add_scalar(EPS);
    let p = p - (m.clone() / denom).mul_scalar(lr / bc1);
    (p, vec![m, v])
}

/// The heavy-ball update SGD and LARS share: `buf ← 0.9·buf + d`, `p ← p − lr·buf`.
fn momentum(
    p: Tensor<1>,
    d: Tensor<1>,
    buffers: Vec<Tensor<1>>,
    lr: f64,
) -> (Tensor<1>, Vec<Tensor<1>>) {
    let [buf]: [Tensor<1>; 1] = buffers.try_into().expect("one momentum buffer");
    let buf = buf.mul_scalar(MOMENTUM) + d;
    (p - buf.clone().mul_scalar(lr), vec![buf])
}

/// LARS's `eta·‖p‖/‖d‖`, or 1 when either norm is 0; kept on the device.
fn trust_ratio(p: &Tensor<1>, d: &Tensor<1>) -> Tensor<1> {
    let p_norm = p.clone().square().sum().sqrt();
    let d_norm = d.clone().square().sum().sqrt();
    let ratio = p_norm.clone().mul_scalar(LARS_ETA) / d_norm.clone();
    ratio
        .mask_fill(d_norm.equal_elem(0.0), 1.0)
        .mask_fill(p_norm.equal_elem(0.0), 1.0)
}

/// The number of dimensions PyTorch sees: our weight-norm gain is a vector, the official
/// `last_layer.weight_g` is `[out, 1]`.
fn official_ndim(path: &str, rank: usize) -> usize {
    if path.ends_with("last_layer_g") {
        2
    } else {
        rank
    }
}

fn to_array<const D: usize>(shape: &[usize]) -> [usize; D] {
    let mut a = [0usize; D];
    a.copy_from_slice(shape);
    a
}

impl Optimizer {
    /// An optimiser of `kind` with no state yet.
    pub fn new(kind: OptimizerKind) -> Self {
        Self {
            kind,
            state: HashMap::new(),
        }
    }

    /// Which optimiser this is.
    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// Applies one optimiser step with DINO's rules to every parameter that has a gradient.
    pub fn step(
        &mut self,
        model: DinoModel,
        grads: &mut GradientsParams,
        params: StepParams,
    ) -> DinoModel {
        let mut submodel_clip = HashMap::new();
        if params.dinov2.is_some() && params.clip_grad > 0.0 {
            // torch.nn.utils.clip_grad_norm_: coef = clip / (‖g‖ + 1e-6), applied when < 1.
            let mut norms = SquaredNorms {
                grads,
                path: PathTracker { stack: Vec::new() },
                sums: HashMap::new(),
            };
            model.visit(&mut norms);
            for (key, sq) in norms.sums {
                let coef = sq
                    .sqrt()
                    .add_scalar(1e-6)
                    .recip()
                    .mul_scalar(params.clip_grad)
                    .clamp_max(1.0);
                submodel_clip.insert(key, coef);
            }
        }
        let mut mapper = StepMapper {
            grads,
            state: self,
            params,
            path: PathTracker { stack: Vec::new() },
            submodel_clip,
        };
        model.map(&mut mapper)
    }

    /// The state as named host tensors (`<path>.<buffer>`, PyTorch's buffer names: `exp_avg`
    /// and `exp_avg_sq` for AdamW, `momentum_buffer` for SGD, `mu` for LARS) and step counts.
    pub fn export(&self) -> (BTreeMap<String, RawTensor>, BTreeMap<String, u64>) {
        let mut tensors = BTreeMap::new();
        let mut steps = BTreeMap::new();
        for (path, st) in &self.state {
            for (name, t) in self.kind.buffer_names().iter().zip(&st.buffers) {
                let data = t
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .expect("f32 state");
                tensors.insert(
                    format!("{path}.{name}"),
                    RawTensor::new(st.shape.clone(), data),
                );
            }
            steps.insert(path.clone(), st.step);
        }
        (tensors, steps)
    }

    /// Rebuilds a `kind` optimiser's state from [`Optimizer::export`]'s output.
    pub fn import(
        kind: OptimizerKind,
        tensors: &BTreeMap<String, RawTensor>,
        steps: &BTreeMap<String, u64>,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let mut state = HashMap::new();
        for (path, step) in steps {
            let mut buffers = Vec::new();
            let mut shape = Vec::new();
            for name in kind.buffer_names() {
                let raw = tensors.get(&format!("{path}.{name}")).ok_or_else(|| {
                    anyhow::anyhow!("optimizer state `{path}.{name}` missing from the checkpoint")
                })?;
                buffers.push(Tensor::<1>::from_data(
                    TensorData::new(raw.data.clone(), [raw.numel()]),
                    device,
                ));
                shape = raw.shape.clone();
            }
            state.insert(
                path.clone(),
                ParamState {
                    buffers,
                    step: *step,
                    shape,
                },
            );
        }
        Ok(Self { kind, state })
    }
}

struct Unscale<'a> {
    grads: &'a mut GradientsParams,
    /// `None`: the gradients are only checked, not scaled.
    inv_scale: Option<f64>,
    cancel_last_layer: bool,
    magnitude: Option<Tensor<1>>,
    path: PathTracker,
}

impl ModuleVisitor for Unscale<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            return;
        };
        if self.cancel_last_layer && is_last_layer(&self.path.path()) {
            return;
        }
        let grad = match self.inv_scale {
            Some(inv) => grad.mul_scalar(inv),
            None => grad,
        };
        // Σ|g| is inf or NaN exactly when some element is; summed on the device so the whole
        // check costs one read-back.
        let m = grad.clone().abs().sum();
        self.magnitude = Some(match self.magnitude.take() {
            Some(acc) => acc + m,
            None => m,
        });
        self.grads.register::<D>(param.id, grad);
    }
}

/// Divides every gradient by the loss scale (`GradScaler.unscale_`) and reports whether they
/// are all finite; when not, the caller skips the optimiser step as `GradScaler.step` does.
///
/// `cancel_last_layer` drops the frozen last layer's gradients first: without clipping the
/// official loop cancels them before `GradScaler.step` unscales, so an overflow there must
/// not skip the step (with clipping, `unscale_` comes first and they do count).
pub fn unscale_gradients(
    model: &DinoModel,
    grads: &mut GradientsParams,
    scale: f64,
    cancel_last_layer: bool,
) -> bool {
    let mut v = Unscale {
        grads,
        inv_scale: Some(1.0 / scale),
        cancel_last_layer,
        magnitude: None,
        path: PathTracker { stack: Vec::new() },
    };
    model.visit(&mut v);
    v.magnitude.is_none_or(|m| {
        m.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .is_ok_and(|v| v[0].is_finite())
    })
}

/// Whether every gradient is finite, in one read-back: an f32 step whose gradients overflowed
/// must not reach the weights (there is no loss scaler to skip it).
pub fn gradients_finite(model: &DinoModel, grads: &mut GradientsParams) -> bool {
    let mut v = Unscale {
        grads,
        inv_scale: None,
        cancel_last_layer: false,
        magnitude: None,
        path: PathTracker { stack: Vec::new() },
    };
    model.visit(&mut v);
    v.magnitude.is_none_or(|m| {
        m.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .is_ok_and(|v| v[0].is_finite())
    })
}

struct Collect {
    path: PathTracker,
    values: HashMap<String, Tensor<1>>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val().inner();
        let n = t.dims().iter().product::<usize>();
        self.values.insert(self.path.path(), t.reshape([n]));
    }
}

struct Ema {
    path: PathTracker,
    student: HashMap<String, Tensor<1>>,
    momentum: f64,
}

impl ModuleMapper for Ema {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(s) = self.student.remove(&self.path.path()) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let shape = tensor.dims();
        let updated =
            tensor.mul_scalar(self.momentum) + s.reshape(shape).mul_scalar(1.0 - self.momentum);
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// The teacher update `θ_t ← m·θ_t + (1 − m)·θ_s`, over every parameter the two share.
pub fn ema_update(teacher: DinoModel, student: &DinoModel, momentum: f64) -> DinoModel {
    let mut collect = Collect {
        path: PathTracker { stack: Vec::new() },
        values: HashMap::new(),
    };
    student.visit(&mut collect);
    let mut ema = Ema {
        path: PathTracker { stack: Vec::new() },
        student: collect.values,
        momentum,
    };
    teacher.map(&mut ema)
}

/// The official name of a parameter path of our modules (`backbone.blocks.0.norm1.gamma` →
/// `backbone.blocks.0.norm1.weight`, `head.mlp.1.weight` → `head.mlp.2.weight`, …).
pub fn official_param_name(path: &str) -> String {
    let mut p = path
        .replace("backbone.patch_weight", "backbone.patch_embed.proj.weight")
        .replace("backbone.patch_bias", "backbone.patch_embed.proj.bias")
        .replace("head.last_layer_v", "head.last_layer.weight_v")
        .replace("head.last_layer_g", "head.last_layer.weight_g");
    if p.ends_with(".ls1") || p.ends_with(".ls2") {
        p.push_str(".gamma");
    } else if let Some(rest) = p.strip_suffix(".gamma") {
        p = format!("{rest}.weight");
    } else if let Some(rest) = p.strip_suffix(".beta") {
        p = format!("{rest}.bias");
    }
    if let Some(rest) = p.strip_prefix("head.mlp.")
        && let Some((i, tail)) = rest.split_once('.')
        && let Ok(i) = i.parse::<usize>()
    {
        p = format!("head.mlp.{}.{tail}", 2 * i);
    }
    p
}

struct Groups {
    path: PathTracker,
    regularized: Vec<String>,
    not_regularized: Vec<String>,
}

impl ModuleVisitor for Groups {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.is_require_grad() {
            return;
        }
        let path = self.path.path();
        let name = official_param_name(&path);
        if is_regularized(&path, D) {
            self.regularized.push(name);
        } else {
            self.not_regularized.push(name);
        }
    }
}

/// The trainable parameters split as `utils.get_params_groups` does, by official name:
/// (regularised, not regularised), each sorted.
pub fn param_groups(model: &DinoModel) -> (Vec<String>, Vec<String>) {
    let mut g = Groups {
        path: PathTracker { stack: Vec::new() },
        regularized: Vec::new(),
        not_regularized: Vec::new(),
    };
    model.visit(&mut g);
    g.regularized.sort();
    g.not_regularized.sort();
    (g.regularized, g.not_regularized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_groups_follow_the_official_rule() {
        assert!(is_regularized("backbone.blocks.0.attn.qkv.weight", 2));
        assert!(!is_regularized("backbone.blocks.0.attn.qkv.bias", 1));
        assert!(!is_regularized("backbone.blocks.0.norm1.gamma", 1));
        assert!(is_regularized("backbone.pos_embed", 3));
        assert!(is_regularized("backbone.cls_token", 3));
        assert!(!is_regularized("backbone.patch_bias", 1));
        assert!(is_regularized("head.last_layer_g", 1));
        assert!(is_last_layer("head.last_layer_v"));
    }
}

#[cfg(test)]
mod unscale_tests {
    use super::*;
    use dino_model::{HeadConfig, ModelConfig, VitConfig};

    struct Fill<'a> {
        grads: &'a mut GradientsParams,
        path: PathTracker,
    }

    impl ModuleVisitor for Fill<'_> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.enter(name);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            // 2 everywhere, and an overflow (inf) in the last layer only.
            let value = if is_last_layer(&self.path.path()) {
                f32::INFINITY
            } else {
                2.0
            };
            let g = Tensor::<D>::ones(param.dims(), &param.device()).mul_scalar(value);
            self.grads.register::<D>(param.id, g);
        }
    }

    /// An overflow confined to the frozen last layer skips the step only where the official
    /// loop unscales before cancelling (clipping on), and unscaling divides by the scale.
    #[test]
    fn unscale_divides_and_finds_overflow_where_grad_scaler_would() {
        let mut vit = VitConfig::vit_tiny(8);
        vit.depth = 1;
        vit.img_size = 16;
        let head = HeadConfig {
            hidden_dim: 16,
            bottleneck_dim: 8,
            ..HeadConfig::dino(192, 16)
        };
        let model = ModelConfig {
            vit,
            head: Some(head),
            ibot_head: None,
        }
        .init(&Device::flex())
        .unwrap();
        let fill = |grads: &mut GradientsParams| {
            model.visit(&mut Fill {
                grads,
                path: PathTracker { stack: Vec::new() },
            })
        };
        let mut grads = GradientsParams::new();
        fill(&mut grads);
        assert!(!unscale_gradients(&model, &mut grads, 8.0, false));
        let mut grads = GradientsParams::new();
        fill(&mut grads);
        assert!(unscale_gradients(&model, &mut grads, 8.0, true));
        let cls = grads
            .get::<3>(model.backbone.cls_token.id)
            .unwrap()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert!(cls.iter().all(|&g| g == 0.25), "2 / 8 = 0.25: {cls:?}");
        assert!(
            grads
                .get::<2>(model.head.as_ref().unwrap().last_layer_v.id)
                .is_none()
        );
    }
}
