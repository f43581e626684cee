//! Reading weight files that dinoscope did not write: official `.pth` (a pickle reader that
//! never runs code), Hugging Face ports, and the released models' names on the Hub. May
//! import `vit`, `checkpoint`, `tensors`, `config` and `error`; nothing outside the crate's
//! lower rooms imports it back.

pub mod convert;
pub mod hf;
pub mod hub;
pub mod infer;
pub mod pth;

pub use convert::{ImportOptions, Imported, SourceKind, Which, import_bytes, import_with};
pub use infer::{check_tensors, infer_config};
