//! Inference for the viewer: one image through the backbone, keeping everything the views
//! need (all-token attention of one block, patch features), off the UI thread.

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use dino_model::preprocess::{Resize, prepare_normalized};
use dino_model::{DinoModel, ModelConfig};
use image::RgbImage;

/// A loaded checkpoint.
#[derive(Clone)]
pub struct LoadedModel {
    /// File name it came from.
    pub name: String,
    /// Its configuration.
    pub config: ModelConfig,
    /// The network (teacher of training checkpoints); `None` on the page when the weights
    /// live in the web viewer's compute worker.
    pub model: Option<Arc<DinoModel>>,
}

/// What one inference request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    /// Index of the image in the viewer's list.
    pub image: usize,
    /// Block whose attention is shown.
    pub layer: usize,
    /// Square input side in pixels (a multiple of the patch size).
    pub resolution: u32,
}

/// Everything the views draw from.
#[derive(Clone)]
pub struct Analysis {
    /// The request this answers.
    pub request: Request,
    /// The resized image the maps align with.
    pub display: RgbImage,
    /// Patch grid rows.
    pub grid_h: usize,
    /// Patch grid columns.
    pub grid_w: usize,
    /// Attention heads.
    pub heads: usize,
    /// Tokens before the patches: CLS and the register (DINOv2) or storage (DINOv3) tokens.
    pub prefix: usize,
    /// Softmax attention of the block, `[heads, tokens, tokens]`.
    pub attention: Vec<f32>,
    /// The patch tokens' first three principal components as RGB in [0, 1], one per patch:
    /// computed where the network ran (the worker, a background thread), once per analysis,
    /// so that the page never computes it and display settings never recompute it.
    pub pca: Vec<[f32; 3]>,
    /// Token width.
    pub dim: usize,
    /// Wall time of the forward pass and read-back.
    pub seconds: f64,
}

impl Analysis {
    /// Tokens per image (CLS + registers + patches).
    pub fn tokens(&self) -> usize {
        self.prefix + self.grid_h * self.grid_w
    }
}

/// The network's outputs for one image, before they are read back.
struct Forward {
    request: Request,
    prepared: dino_model::preprocess::Prepared,
    out: dino_model::AttentionOutput,
    started: f64,
}

fn forward(
    model: &DinoModel,
    img: &RgbImage,
    request: Request,
    device: &Device,
) -> Result<Forward, String> {
    let started = web_time_now();
    let patch = model.backbone.patch_size();
    let prepared = prepare_normalized(
        img,
        Resize::Square(request.resolution),
        patch,
        model.backbone.normalization(),
    )
    .map_err(|e| e.to_string())?;
    let x = Tensor::<4>::from_data(
        TensorData::new(
            prepared.chw.clone(),
            [1, 3, prepared.height, prepared.width],
        ),
        device,
    );
    let layer = request.layer.min(model.backbone.depth() - 1);
    let out = model
        .backbone
        .forward_with_attention(x, layer)
        .map_err(|e| e.to_string())?;
    Ok(Forward {
        request,
        prepared,
        out,
        started,
    })
}

fn floats(data: TensorData) -> Result<Vec<f32>, String> {
    data.try_to_vec().map_err(|e| format!("{e:?}"))
}

impl Forward {
    fn finish(self, attention: Vec<f32>, tokens: Vec<f32>) -> Result<Analysis, String> {
        let finite = |v: &[f32], what| {
            dino_model::attention::ensure_finite(v, what).map_err(|e| e.to_string())
        };
        finite(&attention, "attention weights")?;
        finite(&tokens, "features")?;
        let [_, heads, _, _] = self.out.attention.dims();
        let [_, _, dim] = self.out.tokens.dims();
        let prefix = self.out.prefix_tokens;
        Ok(Analysis {
            request: self.request,
            display: self.prepared.display,
            grid_h: self.out.grid_h,
            grid_w: self.out.grid_w,
            heads,
            prefix,
            attention,
            // PCA runs on the patch tokens only.
            pca: dino_model::attention::pca_rgb(
                &tokens[prefix * dim..],
                self.out.grid_h * self.out.grid_w,
                dim,
            ),
            dim,
            seconds: web_time_now() - self.started,
        })
    }
}

