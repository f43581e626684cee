//! Entry point of the web viewer's threaded compute worker module (`pkg-threads/`).
//! `web/worker.js` drives it through the library's wasm-bindgen exports (the worker's
//! `dino_worker_handle`, wasm-bindgen-rayon's `initThreadPool`).

// Without a use of the library it would not be linked, and the module would export nothing.
extern crate dino_viewer;

fn main() {}
