//! dino-model: the DINO Vision Transformer (Caron et al. 2021) and everything that both the
//! trainer and the viewer need: configs, the DINO head, checkpoints, import of official
//! weights, image preprocessing and attention post-processing. No file system, no UI.

pub mod attention;
pub mod checkpoint;
pub mod config;
pub mod cpu_attention;
pub mod cpu_linear;
pub mod cpu_pointwise;
pub mod error;
pub mod fastmath;
pub mod fused;
pub mod gemm;
#[cfg(not(target_arch = "wasm32"))]
pub mod gpu;
pub mod head;
pub mod hub;
pub mod import;
pub mod interp;
pub mod preprocess;
pub mod pth;
pub mod vit;
pub mod weights;

pub use checkpoint::{Checkpoint, read_checkpoint, write_checkpoint};
pub use config::{
    Family, Ffn, HeadConfig, ModelConfig, Normalization, PosInterp, Position, Precision, VitConfig,
};
pub use error::{ModelError, Result};
pub use head::DinoHead;
pub use vit::{AttentionOutput, DropPathMasks, VisionTransformer};
pub use weights::{DinoModel, RawTensor, TensorMap};
