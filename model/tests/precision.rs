//! Mixed precision (`Precision::F16`, the official `--use_fp16`) against f32 on the CPU
//! backend: same weights, same inputs; the outputs agree to f16 accuracy, the attention
//! weights and logits come back in f32, and gradients reach the f32 master weights.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{DType, Device, Distribution, Tensor};
use dino_model::{DinoModel, HeadConfig, ModelConfig, Precision, VitConfig};

fn tiny() -> ModelConfig {
    let mut vit = VitConfig::vit_tiny(8);
    vit.depth = 2;
    vit.img_size = 32;
    let mut head = HeadConfig::dino(vit.embed_dim, 64);
    head.hidden_dim = 64;
    head.bottleneck_dim = 32;
    ModelConfig {
        vit,
        head: Some(head),
        ibot_head: None,
    }
}

/// The CPU backend's seed is global: tests running in parallel would draw from each other's
/// streams without this.
static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn model(device: &Device) -> DinoModel {
    let _guard = SEEDED.lock().unwrap();
    let cpu = Device::flex();
    cpu.seed(7);
    let init = tiny().init(&cpu).unwrap();
    let mut map = dino_model::TensorMap::new();
    init.save_tensors(&mut map, "");
    tiny().load(&map, "", device).unwrap()
}

fn images(device: &Device) -> Tensor<4> {
    let _guard = SEEDED.lock().unwrap();
    let cpu = Device::flex();
    cpu.seed(8);
    let x = Tensor::<4>::random([3, 3, 32, 32], Distribution::Normal(0.0, 1.0), &cpu);
    Tensor::from_data(x.into_data(), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

/// Largest difference relative to the largest magnitude of `reference`.
fn relative_diff(ours: &[f32], reference: &[f32]) -> f32 {
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(reference)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

#[test]
fn f16_forward_matches_f32_to_half_precision() {
    let device = Device::flex();
    let full = model(&device);
    let half = model(&device).with_precision(Precision::F16);
    assert_eq!(half.backbone.precision(), Precision::F16);

    let cls32 = full.backbone.forward(images(&device));
    let cls16 = half.backbone.forward(images(&device));
    assert_eq!(cls16.dtype(), DType::F32, "features come back in f32");
    let (a, b) = (values(cls16), values(cls32));
    assert!(a.iter().all(|v| v.is_finite()));
    let rel = relative_diff(&a, &b);
    // f16 carries 11 significant bits (2^-11 ≈ 5e-4 per rounding); two blocks of products
    // stay well inside 1 %, while a wrong cast (e.g. a dropped bias) is off by far more.
    assert!(
        rel < 1e-2 && rel > 0.0,
        "CLS features differ by {rel} of their scale"
    );

    let h32 = full
        .head
        .as_ref()
        .unwrap()
        .forward(full.backbone.forward(images(&device)));
    let h16 = half
        .head
        .as_ref()
        .unwrap()
        .forward(half.backbone.forward(images(&device)));
    assert_eq!(
        h16.dtype(),
        DType::F32,
        "logits come back in f32 for the loss"
    );
    let rel = relative_diff(&values(h16), &values(h32));
    assert!(rel < 1e-2, "head logits differ by {rel} of their scale");

    let a32 = full
        .backbone
        .forward_with_attention(images(&device), 1)
        .unwrap();
    let a16 = half
        .backbone
        .forward_with_attention(images(&device), 1)
        .unwrap();
    assert_eq!(a16.attention.dtype(), DType::F32, "softmax runs in f32");
    let (w16, w32) = (values(a16.attention), values(a32.attention));
    let diff = w16
        .iter()
        .zip(&w32)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff < 5e-3, "attention weights differ by {diff}");
}

struct Grads<'a> {
    grads: &'a burn::tensor::Gradients,
    out: Vec<Vec<f32>>,
}

impl ModuleVisitor for Grads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            assert_eq!(g.dtype(), DType::F32, "master weights get f32 gradients");
            self.out.push(values(g));
        }
    }
}

fn gradients(model: &DinoModel, device: &Device) -> Vec<Vec<f32>> {
    let head = model.head.as_ref().unwrap();
    let loss = head
        .forward(model.backbone.forward(images(device)))
        .square()
        .sum();
    let grads = loss.backward();
    let mut v = Grads {
        grads: &grads,
        out: Vec::new(),
    };
    model.visit(&mut v);
    v.out
}

#[test]
fn f16_gradients_reach_the_f32_weights_and_agree_with_f32() {
    let device = Device::flex().autodiff();
    let full = model(&device);
    let half = model(&device).with_precision(Precision::F16);
    let (g32, g16) = (gradients(&full, &device), gradients(&half, &device));
    assert_eq!(g32.len(), g16.len());
    // Every weight but the frozen last-layer gain takes part.
    assert!(g32.len() >= 20, "{} gradients", g32.len());
    for (a, b) in g16.iter().zip(&g32) {
        assert!(a.iter().all(|v| v.is_finite()));
        let dot: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (*x as f64) * (*y as f64))
            .sum();
        let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        if nb > 1e-8 {
            let cos = dot / (na * nb);
            assert!(cos > 0.99, "gradient direction cosine {cos}");
        }
    }
}
