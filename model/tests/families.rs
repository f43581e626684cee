//! Parity of DINOv2 and DINOv3 backbones with the official code.
//!
//! The fixtures under `tests/fixtures/families/` were produced by
//! `scripts/make_family_fixtures.py`, which builds small backbones with the official
//! facebookresearch/dinov2 and dinov3 classes and the options of their hub releases, saves
//! them as official `.pth` files and as Hugging Face safetensors (with config.json), and
//! records the official normed CLS, register and patch tokens and the softmax attention of a
//! middle and the last block, at the native size and at a non-square size that exercises the
//! position-embedding interpolation (DINOv2) or the RoPE coordinates (DINOv3).

mod common;

use common::max_abs_diff;

use burn::tensor::{Device, Tensor, TensorData};
use dino_model::checkpoint::{read_safetensors, write_checkpoint};
use dino_model::import::{ImportOptions, Imported, SourceKind, Which, import_bytes, import_with};
use dino_model::{DinoModel, Family, Ffn, ModelError, PosInterp, Position, TensorMap};

const MIDDLE: usize = 1;
const LAST: usize = 2;

fn path(name: &str) -> String {
    format!(
        "{}/tests/fixtures/families/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(path(name)).unwrap_or_else(|e| panic!("reading {}: {e}", path(name)))
}

fn import(name: &str) -> Imported {
    if let Some(dir) = name.strip_suffix("/") {
        let config = String::from_utf8(read(&format!("{dir}/config.json"))).unwrap();
        import_with(
            &read(&format!("{dir}/model.safetensors")),
            &ImportOptions {
                hf_config: Some(config),
                ..ImportOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"))
    } else {
        import_with(&read(name), &heads2()).unwrap_or_else(|e| panic!("{name}: {e}"))
    }
}

/// The fixtures' heads are 16 wide, which an official `.pth` cannot say (every release
/// uses 64-wide heads, which is what the importer assumes); DINOv3 files say it through
/// their RoPE periods.
fn heads2() -> ImportOptions {
    ImportOptions {
        num_heads: Some(2),
        ..ImportOptions::default()
    }
}

fn load(imported: &Imported) -> DinoModel {
    imported
        .config
        .load(&imported.tensors, "", &Device::flex())
        .unwrap()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec().unwrap()
}

/// Compares every recorded output of `case` (`v2`, `v2reg`, …) with our model; returns the
/// largest difference.
fn check(model: &DinoModel, case: &str, what: &str) -> f32 {
    let device = Device::flex();
    let out = read_safetensors(&read(&format!("{case}.outputs.safetensors")))
        .unwrap()
        .1;
    let mut worst = 0.0f32;
    for size in ["square", "wide"] {
        let input = &out[&format!("{size}.input")];
        let x = Tensor::<4>::from_data(
            TensorData::new(input.data.clone(), input.shape.clone()),
            &device,
        );
        for layer in [MIDDLE, LAST] {
            let att = model
                .backbone
                .forward_with_attention(x.clone(), layer)
                .unwrap();
            let label = format!("{what} {size}");
            worst = worst.max(max_abs_diff(
                values(att.attention),
                &out[&format!("{size}.attn{layer}")],
                &format!("{label} block {layer} attention"),
            ));
            let [b, t, d] = att.tokens.dims();
            let prefix = att.prefix_tokens;
            let tokens = att.tokens;
            worst = worst.max(max_abs_diff(
                values(tokens.clone().narrow(1, 0, 1).reshape([b, d])),
                &out[&format!("{size}.cls")],
                &format!("{label} CLS"),
            ));
            worst = worst.max(max_abs_diff(
                values(tokens.clone().narrow(1, prefix, t - prefix)),
                &out[&format!("{size}.patch")],
                &format!("{label} patch tokens"),
            ));
            if prefix > 1 {
                worst = worst.max(max_abs_diff(
                    values(tokens.narrow(1, 1, prefix - 1)),
                    &out[&format!("{size}.reg")],
                    &format!("{label} register tokens"),
                ));
            }
        }
    }
    worst
}

#[test]
fn dinov2_without_registers_matches_the_official_code() {
    let imported = import("v2.pth");
    assert_eq!(imported.source, SourceKind::PthBackbone);
    let v = &imported.config.vit;
    assert_eq!(v.family, Family::Dinov2);
    assert_eq!(
        (v.patch_size, v.num_heads, v.num_register_tokens),
        (14, 2, 0)
    );
    assert!(v.layer_scale);
    assert_eq!(v.layer_norm_eps, 1e-6);
    assert_eq!(
        v.position,
        Position::Learned {
            interp: PosInterp::Offset
        }
    );
    assert_eq!(v.describe(), "DINOv2 ViT-32x3/14, LayerScale");
    check(&load(&imported), "v2", "DINOv2 .pth");
    let hf = import("v2_hf/");
    assert_eq!(hf.source, SourceKind::HuggingFace("Dinov2Model".into()));
    assert_eq!(hf.config, imported.config);
    check(&load(&hf), "v2", "DINOv2 Hugging Face");
}

#[test]
fn dinov2_with_registers_matches_the_official_code() {
    let imported = import("v2reg.pth");
    let v = &imported.config.vit;
    assert_eq!(v.num_register_tokens, 4);
    assert_eq!(
        v.position,
        Position::Learned {
            interp: PosInterp::Antialias
        }
    );
    assert_eq!(v.describe(), "DINOv2 ViT-32x3/14, 4 registers, LayerScale");
    check(&load(&imported), "v2reg", "DINOv2-reg .pth");
    let hf = import("v2reg_hf/");
    assert_eq!(
        hf.source,
        SourceKind::HuggingFace("Dinov2WithRegistersModel".into())
    );
    assert_eq!(hf.config, imported.config);
    check(&load(&hf), "v2reg", "DINOv2-reg Hugging Face");
}

#[test]
fn dinov2_swiglu_matches_the_official_code() {
    let imported = import("v2swiglu.pth");
    assert!(matches!(imported.config.vit.ffn, Ffn::SwiGluPacked { .. }));
    check(&load(&imported), "v2swiglu", "DINOv2 SwiGLU .pth");
    let hf = import("v2swiglu_hf/");
    assert_eq!(hf.config, imported.config);
    check(&load(&hf), "v2swiglu", "DINOv2 SwiGLU Hugging Face");
}

#[test]
fn dinov3_matches_the_official_code() {
    let imported = import("v3.pth");
    let v = &imported.config.vit;
    assert_eq!(v.family, Family::Dinov3);
    assert_eq!(
        (v.patch_size, v.num_heads, v.num_register_tokens),
        (16, 2, 4)
    );
    assert!(v.mask_k_bias && v.layer_scale);
    assert_eq!(v.layer_norm_eps, 1e-5);
    assert!(matches!(v.position, Position::Rope { .. }));
    assert_eq!(
        v.describe(),
        "DINOv3 ViT-32x3/16, 4 storage tokens, LayerScale, RoPE"
    );
    // The key third of every qkv bias was masked to zero at import.
    let bias = &imported.tensors["blocks.0.attn.qkv.bias"].data;
    assert!(bias[32..64].iter().all(|&b| b == 0.0) && bias[..32].iter().any(|&b| b != 0.0));
    check(&load(&imported), "v3", "DINOv3 .pth");
    let hf = import("v3_hf/");
    assert_eq!(hf.source, SourceKind::HuggingFace("DINOv3ViTModel".into()));
    check(&load(&hf), "v3", "DINOv3 Hugging Face");
}

#[test]
fn dinov3_swiglu_matches_the_official_code() {
    let imported = import("v3swiglu.pth");
    assert!(matches!(imported.config.vit.ffn, Ffn::SwiGlu { .. }));
    check(&load(&imported), "v3swiglu", "DINOv3 SwiGLU .pth");
    check(
        &load(&import("v3swiglu_hf/")),
        "v3swiglu",
        "DINOv3 SwiGLU Hugging Face",
    );
}

#[test]
fn dinov2_training_checkpoint_with_chunked_blocks_and_head() {
    let imported = import("v2reg_teacher_checkpoint.pth");
    assert_eq!(imported.source, SourceKind::PthTraining("teacher".into()));
    let head = imported
        .config
        .head
        .clone()
        .expect("dino_head imported as the head");
    assert_eq!(
        (head.out_dim, head.hidden_dim, head.bottleneck_dim),
        (96, 48, 32)
    );
    let model = load(&imported);
    check(&model, "v2reg", "DINOv2 teacher checkpoint");
    let out = read_safetensors(&read("v2reg_teacher_checkpoint.outputs.safetensors"))
        .unwrap()
        .1;
    let x = Tensor::<4>::zeros([1, 3, 56, 56], &Device::flex());
    let cls = model.backbone.forward(x);
    max_abs_diff(values(cls.clone()), &out["zeros.cls"], "teacher CLS");
    let projected = model.head.as_ref().unwrap().forward(cls);
    max_abs_diff(values(projected), &out["zeros.head"], "teacher DINO head");
}

#[test]
fn every_family_survives_our_checkpoint_format() {
    let device = Device::flex();
    for (file, case) in [
        ("v2reg.pth", "v2reg"),
        ("v2swiglu.pth", "v2swiglu"),
        ("v3swiglu.pth", "v3swiglu"),
    ] {
        let imported = import(file);
        let model = load(&imported);
        let mut map = TensorMap::new();
        model.save_tensors(&mut map, "");
        assert_eq!(
            map.keys().collect::<Vec<_>>(),
            imported.tensors.keys().collect::<Vec<_>>(),
            "{file}: saved names"
        );
        let bytes = write_checkpoint(&imported.config, "model", &map, &Default::default()).unwrap();
        let again = import_bytes(&bytes, Which::Teacher).unwrap();
        assert_eq!(again.source, SourceKind::Dinoscope);
        assert_eq!(again.config, imported.config);
        let reloaded = again.config.load(&again.tensors, "", &device).unwrap();
        check(&reloaded, case, &format!("{file} through our checkpoint"));
    }
}

fn err_of(r: dino_model::Result<Imported>) -> String {
    match r {
        Ok(i) => panic!(
            "imported {} but should have failed",
            i.config.vit.describe()
        ),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_missing_layerscale_is_named() {
    let err = err_of(import_with(
        &read("bad_v2_missing_layerscale.pth"),
        &heads2(),
    ));
    assert!(err.contains("blocks.1.ls2.gamma"), "{err}");
}

#[test]
fn a_truncated_rope_period_buffer_is_named() {
    let err = err_of(import_bytes(
        &read("bad_v3_short_periods.pth"),
        Which::Teacher,
    ));
    assert!(err.contains("rope_embed.periods"), "{err}");
    // With the head count given, the shape check names it too.
    let err = err_of(import_with(&read("bad_v3_short_periods.pth"), &heads2()));
    assert!(err.contains("rope_embed.periods"), "{err}");
}

#[test]
fn an_unknown_tensor_stops_the_import_unless_allowed() {
    let bytes = read("bad_v2_unknown_tensor.pth");
    let err = err_of(import_with(&bytes, &heads2()));
    assert!(
        err.contains("blocks.0.attn.qkv.lora_a") && err.contains("--allow-unused"),
        "{err}"
    );
    let allowed = import_with(
        &bytes,
        &ImportOptions {
            allow_unused: true,
            ..heads2()
        },
    )
    .unwrap();
    assert_eq!(
        allowed.ignored,
        vec!["blocks.0.attn.qkv.lora_a".to_string()]
    );
}

#[test]
fn a_config_json_that_contradicts_the_tensors_is_named() {
    let weights = read("v2reg_hf/model.safetensors");
    let config = String::from_utf8(read("v2reg_hf/config.json")).unwrap();
    for (field, value) in [
        ("num_register_tokens", "5"),
        ("hidden_size", "64"),
        ("num_hidden_layers", "4"),
        ("num_attention_heads", "3"),
        ("patch_size", "16"),
        ("use_swiglu_ffn", "true"),
        ("image_size", "224"),
    ] {
        let mut json: serde_json::Value = serde_json::from_str(&config).unwrap();
        json[field] = serde_json::from_str(value).unwrap();
        let r = import_with(
            &weights,
            &ImportOptions {
                hf_config: Some(json.to_string()),
                ..ImportOptions::default()
            },
        );
        let err = err_of(r);
        assert!(err.contains(field), "{field}: {err}");
    }
    let r = import_with(
        &weights,
        &ImportOptions {
            hf_config: Some("{not json".into()),
            ..ImportOptions::default()
        },
    );
    assert!(matches!(r, Err(ModelError::BadConfig { .. })));
}

#[test]
fn a_model_too_large_for_its_memory_is_refused_with_what_it_needs() {
    let err = err_of(import_with(
        &read("v2reg.pth"),
        &ImportOptions {
            max_weight_bytes: Some(1000),
            limit_reason: "a test limit of 1000 bytes".into(),
            ..heads2()
        },
    ));
    // A .pth is refused while its pickle is walked, before any tensor is read.
    assert!(
        err.contains("this checkpoint needs about")
            && err.contains("MiB")
            && err.contains("1000 bytes"),
        "{err}"
    );
    // Safetensors say their shapes up front: the refusal names the architecture.
    let err = err_of(import_with(
        &read("v2reg_hf/model.safetensors"),
        &ImportOptions {
            hf_config: Some(String::from_utf8(read("v2reg_hf/config.json")).unwrap()),
            max_weight_bytes: Some(1000),
            limit_reason: "a test limit of 1000 bytes".into(),
            ..ImportOptions::default()
        },
    ));
    assert!(
        err.contains("DINOv2 ViT-32x3/14") && err.contains("MiB") && err.contains("1000 bytes"),
        "{err}"
    );
    // The official giant and 7B sizes are recognised by name and by their memory.
    let g = dino_model::VitConfig::dinov3("7b").unwrap();
    assert_eq!(
        g.describe(),
        "DINOv3 ViT-7B/16, 4 storage tokens, LayerScale, SwiGLU, RoPE"
    );
    assert!(g.num_params() as u64 * 4 > 24 << 30);
}

#[test]
fn masked_patches_take_the_mask_token_as_in_the_official_code() {
    let device = Device::flex();
    for (file, case) in [("v2reg.pth", "v2reg"), ("v3.pth", "v3")] {
        let model = load(&import(file));
        let out = read_safetensors(&read(&format!("{case}.masked.safetensors")))
            .unwrap()
            .1;
        let input = &out["input"];
        let x = Tensor::<4>::from_data(
            TensorData::new(input.data.clone(), input.shape.clone()),
            &device,
        );
        let m = &out["masks"];
        assert!(m.data.contains(&1.0) && m.data.contains(&0.0));
        let masks =
            Tensor::<2>::from_data(TensorData::new(m.data.clone(), m.shape.clone()), &device)
                .greater_elem(0.5);
        let tokens = model
            .backbone
            .forward_tokens_masked(x.clone(), Some(masks), None);
        let [b, t, d] = tokens.dims();
        let prefix = model.backbone.prefix_tokens();
        max_abs_diff(
            values(tokens.clone().narrow(1, 0, 1).reshape([b, d])),
            &out["cls"],
            &format!("{case} masked CLS"),
        );
        max_abs_diff(
            values(tokens.narrow(1, prefix, t - prefix)),
            &out["patch"],
            &format!("{case} masked patch tokens"),
        );
        // Masking changes the output: the test would notice the mask being ignored.
        let plain = values(model.backbone.forward(x));
        let differs = plain
            .iter()
            .zip(&out["cls"].data)
            .any(|(a, b)| (a - b).abs() > 1e-3);
        assert!(differs, "{case}: masking made no difference");
    }
}
