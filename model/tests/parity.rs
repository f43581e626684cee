//! Parity with the official facebookresearch/dino code.
//!
//! The fixtures were produced by `scripts/make_parity_fixtures.py`, which runs the official
//! `vision_transformer.py`: weights saved as official `.pth` files (and as Hugging Face
//! safetensors), fixed inputs, and the official outputs. Each test imports the weights
//! through our readers, runs our model on the flex CPU backend and requires every output
//! to match within 1e-4 (f32).

mod common;

use common::max_abs_diff;

use burn::tensor::{Device, Tensor, TensorData};
use dino_model::checkpoint::read_safetensors;
use dino_model::import::{SourceKind, Which, import_bytes};
use dino_model::{DinoModel, RawTensor, TensorMap};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn outputs() -> TensorMap {
    read_safetensors(&fixture("official_outputs.safetensors"))
        .unwrap()
        .1
}

fn to_tensor(t: &RawTensor, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

fn load(file: &str, which: Which) -> (DinoModel, SourceKind) {
    let device = Device::flex();
    let imported = import_bytes(&fixture(file), which).unwrap();
    let model = imported
        .config
        .load(&imported.tensors, "", &device)
        .unwrap();
    (model, imported.source)
}

fn check_model(model: &DinoModel, cls_key: &str, with_head: bool) {
    let device = Device::flex();
    let out = outputs();
    for case in ["square", "interp"] {
        let x = to_tensor(&out[&format!("{case}.input")], &device);
        let cls = model.backbone.forward(x.clone());
        max_abs_diff(
            cls.clone().into_data().try_to_vec().unwrap(),
            &out[&format!("{case}.{cls_key}")],
            &format!("{case} CLS features"),
        );
        if with_head {
            let head = model.head.as_ref().expect("head").forward(cls);
            max_abs_diff(
                head.into_data().try_to_vec().unwrap(),
                &out[&format!("{case}.head")],
                &format!("{case} head output"),
            );
        }
        let depth = model.backbone.depth();
        let att = model.backbone.forward_with_attention(x, depth - 1).unwrap();
        max_abs_diff(
            att.attention.into_data().try_to_vec().unwrap(),
            &out[&format!("{case}.last_attention")],
            &format!("{case} last-block attention"),
        );
    }
}

#[test]
fn official_training_checkpoint_matches_official_outputs() {
    let (model, source) = load("official_checkpoint.pth", Which::Teacher);
    assert_eq!(source, SourceKind::PthTraining("teacher".into()));
    assert!(model.head.is_some());
    check_model(&model, "cls", true);
}

#[test]
fn student_of_training_checkpoint_imports() {
    let (model, _) = load("official_checkpoint.pth", Which::Student);
    check_model(&model, "cls", true);
}

#[test]
fn official_backbone_release_matches_official_outputs() {
    let (model, source) = load("official_backbone.pth", Which::Teacher);
    assert_eq!(source, SourceKind::PthBackbone);
    assert!(model.head.is_none());
    check_model(&model, "cls", false);
}

#[test]
fn hugging_face_safetensors_match_official_outputs_with_their_epsilon() {
    let imported = import_bytes(&fixture("hf_vit.safetensors"), Which::Teacher).unwrap();
    assert_eq!(imported.source, SourceKind::HuggingFace("ViTModel".into()));
    assert_eq!(imported.config.vit.layer_norm_eps, 1e-12);
    assert!(imported.ignored.iter().any(|k| k.starts_with("pooler.")));
    let model = imported
        .config
        .load(&imported.tensors, "", &Device::flex())
        .unwrap();
    let device = Device::flex();
    let out = outputs();
    for case in ["square", "interp"] {
        let x = to_tensor(&out[&format!("{case}.input")], &device);
        let cls = model.backbone.forward(x);
        max_abs_diff(
            cls.into_data().try_to_vec().unwrap(),
            &out[&format!("{case}.hf_cls")],
            &format!("{case} HF CLS"),
        );
    }
}

#[test]
fn inferred_config_describes_the_fixture() {
    let imported = import_bytes(&fixture("official_checkpoint.pth"), Which::Teacher).unwrap();
    let c = imported.config;
    assert_eq!(
        (
            c.vit.embed_dim,
            c.vit.depth,
            c.vit.num_heads,
            c.vit.patch_size,
            c.vit.img_size
        ),
        (128, 2, 2, 16, 64)
    );
    assert_eq!(c.vit.mlp_ratio, 2.0);
    let head = c.head.unwrap();
    assert_eq!(
        (
            head.out_dim,
            head.hidden_dim,
            head.bottleneck_dim,
            head.nlayers
        ),
        (256, 128, 64, 3)
    );
    assert!(head.norm_last_layer);
}
