//! The one Vision Transformer of every family (DINO, DINOv2, DINOv3 are configs, not
//! copies), the DINO head, and the table that loads both from official tensor names. May
//! import `cpu` (its kernels), `interp`, `tensors`, `config` and `error`.

pub mod head;
pub mod transformer;
pub mod weights;

pub use head::DinoHead;
pub use transformer::{AttentionOutput, DropPathMasks, VisionTransformer};
pub use weights::DinoModel;
