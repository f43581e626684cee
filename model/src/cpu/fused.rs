//! Attention, GELU, LayerNorm and the linear layer as single ops with their own backward on
//! burn's CPU backend (flex), through a burn backend extension: the kernels live in
//! [`super::attention`], [`super::pointwise`] and [`super::linear`]. On every
//! other backend (wgpu, WebGPU) and for f16 the model keeps burn's own ops, which the GPU
//! backends fuse themselves.
//!
//! `DINO_FUSED_CPU=0` turns the kernels off (burn's ops everywhere), for A/B measurements.

use std::sync::OnceLock;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, DispatchDevice, Flex, backend_extension};
use burn::tensor::{DType, Tensor, TensorData};

use super::attention::{self as cpu_attention, QkvShape};
use super::linear::{self as cpu_linear, LinearShape};
use super::pointwise as cpu_pointwise;

/// The ops the CPU backend runs as one kernel each, forward and backward.
#[backend_extension(Flex, Autodiff)]
pub trait FusedCpuOps: Backend {
    /// Multi-head self-attention from the packed projection `[batch, tokens, 3 · dim]` to the
    /// merged heads `[batch, tokens, dim]`.
    fn qkv_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;
    /// The exact (erf) GELU.
    fn gelu_exact(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// LayerNorm over the last dim with scale and shift.
    fn layer_norm_affine(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self>;
    /// `x · weight + bias` for `x: [rows, d_in]` and `weight: [d_in, d_out]`.
    fn linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    /// `x · weight`, [`FusedCpuOps::linear`] without a bias (the extension macro routes no
    /// optional tensors).
    fn linear_no_bias(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The f32 elements of a flex tensor, contiguous.
fn values(t: &FlexTensor) -> (FlexTensor, Vec<usize>) {
    let t = t.to_contiguous();
    let dims = t.layout().shape().to_vec();
    (t, dims)
}

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("fused CPU ops run on contiguous f32 tensors")
}

fn tensor(data: Vec<f32>, dims: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, dims))
}

fn qkv_shape(dims: &[usize], heads: usize) -> QkvShape {
    let [batch, tokens, packed] = dims else {
        panic!("qkv must be [batch, tokens, 3 * dim]")
    };
    assert!(
        heads > 0 && packed % (3 * heads) == 0,
        "qkv width {packed} is not 3 × {heads} heads"
    );
    QkvShape {
        batch: *batch,
        tokens: *tokens,
        heads,
        head_dim: packed / (3 * heads),
    }
}

fn attention_forward(qkv: &FlexTensor, heads: usize, keep_lse: bool) -> (FlexTensor, Vec<f32>) {
    let (qkv, dims) = values(qkv);
    let shape = qkv_shape(&dims, heads);
    let fwd = cpu_attention::forward(slice(&qkv), shape, keep_lse);
    (
        tensor(fwd.out, vec![shape.batch, shape.tokens, shape.dim()]),
        fwd.lse,
    )
}

fn layer_norm_forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    eps: f64,
) -> (FlexTensor, Vec<f32>) {
    let (x, dims) = values(x);
    let (gamma, _) = values(gamma);
    let (beta, _) = values(beta);
    let width = *dims.last().expect("LayerNorm input has a last dim");
    let fwd = cpu_pointwise::layer_norm(
        slice(&x),
        width,
        slice(&gamma),
        Some(slice(&beta)),
        eps as f32,
    );
    (tensor(fwd.out, dims), fwd.rstd)
}

fn linear_shape(x: &FlexTensor, weight: &FlexTensor) -> LinearShape {
    let (x, w) = (x.layout().shape(), weight.layout().shape());
    assert!(
        x.num_dims() == 2 && w.num_dims() == 2 && x[1] == w[0],
        "linear takes [rows, d_in] × [d_in, d_out], not {x:?} × {w:?}"
    );
    LinearShape {
        rows: x[0],
        d_in: x[1],
        d_out: w[1],
    }
}

