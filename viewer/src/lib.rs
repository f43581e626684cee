//! dino-viewer: the egui app that shows what a DINO Vision Transformer attends to, natively
//! and in the browser. Only the entry points differ by platform (`main.rs`, `web.rs`); the
//! browser's threaded compute worker (feature `threads`) is built without the UI.
//!
//! Floors, from the top: the entry points (`main.rs`, `web`) → `app` (state and panels) →
//! `browser` (page helpers), `worker` (the compute worker and the page's handle on it) and
//! `views` → `job` (what background work answers) → `infer` (load, analyse), `gpu_overlay`,
//! `files` (the size every file may have).

#[cfg(feature = "ui")]
pub mod app;
#[cfg(all(target_arch = "wasm32", feature = "ui"))]
pub mod browser;
#[cfg(feature = "ui")]
pub mod files;
#[cfg(feature = "ui")]
pub mod gpu_overlay;
pub mod infer;
#[cfg(feature = "ui")]
pub mod job;
#[cfg(feature = "ui")]
pub mod views;
#[cfg(all(target_arch = "wasm32", feature = "ui"))]
pub mod web;
#[cfg(target_arch = "wasm32")]
pub mod worker;

#[cfg(feature = "ui")]
pub use app::ViewerApp;
