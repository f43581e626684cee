//! The dinoscope checkpoint: one safetensors file, config as JSON in its metadata.
//!
//! Tensor names are the official PyTorch keys. A model checkpoint holds the backbone under
//! bare keys (`blocks.3.attn.qkv.weight`) and the head under `head.`; a training checkpoint
//! adds the student under `student.` and the trainer's own state under other prefixes, so
//! every checkpoint can be opened by the viewer, which reads the bare (teacher) keys.

use std::collections::{BTreeMap, HashMap};

use burn::tensor::Device;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::tensors::{RawTensor, TensorMap};
use crate::vit::DinoModel;

/// Metadata key holding the [`ModelConfig`] as JSON.
pub const CONFIG_KEY: &str = "dino.config";
/// Metadata key saying what the file is: [`KIND_MODEL`] or [`KIND_TRAINING`].
pub const KIND_KEY: &str = "dino.kind";
/// A checkpoint holding model weights only.
pub const KIND_MODEL: &str = "model";
/// A checkpoint holding everything needed to resume training.
pub const KIND_TRAINING: &str = "training";
/// The safetensors convention for the format name.
const FORMAT_KEY: &str = "format";

/// A parsed checkpoint: its config (when present), metadata and tensors as f32.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Model config from the metadata, absent in foreign safetensors files.
    pub config: Option<ModelConfig>,
    /// Every metadata entry, the config included.
    pub metadata: BTreeMap<String, String>,
    /// Every tensor, converted to f32.
    pub tensors: TensorMap,
}

impl Checkpoint {
    /// The config, or an error telling the user to import the file first.
    pub fn require_config(&self) -> Result<&ModelConfig> {
        self.config
            .as_ref()
            .ok_or_else(|| ModelError::MissingConfig {
                key: CONFIG_KEY.into(),
            })
    }

    /// Builds the model stored under the bare keys (the teacher of a training checkpoint).
    pub fn model(&self, device: &Device) -> Result<DinoModel> {
        let config = self.require_config()?;
        let mut config = config.clone();
        // A backbone-only use (viewer) works even if a head is declared but absent.
        let has = |prefix: &str| {
            ["last_layer.weight_v", "last_layer.weight"]
                .iter()
                .any(|k| self.tensors.contains_key(&format!("{prefix}{k}")))
        };
        if config.head.is_some() && !has("head.") {
            config.head = None;
        }
        if config.ibot_head.is_some() && !has("ibot_head.") {
            config.ibot_head = None;
        }
        config.load(&self.tensors, "", device)
    }
}

fn to_f32(name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    let bytes = view.data();
    let out = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")) as f32)
            .collect(),
        other => {
            return Err(ModelError::UnsupportedDtype {
                name: name.into(),
                dtype: format!("{other:?}"),
            });
        }
    };
    Ok(out)
}

/// Reads the tensors and metadata of any safetensors file, converting floats to f32.
pub fn read_safetensors(bytes: &[u8]) -> Result<(BTreeMap<String, String>, TensorMap)> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Safetensors {
        reason: e.to_string(),
    })?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| ModelError::Safetensors {
        reason: e.to_string(),
    })?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut tensors = TensorMap::new();
    for (name, view) in st.iter() {
        let data = to_f32(name, &view)?;
        tensors.insert(
            name.to_string(),
            RawTensor::new(view.shape().to_vec(), data),
        );
    }
    Ok((metadata, tensors))
}

/// The metadata of a safetensors file from its first bytes (the length and the JSON
/// header; the rest may be absent), without reading a tensor.
pub fn read_metadata(bytes: &[u8]) -> Result<BTreeMap<String, String>> {
    let bad = |reason: String| ModelError::Safetensors { reason };
    let len: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("shorter than its 8-byte header length".into()))?;
    let n = u64::from_le_bytes(len);
    let header = usize::try_from(n)
        .ok()
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
        .ok_or_else(|| bad(format!("the header of {n} bytes is cut short")))?;
    let json: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| bad(format!("header: {e}")))?;
    let mut out = BTreeMap::new();
    if let Some(meta) = json.get("__metadata__").and_then(|m| m.as_object()) {
        for (k, v) in meta {
            let v = v
                .as_str()
                .ok_or_else(|| bad(format!("metadata `{k}` is not a string")))?;
            out.insert(k.clone(), v.to_string());
        }
    }
    Ok(out)
}