fn linear_forward(x: &FlexTensor, weight: &FlexTensor, bias: Option<&FlexTensor>) -> FlexTensor {
    let shape = linear_shape(x, weight);
    let bias = bias.map(|b| values(b).0);
    let out = cpu_linear::forward(slice(x), slice(weight), bias.as_ref().map(slice), shape);
    tensor(out, vec![shape.rows, shape.d_out])
}

impl FusedCpuOps for Flex {
    fn qkv_attention(qkv: FlexTensor, heads: usize) -> FlexTensor {
        attention_forward(&qkv, heads, false).0
    }

    fn gelu_exact(x: FlexTensor) -> FlexTensor {
        let (x, dims) = values(&x);
        tensor(cpu_pointwise::gelu(slice(&x)), dims)
    }

    fn layer_norm_affine(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        eps: f64,
    ) -> FlexTensor {
        layer_norm_forward(&x, &gamma, &beta, eps).0
    }

    fn linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        linear_forward(&values(&x).0, &values(&weight).0, Some(&bias))
    }

    fn linear_no_bias(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
        linear_forward(&values(&x).0, &values(&weight).0, None)
    }
}

/// Backward of [`FusedCpuOps::qkv_attention`]: the packed input and the per-row log-sum-exp.
#[derive(Debug)]
struct QkvAttentionBackward;

impl Backward<Flex, 1> for QkvAttentionBackward {
    type State = (FlexTensor, Vec<f32>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let Some(parent) = parent else { return };
        let (qkv, lse, heads) = ops.state;
        let (grad, _) = values(&grad);
        let shape = qkv_shape(&qkv.layout().shape().to_vec(), heads);
        let dqkv = cpu_attention::backward(slice(&qkv), &lse, slice(&grad), shape);
        grads.register::<Flex>(parent.id, tensor(dqkv, qkv.layout().shape().to_vec()));
    }
}

/// Backward of [`FusedCpuOps::gelu_exact`]: the input.
#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let Some(parent) = parent else { return };
        let x = ops.state;
        let (grad, _) = values(&grad);
        let dx = cpu_pointwise::gelu_backward(slice(&x), slice(&grad));
        grads.register::<Flex>(parent.id, tensor(dx, x.layout().shape().to_vec()));
    }
}

/// Backward of [`FusedCpuOps::layer_norm_affine`]: the input, `gamma` and each row's `1/σ`.
#[derive(Debug)]
struct LayerNormBackward;

impl Backward<Flex, 3> for LayerNormBackward {
    type State = (FlexTensor, FlexTensor, Vec<f32>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, gamma_node, beta_node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, gamma, rstd) = ops.state;
        let dims = x.layout().shape().to_vec();
        let width = *dims.last().expect("LayerNorm input has a last dim");
        let (grad, _) = values(&grad);
        let (dx, dgamma, dbeta) = cpu_pointwise::layer_norm_backward(
            slice(&x),
            width,
            slice(&gamma),
            &rstd,
            slice(&grad),
        );
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, tensor(dx, dims));
        }
        if let Some(node) = gamma_node {
            grads.register::<Flex>(node.id, tensor(dgamma, vec![width]));
        }
        if let Some(node) = beta_node {
            grads.register::<Flex>(node.id, tensor(dbeta, vec![width]));
        }
    }
}

/// The gradients of [`FusedCpuOps::linear`] its parents need, from the saved input and weight;
/// registered on `x`, `weight` and `bias` in that order.
fn linear_backward(
    grads: &mut Gradients,
    grad: &FlexTensor,
    (x, weight): &(FlexTensor, FlexTensor),
    nodes: [Option<burn::backend::autodiff::NodeId>; 3],
) {
    let shape = linear_shape(x, weight);
    let (grad, _) = values(grad);
    let g = slice(&grad);
    let [x_node, w_node, b_node] = nodes;
    if let Some(id) = x_node {
        let dx = cpu_linear::input_grad(g, slice(weight), shape);
        grads.register::<Flex>(id, tensor(dx, vec![shape.rows, shape.d_in]));
    }
    if let Some(id) = w_node {
        let dw = cpu_linear::weight_grad(slice(x), g, shape);
        grads.register::<Flex>(id, tensor(dw, vec![shape.d_in, shape.d_out]));
    }
    if let Some(id) = b_node {
        grads.register::<Flex>(
            id,
            tensor(cpu_linear::bias_grad(g, shape), vec![shape.d_out]),
        );
    }
}

