//! The DINO projection head (`DINOHead` in `vision_transformer.py`).

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::transformer::{to_f32, trunc_normal};
use crate::config::{HeadConfig, Precision};
use crate::error::Result;

/// MLP → L2 normalisation → linear layer to `out_dim` prototypes, weight-normalised (DINO,
/// DINOv2) or plain (DINOv3).
#[derive(Module, Debug)]
pub struct DinoHead {
    /// The MLP layers (`head.mlp.0`, `head.mlp.2`, `head.mlp.4` in the official keys; GELU between).
    pub mlp: Vec<Linear>,
    /// Direction of the last layer (`head.last_layer.weight_v`), stored as `[bottleneck, out_dim]`;
    /// the weight itself (`head.last_layer.weight`) when the layer is plain.
    pub last_layer_v: Param<Tensor<2>>,
    /// Gain of the last layer (`head.last_layer.weight_g`), `[out_dim]`; frozen at 1 when
    /// `norm_last_layer` is set or the layer is plain.
    pub last_layer_g: Param<Tensor<1>>,
    /// Whether the last layer is weight-normalised; not part of the weights.
    #[module(skip)]
    weight_norm: bool,
    /// How the matrix products are computed; not part of the weights.
    #[module(skip)]
    precision: Precision,
}

impl HeadConfig {
    /// Builds the head with the official initialisation (truncated normal, zero biases, gain 1).
    pub fn init(&self, device: &Device) -> Result<DinoHead> {
        self.validate()?;
        let linear = |d_in: usize, d_out: usize| {
            let mut l = LinearConfig::new(d_in, d_out).init(device);
            l.weight = Param::from_tensor(trunc_normal([d_in, d_out], device));
            l.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
            l
        };
        let mlp = if self.nlayers == 1 {
            vec![linear(self.in_dim, self.bottleneck_dim)]
        } else {
            let mut layers = vec![linear(self.in_dim, self.hidden_dim)];
            for _ in 0..self.nlayers - 2 {
                layers.push(linear(self.hidden_dim, self.hidden_dim));
            }
            layers.push(linear(self.hidden_dim, self.bottleneck_dim));
            layers
        };
        // weight_norm wraps an nn.Linear whose default init is Kaiming-uniform with a = sqrt(5):
        // U(-1/sqrt(fan_in), 1/sqrt(fan_in)); only the direction matters once normalised.
        // DINOv3's plain last layer gets the truncated normal of every other linear layer.
        let v = if self.weight_norm {
            let bound = 1.0 / (self.bottleneck_dim as f64).sqrt();
            Tensor::random(
                [self.bottleneck_dim, self.out_dim],
                burn::tensor::Distribution::Uniform(-bound, bound),
                device,
            )
        } else {
            trunc_normal([self.bottleneck_dim, self.out_dim], device)
        };
        let mut g = Param::from_tensor(Tensor::ones([self.out_dim], device));
        if self.norm_last_layer || !self.weight_norm {
            g = g.set_require_grad(false);
        }
        Ok(DinoHead {
            mlp,
            last_layer_v: Param::from_tensor(v),
            last_layer_g: g,
            weight_norm: self.weight_norm,
            precision: Precision::F32,
        })
    }
}

impl DinoHead {
    /// The same head computing its matrix products in `precision`.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Number of prototypes.
    pub fn out_dim(&self) -> usize {
        self.last_layer_g.dims()[0]
    }

    /// Whether the last layer is weight-normalised (false: DINOv3's plain linear layer).
    pub fn weight_norm(&self) -> bool {
        self.weight_norm
    }

    /// The effective last-layer weight `g · v / ‖v‖`, normalised per output prototype
    /// (PyTorch's `weight_norm` with `dim=0` on the `[out, in]` weight), or the plain weight.
    ///
    /// # Shapes
    /// → `[bottleneck, out_dim]`.
    pub fn last_layer_weight(&self) -> Tensor<2> {
        let v = self.last_layer_v.val();
        if !self.weight_norm {
            return v;
        }
        let norm = v.clone().square().sum_dim(0).sqrt();
        v / norm * self.last_layer_g.val().unsqueeze::<2>()
    }

    /// The L2-normalised bottleneck output before the last layer.
    ///
    /// # Shapes
    /// `[batch, in_dim]` → `[batch, bottleneck]`.
    pub fn bottleneck(&self, x: Tensor<2>) -> Tensor<2> {
        let p = self.precision;
        let last = self.mlp.len() - 1;
        let mut x = p.compute(x);
        for (i, layer) in self.mlp.iter().enumerate() {
            x = p.linear(layer, x);
            if i < last {
                x = p.gelu(x);
            }
        }
        // F.normalize(p=2, eps=1e-12): x / max(‖x‖, eps); autocast runs it in f32. The clamp
        // goes under the root (the same value) so that a zero row, which a DINOv3 mask token
        // can give, has PyTorch's zero gradient instead of sqrt's infinite one at 0.
        let x = to_f32(x);
        let norm = x.clone().square().sum_dim(1).clamp_min(1e-24).sqrt();
        x / norm
    }

    /// Prototype logits.
    ///
    /// # Shapes
    /// `[batch, in_dim]` → `[batch, out_dim]` (f32).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let p = self.precision;
        to_f32(crate::cpu::fused::linear(
            p.compute(self.bottleneck(x)),
            p.compute(self.last_layer_weight()),
            None,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_input_row_has_a_finite_gradient() {
        // A DINOv3 mask token starts at zero and has no position embedding, so a masked patch
        // whose every residual branch is dropped reaches the head as a zero row.
        let device = Device::flex().autodiff();
        let mut config = HeadConfig::dino(8, 16);
        (config.hidden_dim, config.bottleneck_dim, config.weight_norm) = (12, 4, false);
        let head = config.init(&device).unwrap();
        let x = Tensor::<2>::zeros([2, 8], &device).require_grad();
        let grads = head.forward(x.clone()).sum().backward();
        let g = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
        let w = head.mlp[0]
            .weight
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(w.iter().all(|v| v.is_finite()));
    }
}