/// Runs the model on one image.
pub fn analyse(
    model: &DinoModel,
    img: &RgbImage,
    request: Request,
    device: &Device,
) -> Result<Analysis, String> {
    let f = forward(model, img, request, device)?;
    let attention = floats(f.out.attention.clone().into_data())?;
    let tokens = floats(f.out.tokens.clone().into_data())?;
    f.finish(attention, tokens)
}

/// As [`analyse`], reading the results back asynchronously: WebGPU in a browser cannot
/// block on the GPU.
pub async fn analyse_async(
    model: &DinoModel,
    img: &RgbImage,
    request: Request,
    device: &Device,
) -> Result<Analysis, String> {
    let f = forward(model, img, request, device)?;
    let read = |e| format!("reading the maps back: {e:?}");
    let attention = floats(
        f.out
            .attention
            .clone()
            .into_data_async()
            .await
            .map_err(read)?,
    )?;
    let tokens = floats(f.out.tokens.clone().into_data_async().await.map_err(read)?)?;
    f.finish(attention, tokens)
}

/// How the browser's CPU backend runs, for the status bar and `data-backend`: SIMD128 when
/// compiled with `+simd128`, and the size of the rayon pool in the threaded build.
pub fn wasm_cpu_backend(place: &str) -> String {
    let simd = if cfg!(target_feature = "simd128") {
        "SIMD128"
    } else {
        "scalar"
    };
    #[cfg(feature = "threads")]
    let threads = rayon::current_num_threads();
    #[cfg(not(feature = "threads"))]
    let threads = 1;
    let unit = if threads == 1 { "thread" } else { "threads" };
    format!("CPU (flex, WebAssembly {simd}, {threads} {unit}, {place})")
}

/// Largest image side kept after loading; bigger photos are downscaled (the network sees
/// at most a few hundred pixels anyway).
pub const MAX_IMAGE_SIDE: u32 = 2048;

/// Decodes an image file (with the decompression-bomb limits) and downscales photos larger
/// than [`MAX_IMAGE_SIDE`].
pub fn decode_for_viewer(name: &str, bytes: &[u8]) -> Result<RgbImage, String> {
    let img = dino_model::preprocess::decode_image(bytes).map_err(|e| format!("{name}: {e}"))?;
    Ok(if img.width().max(img.height()) > MAX_IMAGE_SIDE {
        let s = MAX_IMAGE_SIDE as f32 / img.width().max(img.height()) as f32;
        let (w, h) = (
            ((img.width() as f32 * s) as u32).max(1),
            ((img.height() as f32 * s) as u32).max(1),
        );
        image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle)
    } else {
        img
    })
}

/// Seconds from an arbitrary origin, on every platform.
pub fn web_time_now() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        js_sys::Date::now() / 1000.0
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::time::{SystemTime, UNIX_EPOCH};
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

/// Reads a checkpoint (ours, official .pth or Hugging Face safetensors) from bytes.
pub fn load_model(name: &str, bytes: &[u8], device: &Device) -> Result<LoadedModel, String> {
    load_model_with(name, bytes, None, device)
}

/// As [`load_model`], with the Hugging Face `config.json` that came with the weights.
pub fn load_model_with(
    name: &str,
    bytes: &[u8],
    hf_config: Option<&str>,
    device: &Device,
) -> Result<LoadedModel, String> {
    let options = dino_model::import::ImportOptions {
        hf_config: hf_config.map(str::to_string),
        // A wasm32 page addresses 4 GiB at most, and it holds the file, the f32 tensors and
        // the model at once: past 1 GiB of weights (ViT-L and up) the tab would die.
        max_weight_bytes: cfg!(target_arch = "wasm32").then_some(1 << 30),
        limit_reason: "the browser gives a page at most 4 GiB of WebAssembly memory, which must hold the file, its weights and the model at once; open it in the native viewer (cargo run -p dino-viewer)".into(),
        ..Default::default()
    };
    let imported = dino_model::import::import_with(bytes, &options)
        .map_err(|e| format!("{name}: not a usable checkpoint: {e}"))?;
    let model = imported
        .config
        .load(&imported.tensors, "", device)
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(LoadedModel {
        name: name.to_string(),
        config: imported.config,
        model: Some(Arc::new(model)),
    })
}