/// Backward of [`FusedCpuOps::linear`] with a bias: the input and the weight.
#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 3> for LinearBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let nodes = ops.parents.map(|p| p.map(|p| p.id));
        linear_backward(grads, &grad, &ops.state, nodes);
    }
}

/// Backward of [`FusedCpuOps::linear`] without a bias.
#[derive(Debug)]
struct LinearNoBiasBackward;

impl Backward<Flex, 2> for LinearNoBiasBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let [x, w] = ops.parents.map(|p| p.map(|p| p.id));
        linear_backward(grads, &grad, &ops.state, [x, w, None]);
    }
}

impl<C: CheckpointStrategy> FusedCpuOps for Autodiff<Flex, C> {
    fn qkv_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        match QkvAttentionBackward
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (input, _) = values(qkv.primitive());
                let (out, lse) = attention_forward(&input, heads, true);
                prep.finish((input, lse, heads), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(attention_forward(qkv.primitive(), heads, false).0)
            }
        }
    }

    fn gelu_exact(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let (input, dims) = values(x.primitive());
        let out = tensor(cpu_pointwise::gelu(slice(&input)), dims);
        match GeluBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(input, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn layer_norm_affine(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        let (input, _) = values(x.primitive());
        let (g, _) = values(gamma.primitive());
        let (out, rstd) = layer_norm_forward(&input, &g, beta.primitive(), eps);
        match LayerNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((input, g, rstd), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (input, _) = values(x.primitive());
        let (w, _) = values(weight.primitive());
        let out = linear_forward(&input, &w, Some(bias.primitive()));
        match LinearBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((input, w), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn linear_no_bias(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let (input, _) = values(x.primitive());
        let (w, _) = values(weight.primitive());
        let out = linear_forward(&input, &w, None);
        match LinearNoBiasBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((input, w), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// Whether `DINO_FUSED_CPU` leaves the kernels on (anything but `0`).
fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("DINO_FUSED_CPU")
            .map(|v| v.trim() != "0")
            .unwrap_or(true)
    })
}

/// Whether `x` is an f32 tensor on the CPU backend, where the fused kernels run.
pub fn applies<const D: usize>(x: &Tensor<D>) -> bool {
    if !enabled() || x.dtype() != DType::F32 {
        return false;
    }
    let device = x.device().inner();
    matches!(device.as_dispatch(), DispatchDevice::Flex(_))
}

/// Attention of the packed `qkv` projection (`[batch, tokens, 3 · dim]` → `[batch, tokens,
/// dim]`, heads merged), or `None` where the fused kernel does not apply.
pub fn qkv_attention(qkv: &Tensor<3>, heads: usize) -> Option<Tensor<3>> {
    applies(qkv).then(|| {
        Tensor::from_dispatch(<Dispatch as FusedCpuOps>::qkv_attention(
            qkv.clone().into_dispatch(),
            heads,
        ))
    })
}

/// The exact GELU, as one parallel kernel on the CPU backend and burn's op elsewhere.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if applies(&x) {
        Tensor::from_dispatch(<Dispatch as FusedCpuOps>::gelu_exact(x.into_dispatch()))
    } else {
        burn::tensor::activation::gelu(x)
    }
}

/// LayerNorm over the last dim (`nn.LayerNorm` with its affine terms), as one kernel on the CPU
/// backend and burn's op elsewhere.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
) -> Tensor<D> {
    if applies(&x) && applies(&gamma) && applies(&beta) {
        Tensor::from_dispatch(<Dispatch as FusedCpuOps>::layer_norm_affine(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            eps,
        ))
    } else {
        burn::tensor::module::layer_norm(x, gamma, Some(beta), eps)
    }
}

/// `x · weight + bias` (`nn.Linear` with the weight stored `[d_in, d_out]`, as burn's), as
/// one product written once on the CPU backend and burn's op elsewhere.
pub fn linear(x: Tensor<2>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    if !(applies(&x) && applies(&weight) && bias.as_ref().is_none_or(applies)) {
        return burn::tensor::module::linear(x, weight, bias);
    }
    let (x, weight) = (x.into_dispatch(), weight.into_dispatch());
    Tensor::from_dispatch(match bias {
        Some(bias) => <Dispatch as FusedCpuOps>::linear(x, weight, bias.into_dispatch()),
        None => <Dispatch as FusedCpuOps>::linear_no_bias(x, weight),
    })
}

#[cfg(test)]
mod tests {
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::{Device, Distribution, Tensor};

    use super::*;

    fn close<const D: usize>(a: Tensor<D>, b: Tensor<D>, tol: f32, what: &str) {
        let (a, b) = (
            a.into_data().try_to_vec::<f32>().unwrap(),
            b.into_data().try_to_vec::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    /// burn's own ops for the same attention: split, attention, merge.
    fn composed_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
        let [b, n, w] = qkv.dims();
        let hd = w / 3 / heads;
        let qkv = qkv.reshape([b, n, 3, heads, hd]).permute([2, 0, 3, 1, 4]);
        let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([b, heads, n, hd]);
        let out = attention(
            part(0),
            part(1),
            part(2),
            None,
            None,
            AttentionModuleOptions::default(),
        );
        out.swap_dims(1, 2).reshape([b, n, heads * hd])
    }

    #[test]
    fn the_fused_ops_equal_burns_ops_forward_and_backward() {
        let device = Device::flex().autodiff();
        let qkv = Tensor::<3>::random([3, 17, 3 * 24], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        assert!(applies(&qkv));
        let weight = Tensor::<3>::random([3, 17, 24], Distribution::Normal(0.0, 1.0), &device);
        let fused = qkv_attention(&qkv, 4).expect("flex f32");
        let composed = composed_attention(qkv.clone(), 4);
        close(fused.clone(), composed.clone(), 1e-5, "attention");
        let g_fused = qkv
            .grad(&(fused * weight.clone()).sum().backward())
            .unwrap();
        let g_composed = qkv.grad(&(composed * weight).sum().backward()).unwrap();
        close(g_fused, g_composed, 1e-4, "d qkv");

        let x =
            Tensor::<3>::random([2, 5, 64], Distribution::Normal(0.0, 2.0), &device).require_grad();
        let w = Tensor::<3>::random([2, 5, 64], Distribution::Normal(0.0, 1.0), &device);
        let (a, b) = (gelu(x.clone()), burn::tensor::activation::gelu(x.clone()));
        close(a.clone(), b.clone(), 1e-6, "gelu");
        let (ga, gb) = (
            x.grad(&(a * w.clone()).sum().backward()).unwrap(),
            x.grad(&(b * w.clone()).sum().backward()).unwrap(),
        );
        close(ga, gb, 1e-5, "d gelu");

        let gamma =
            Tensor::<1>::random([64], Distribution::Normal(1.0, 0.2), &device).require_grad();
        let beta =
            Tensor::<1>::random([64], Distribution::Normal(0.0, 0.2), &device).require_grad();
        let a = layer_norm(x.clone(), gamma.clone(), beta.clone(), 1e-6);
        let b =
            burn::tensor::module::layer_norm(x.clone(), gamma.clone(), Some(beta.clone()), 1e-6);
        close(a.clone(), b.clone(), 1e-5, "layer norm");
        let (ga, gb) = ((a * w.clone()).sum().backward(), (b * w).sum().backward());
        close(x.grad(&ga).unwrap(), x.grad(&gb).unwrap(), 1e-4, "d x");
        close(
            gamma.grad(&ga).unwrap(),
            gamma.grad(&gb).unwrap(),
            1e-4,
            "d gamma",
        );
        close(
            beta.grad(&ga).unwrap(),
            beta.grad(&gb).unwrap(),
            1e-4,
            "d beta",
        );
    }

    #[test]
    fn the_fused_linear_equals_burns_forward_and_backward() {
        let device = Device::flex().autodiff();
        let normal = Distribution::Normal(0.0, 1.0);
        // 150 rows: more than one row block of the bias gradient, the last one partial.
        let x = Tensor::<2>::random([150, 24], normal, &device).require_grad();
        let frozen = Tensor::<2>::random([150, 24], normal, &device);
        let w = Tensor::<2>::random([24, 40], normal, &device).require_grad();
        let b = Tensor::<1>::random([40], normal, &device).require_grad();
        let weight = Tensor::<2>::random([150, 40], normal, &device);
        for bias in [Some(b.clone()), None] {
            let ours = linear(x.clone(), w.clone(), bias.clone());
            let burns = burn::tensor::module::linear(x.clone(), w.clone(), bias.clone());
            close(ours.clone(), burns.clone(), 1e-5, "linear");
            let ga = (ours * weight.clone()).sum().backward();
            let gb = (burns * weight.clone()).sum().backward();
            close(x.grad(&ga).unwrap(), x.grad(&gb).unwrap(), 1e-4, "d x");
            close(w.grad(&ga).unwrap(), w.grad(&gb).unwrap(), 1e-4, "d w");
            if bias.is_some() {
                close(b.grad(&ga).unwrap(), b.grad(&gb).unwrap(), 1e-4, "d b");
            }
        }
        // An input without a gradient (the parent is untracked): only the weight's.
        let ours = (linear(frozen.clone(), w.clone(), Some(b.clone())) * weight.clone())
            .sum()
            .backward();
        let burns = (burn::tensor::module::linear(frozen.clone(), w.clone(), Some(b.clone()))
            * weight)
            .sum()
            .backward();
        assert!(frozen.grad(&ours).is_none());
        close(
            w.grad(&ours).unwrap(),
            w.grad(&burns).unwrap(),
            1e-4,
            "d w, frozen x",
        );
        close(
            b.grad(&ours).unwrap(),
            b.grad(&burns).unwrap(),
            1e-4,
            "d b, frozen x",
        );
        // Without autodiff the forward alone.
        let plain = Device::flex();
        let (x, w) = (
            Tensor::<2>::random([9, 16], normal, &plain),
            Tensor::<2>::random([16, 3], normal, &plain),
        );
        close(
            linear(x.clone(), w.clone(), None),
            x.matmul(w),
            1e-5,
            "linear, no autodiff",
        );
    }

    #[test]
    fn without_autodiff_the_same_kernels_run_forward_only() {
        let device = Device::flex();
        let qkv = Tensor::<3>::random([2, 9, 3 * 16], Distribution::Normal(0.0, 1.0), &device);
        close(
            qkv_attention(&qkv, 2).unwrap(),
            composed_attention(qkv, 2),
            1e-5,
            "attention",
        );
        let x = Tensor::<2>::random([4, 32], Distribution::Normal(0.0, 1.0), &device);
        close(
            gelu(x.clone()),
            burn::tensor::activation::gelu(x),
            1e-6,
            "gelu",
        );
    }

    #[test]
    fn f16_tensors_keep_burns_ops() {
        let x = Tensor::<2>::ones([2, 4], &Device::flex()).cast(burn::tensor::FloatDType::F16);
        assert!(!applies(&x));
        assert!(
            qkv_attention(
                &Tensor::<3>::ones([1, 2, 6], &Device::flex()).cast(burn::tensor::FloatDType::F16),
                1
            )
            .is_none()
        );
    }
}
