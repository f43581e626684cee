//! Empty on purpose: depending on this crate turns on burn's `webgpu` feature on wasm32
//! (see Cargo.toml), which the viewer's `webgpu` feature asks for.
