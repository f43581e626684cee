//! The file system: atomic writes and bounded reads (`files`), NumPy arrays (`npy`), and
//! reading any weight file the CLI and fine-tuning accept (`weights`). The lowest floor of
//! the crate with `distributed`: it imports nothing of it.

pub mod files;
pub mod npy;
pub mod weights;