/// The model config a checkpoint's metadata holds (validated), if any.
pub fn config_from_metadata(metadata: &BTreeMap<String, String>) -> Result<Option<ModelConfig>> {
    match metadata.get(CONFIG_KEY) {
        Some(json) => {
            let c: ModelConfig = serde_json::from_str(json).map_err(|e| ModelError::BadConfig {
                reason: e.to_string(),
            })?;
            c.validate()?;
            Ok(Some(c))
        }
        None => Ok(None),
    }
}

/// Parses a checkpoint from bytes (native files and browser uploads alike).
pub fn read_checkpoint(bytes: &[u8]) -> Result<Checkpoint> {
    let (metadata, tensors) = read_safetensors(bytes)?;
    let config = config_from_metadata(&metadata)?;
    Ok(Checkpoint {
        config,
        metadata,
        tensors,
    })
}

/// Serialises tensors (as f32) with the config and extra metadata into safetensors bytes.
pub fn write_checkpoint(
    config: &ModelConfig,
    kind: &str,
    tensors: &TensorMap,
    extra_metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    write_checkpoint_as(config, kind, tensors, extra_metadata, false)
}

/// As [`write_checkpoint`], storing the tensors as f16 when `half` is set: half the size,
/// for shipping models to browsers (readers widen them back to f32).
pub fn write_checkpoint_as(
    config: &ModelConfig,
    kind: &str,
    tensors: &TensorMap,
    extra_metadata: &BTreeMap<String, String>,
    half: bool,
) -> Result<Vec<u8>> {
    let mut meta: HashMap<String, String> = extra_metadata.clone().into_iter().collect();
    meta.insert(FORMAT_KEY.into(), "pt".into());
    meta.insert(KIND_KEY.into(), kind.into());
    meta.insert(
        CONFIG_KEY.into(),
        serde_json::to_string(config).map_err(|e| ModelError::BadConfig {
            reason: e.to_string(),
        })?,
    );
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, t)| {
            let b: Vec<u8> = if half {
                t.data
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect()
            } else {
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect()
            };
            (name.clone(), b, t.shape.clone())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, b, shape)| {
            TensorView::new(if half { Dtype::F16 } else { Dtype::F32 }, shape.clone(), b)
                .map(|v| (name.as_str(), v))
                .map_err(|e| ModelError::Safetensors {
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(meta)).map_err(|e| ModelError::Safetensors {
        reason: e.to_string(),
    })
}

/// A model checkpoint (bare + `head.` keys) of `model`.
pub fn model_checkpoint_bytes(config: &ModelConfig, model: &DinoModel) -> Result<Vec<u8>> {
    let mut map = TensorMap::new();
    model.save_tensors(&mut map, "");
    write_checkpoint(config, KIND_MODEL, &map, &BTreeMap::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HeadConfig, VitConfig};
    use burn::tensor::{Distribution, Tensor};

    fn tiny() -> ModelConfig {
        let mut vit = VitConfig::vit_tiny(8);
        vit.depth = 2;
        vit.img_size = 32;
        ModelConfig {
            head: Some(HeadConfig {
                hidden_dim: 32,
                bottleneck_dim: 16,
                ..HeadConfig::dino(192, 64)
            }),
            ibot_head: None,
            vit,
        }
    }

    #[test]
    fn round_trip_keeps_every_weight_and_output() {
        let device = Device::flex();
        let config = tiny();
        let model = config.init(&device).unwrap();
        let bytes = model_checkpoint_bytes(&config, &model).unwrap();
        let ckpt = read_checkpoint(&bytes).unwrap();
        assert_eq!(ckpt.config.as_ref(), Some(&config));
        assert!(ckpt.tensors.contains_key("blocks.1.attn.qkv.weight"));
        assert!(ckpt.tensors.contains_key("head.mlp.4.bias"));
        assert_eq!(ckpt.tensors["head.last_layer.weight_v"].shape, vec![64, 16]);
        let loaded = ckpt.model(&device).unwrap();
        let x = Tensor::<4>::random([2, 3, 32, 40], Distribution::Normal(0.0, 1.0), &device);
        let a = model
            .backbone
            .forward(x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let b = loaded
            .backbone
            .forward(x)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_separate_plain_ibot_head_round_trips() {
        // DINOv3's heads: plain last layers, iBOT's its own.
        let device = Device::flex();
        let mut config = tiny();
        let plain = HeadConfig {
            weight_norm: false,
            norm_last_layer: false,
            ..config.head.clone().unwrap()
        };
        config.head = Some(plain.clone());
        config.ibot_head = Some(HeadConfig {
            out_dim: 48,
            ..plain
        });
        let model = config.init(&device).unwrap();
        let bytes = model_checkpoint_bytes(&config, &model).unwrap();
        let ckpt = read_checkpoint(&bytes).unwrap();
        assert_eq!(ckpt.config.as_ref(), Some(&config));
        assert_eq!(ckpt.tensors["head.last_layer.weight"].shape, vec![64, 16]);
        assert_eq!(
            ckpt.tensors["ibot_head.last_layer.weight"].shape,
            vec![48, 16]
        );
        assert!(!ckpt.tensors.contains_key("head.last_layer.weight_g"));
        let loaded = ckpt.model(&device).unwrap();
        let x = Tensor::<2>::random([3, 192], Distribution::Normal(0.0, 1.0), &device);
        for (a, b) in [
            (model.head.as_ref(), loaded.head.as_ref()),
            (model.ibot_head.as_ref(), loaded.ibot_head.as_ref()),
        ] {
            let (a, b) = (a.unwrap(), b.unwrap());
            assert!(!a.weight_norm());
            let ya = a
                .forward(x.clone())
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let yb = b
                .forward(x.clone())
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            assert_eq!(ya, yb);
            // The plain layer is the weight itself: logits = normalised bottleneck · W.
            let w = a.last_layer_v.val();
            let direct = a.bottleneck(x.clone()).matmul(w);
            let yd = direct.into_data().try_to_vec::<f32>().unwrap();
            assert_eq!(ya, yd);
        }
    }

    #[test]
    fn corrupt_and_truncated_files_are_errors() {
        let device = Device::flex();
        let config = tiny();
        let model = config.init(&device).unwrap();
        let bytes = model_checkpoint_bytes(&config, &model).unwrap();
        assert!(matches!(
            read_checkpoint(&bytes[..bytes.len() / 2]),
            Err(ModelError::Safetensors { .. })
        ));
        assert!(matches!(
            read_checkpoint(&[]),
            Err(ModelError::Safetensors { .. })
        ));
        let mut huge = vec![0xffu8; 16];
        huge.extend_from_slice(b"{}");
        assert!(read_checkpoint(&huge).is_err());
    }

    #[test]
    fn shape_mismatch_names_the_tensor() {
        let device = Device::flex();
        let config = tiny();
        let model = config.init(&device).unwrap();
        let mut map = TensorMap::new();
        model.save_tensors(&mut map, "");
        map.insert(
            "blocks.0.mlp.fc1.bias".into(),
            RawTensor::new(vec![3], vec![0.0; 3]),
        );
        let bytes = write_checkpoint(&config, KIND_MODEL, &map, &BTreeMap::new()).unwrap();
        let err = read_checkpoint(&bytes)
            .unwrap()
            .model(&device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("blocks.0.mlp.fc1.bias") && err.contains("[768]"),
            "{err}"
        );
    }
}
