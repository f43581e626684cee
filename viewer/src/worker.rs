//! The web viewer's compute worker. WebAssembly in the page runs on the main thread, so a
//! forward pass of seconds, or a hostile image that takes long to decode, would freeze the
//! tab. The same wasm module is therefore also started in a dedicated Web Worker
//! (`web/worker.js`), which owns the network; the page only sends bytes and draws replies.
//!
//! Where the browser has no WebGPU adapter but the page is cross-origin isolated,
//! `worker.js` loads the threaded build of this file instead (feature `threads`, no UI, no
//! WebGPU): the same handler, with burn's CPU kernels on a rayon pool of Web Workers.
//!
//! Messages are plain JS objects with an `op` field; big arrays travel as typed arrays whose
//! buffers are transferred, not copied.

use std::cell::RefCell;
use std::sync::Arc;
#[cfg(feature = "ui")]
use std::sync::mpsc::Sender;

use burn::tensor::Device;
use image::RgbImage;
use js_sys::{Float32Array, Object, Reflect, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

#[cfg(feature = "ui")]
use crate::infer::{Analysis, LoadedModel};
use crate::infer::{Request, analyse_async, load_model_with};
#[cfg(feature = "ui")]
use crate::job::Job;

/// `initThreadPool(n)` for `worker.js`: starts the n Web Workers of burn's rayon pool.
#[cfg(feature = "threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

thread_local! {
    /// The network, inside the worker.
    static MODEL: RefCell<Option<Arc<dino_model::DinoModel>>> = const { RefCell::new(None) };
    /// The compute device of the worker and its name, chosen on first use.
    static DEVICE: RefCell<Option<(Device, String)>> = const { RefCell::new(None) };
}

/// WebGPU through burn's wgpu backend when the browser offers an adapter, else burn's CPU
/// backend compiled to WebAssembly.
async fn device() -> (Device, String) {
    if let Some(d) = DEVICE.with(|d| d.borrow().clone()) {
        return d;
    }
    let chosen = choose_device().await;
    DEVICE.with(|d| *d.borrow_mut() = Some(chosen.clone()));
    chosen
}

#[cfg(feature = "webgpu")]
async fn choose_device() -> (Device, String) {
    use burn::backend::wgpu::try_init_setup_async;
    use burn::backend::{AutoGraphicsApi, WgpuDevice};
    let wgpu_device = WgpuDevice::default();
    match try_init_setup_async::<AutoGraphicsApi>(&wgpu_device, Default::default()).await {
        Ok(_) => (
            Device::from(wgpu_device),
            "WebGPU (burn wgpu, worker)".to_string(),
        ),
        Err(e) => {
            log::info!("no WebGPU in this browser ({e}); computing on the CPU");
            (Device::flex(), crate::infer::wasm_cpu_backend("worker"))
        }
    }
}

/// The build without WebGPU (the threaded one) always computes on the CPU.
#[cfg(not(feature = "webgpu"))]
async fn choose_device() -> (Device, String) {
    (Device::flex(), crate::infer::wasm_cpu_backend("worker"))
}

fn set(obj: &Object, key: &str, value: impl Into<JsValue>) {
    // Setting a property of a fresh plain object cannot fail.
    let _ = Reflect::set(obj, &JsValue::from_str(key), &value.into());
}

fn get(obj: &JsValue, key: &str) -> JsValue {
    Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

fn get_str(obj: &JsValue, key: &str) -> String {
    get(obj, key).as_string().unwrap_or_default()
}

fn get_u32(obj: &JsValue, key: &str) -> u32 {
    get(obj, key).as_f64().unwrap_or(0.0) as u32
}

fn get_bytes(obj: &JsValue, key: &str) -> Vec<u8> {
    get(obj, key)
        .dyn_into::<Uint8Array>()
        .map(|a| a.to_vec())
        .unwrap_or_default()
}

#[cfg(feature = "ui")]
fn get_floats(obj: &JsValue, key: &str) -> Vec<f32> {
    get(obj, key)
        .dyn_into::<Float32Array>()
        .map(|a| a.to_vec())
        .unwrap_or_default()
}

fn image_reply(obj: &Object, img: &RgbImage, prefix: &str) {
    set(obj, &format!("{prefix}width"), img.width());
    set(obj, &format!("{prefix}height"), img.height());
    set(
        obj,
        &format!("{prefix}rgb"),
        Uint8Array::from(img.as_raw().as_slice()),
    );
}

fn image_from(obj: &JsValue, prefix: &str) -> Result<RgbImage, String> {
    let (w, h) = (
        get_u32(obj, &format!("{prefix}width")),
        get_u32(obj, &format!("{prefix}height")),
    );
    RgbImage::from_raw(w, h, get_bytes(obj, &format!("{prefix}rgb")))
        .ok_or_else(|| format!("the worker sent a malformed {w}x{h} image"))
}

/// Handles one message inside the worker and resolves to the reply (called from `worker.js`).
#[wasm_bindgen]
pub async fn dino_worker_handle(msg: JsValue) -> JsValue {
    let reply = Object::new();
    let op = get_str(&msg, "op");
    set(&reply, "op", op.as_str());
    let (device, backend) = device().await;
    set(&reply, "backend", backend.as_str());
    let result: Result<(), String> = async {
        match op.as_str() {
            "load" => {
                let name = get_str(&msg, "name");
                let config = get(&msg, "config").as_string();
                let loaded =
                    load_model_with(&name, &get_bytes(&msg, "bytes"), config.as_deref(), &device)?;
                set(&reply, "name", name.as_str());
                let config = serde_json::to_string(&loaded.config).map_err(|e| e.to_string())?;
                set(&reply, "config", config.as_str());
                MODEL.with(|m| *m.borrow_mut() = loaded.model);
                Ok(())
            }
            "decode" => {
                let name = get_str(&msg, "name");
                set(&reply, "name", name.as_str());
                let img = crate::infer::decode_for_viewer(&name, &get_bytes(&msg, "bytes"))?;
                image_reply(&reply, &img, "");
                Ok(())
            }
            "analyse" => {
                let request = Request {
                    image: get_u32(&msg, "image") as usize,
                    layer: get_u32(&msg, "layer") as usize,
                    resolution: get_u32(&msg, "resolution"),
                };
                let img = image_from(&msg, "")?;
                let model = MODEL
                    .with(|m| m.borrow().clone())
                    .ok_or("no checkpoint is loaded in the worker")?;
                let a = analyse_async(&model, &img, request.clone(), &device).await?;
                set(&reply, "image", request.image as u32);
                set(&reply, "layer", request.layer as u32);
                set(&reply, "resolution", request.resolution);
                image_reply(&reply, &a.display, "display_");
                set(&reply, "grid_h", a.grid_h as u32);
                set(&reply, "grid_w", a.grid_w as u32);
                set(&reply, "heads", a.heads as u32);
                set(&reply, "prefix", a.prefix as u32);
                set(&reply, "dim", a.dim as u32);
                set(&reply, "seconds", a.seconds);
                set(
                    &reply,
                    "attention",
                    Float32Array::from(a.attention.as_slice()),
                );
                set(&reply, "pca", Float32Array::from(a.pca.as_flattened()));
                Ok(())
            }
            other => Err(format!("unknown worker request {other:?}")),
        }
    }
    .await;
    if let Err(e) = result {
        set(&reply, "error", e.as_str());
    }
    reply.into()
}

/// The page's handle on the worker.
#[cfg(feature = "ui")]
pub struct Remote {
    worker: web_sys::Worker,
    _on_message: Closure<dyn FnMut(web_sys::MessageEvent)>,
    _on_error: Closure<dyn FnMut(web_sys::ErrorEvent)>,
}

/// Turns a worker reply into the job the app understands.
#[cfg(feature = "ui")]
fn job_from_reply(msg: &JsValue) -> Option<Job> {
    let error = get(msg, "error").as_string();
    let op = get_str(msg, "op");
    Some(match op.as_str() {
        // The worker names its device with the model, which is when the page shows it.
        "load" => Job::Backend(
            get_str(msg, "backend"),
            Box::new(Job::Model(match error {
                Some(e) => Err(e),
                None => serde_json::from_str(&get_str(msg, "config"))
                    .map_err(|e| format!("the worker sent a bad config: {e}"))
                    .map(|config| LoadedModel {
                        name: get_str(msg, "name"),
                        config,
                        model: None,
                    }),
            })),
        ),
        "decode" => {
            let name = get_str(msg, "name");
            Job::Image(name, error.map_or_else(|| image_from(msg, ""), Err))
        }
        "analyse" => Job::Analysis(match error {
            Some(e) => Err(e),
            None => image_from(msg, "display_").map(|display| Analysis {
                request: Request {
                    image: get_u32(msg, "image") as usize,
                    layer: get_u32(msg, "layer") as usize,
                    resolution: get_u32(msg, "resolution"),
                },
                display,
                grid_h: get_u32(msg, "grid_h") as usize,
                grid_w: get_u32(msg, "grid_w") as usize,
                heads: get_u32(msg, "heads") as usize,
                prefix: (get_u32(msg, "prefix") as usize).max(1),
                attention: get_floats(msg, "attention"),
                pca: get_floats(msg, "pca")
                    .chunks_exact(3)
                    .map(|c| [c[0], c[1], c[2]])
                    .collect(),
                dim: get_u32(msg, "dim") as usize,
                seconds: get(msg, "seconds").as_f64().unwrap_or(0.0),
            }),
        }),
        _ => return None,
    })
}

#[cfg(feature = "ui")]
impl Remote {
    /// Starts `worker.js` beside the page; its replies arrive as [`Job`]s on `tx`.
    pub fn start(tx: Sender<Job>, ctx: egui::Context) -> Result<Self, String> {
        let opts = web_sys::WorkerOptions::new();
        opts.set_type(web_sys::WorkerType::Module);
        // The page's query goes along: worker.js reads `?threads=` from its own URL.
        let search = web_sys::window()
            .and_then(|w| w.location().search().ok())
            .unwrap_or_default();
        let worker = web_sys::Worker::new_with_options(&format!("./worker.js{search}"), &opts)
            .map_err(|e| format!("cannot start the compute worker: {e:?}"))?;
        let (tx2, ctx2) = (tx.clone(), ctx.clone());
        let on_message =
            Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
                if let Some(job) = job_from_reply(&e.data()) {
                    let _ = tx.send(job);
                    ctx.request_repaint();
                }
            });
        let on_error =
            Closure::<dyn FnMut(web_sys::ErrorEvent)>::new(move |e: web_sys::ErrorEvent| {
                let _ = tx2.send(Job::WorkerFailed(format!(
                    "the compute worker failed: {} — reload the page",
                    e.message()
                )));
                ctx2.request_repaint();
            });
        worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        Ok(Self {
            worker,
            _on_message: on_message,
            _on_error: on_error,
        })
    }

    fn post(&self, msg: &Object, transfer: &[JsValue]) {
        let list = js_sys::Array::new();
        for t in transfer {
            list.push(t);
        }
        if let Err(e) = self.worker.post_message_with_transfer(msg, &list) {
            log::error!("posting to the compute worker: {e:?}");
        }
    }

    /// Asks the worker to load a checkpoint; answered by [`Job::Model`].
    pub fn load(&self, name: &str, bytes: &[u8], config: Option<&str>) {
        let msg = Object::new();
        set(&msg, "op", "load");
        set(&msg, "name", name);
        if let Some(c) = config {
            set(&msg, "config", c);
        }
        let arr = Uint8Array::from(bytes);
        set(&msg, "bytes", arr.clone());
        self.post(&msg, &[arr.buffer().into()]);
    }

    /// Asks the worker to decode an image file; answered by [`Job::Image`].
    pub fn decode(&self, name: &str, bytes: &[u8]) {
        let msg = Object::new();
        set(&msg, "op", "decode");
        set(&msg, "name", name);
        let arr = Uint8Array::from(bytes);
        set(&msg, "bytes", arr.clone());
        self.post(&msg, &[arr.buffer().into()]);
    }

    /// Asks the worker to analyse an image; answered by [`Job::Analysis`].
    pub fn analyse(&self, img: &RgbImage, request: &Request) {
        let msg = Object::new();
        set(&msg, "op", "analyse");
        set(&msg, "image", request.image as u32);
        set(&msg, "layer", request.layer as u32);
        set(&msg, "resolution", request.resolution);
        image_reply(&msg, img, "");
        let rgb = get(&msg, "rgb");
        self.post(&msg, &[get(&rgb, "buffer")]);
    }
}
