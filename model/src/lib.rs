//! dino-model: the DINO Vision Transformer (Caron et al. 2021) and everything that both the
//! trainer and the viewer need: configs, the DINO head, checkpoints, import of official
//! weights, image preprocessing and attention post-processing. No file system, no UI.
//!
//! Floors, from the top: `import/` (foreign files) → `checkpoint` (our file) → `vit/` (the
//! network and its weight table) → `cpu/` (kernels); beside them `attention` → `interp`,
//! `pil_resize`, `preprocess`, and at the bottom `config`, `tensors`, `error`.

pub mod attention;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod gpu;
pub mod import;
pub mod interp;
pub mod pil_resize;
pub mod preprocess;
pub mod tensors;
pub mod vit;

pub use checkpoint::{Checkpoint, read_checkpoint, write_checkpoint};
pub use config::{
    Family, Ffn, HeadConfig, ModelConfig, Normalization, PosInterp, Position, Precision, VitConfig,
};
pub use error::{ModelError, Result};
pub use tensors::{RawTensor, TensorMap};
pub use vit::{AttentionOutput, DinoHead, DinoModel, DropPathMasks, VisionTransformer};
