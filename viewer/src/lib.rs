//! dino-viewer: the egui app that shows what a DINO Vision Transformer attends to, natively
//! and in the browser. Only the entry points differ by platform (`main.rs`, `web.rs`).

pub mod app;
pub mod gpu_overlay;
pub mod infer;
pub mod views;
#[cfg(target_arch = "wasm32")]
pub mod web;
#[cfg(target_arch = "wasm32")]
pub mod worker;

pub use app::ViewerApp;
