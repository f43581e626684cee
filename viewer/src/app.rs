//! The viewer app: state, background jobs and one `*_ui` function per panel.

use std::hash::{Hash, Hasher};
use std::sync::mpsc::{Receiver, Sender, channel};

use burn::tensor::Device;
use egui::{Color32, RichText, TextureHandle, TextureOptions};
use image::RgbImage;

#[cfg(not(target_arch = "wasm32"))]
use crate::files::read_file;
use crate::files::{MAX_FILE_BYTES, too_large};
use crate::gpu_overlay::{OverlayCallback, OverlayInput};
use crate::infer::{Analysis, LoadedModel, Request, analyse, decode_for_viewer, load_model_with};
use crate::job::Job;
use crate::views::{Settings, View, export, overlay_inputs, render};

/// Input side of the quick first pass on a new image or block, before the chosen size.
pub const PREVIEW_PX: u32 = 224;

/// `px` rounded down to whole patches (at least one).
fn to_patch(px: u32, patch: usize) -> u32 {
    let p = patch as u32;
    (px / p).max(1) * p
}

/// The bundled samples (CC0 / public domain, see assets/samples/LICENSE.md): two held-out
/// synthetic scenes the demo model was never trained on, then three photos.
pub const SAMPLES: [(&str, &[u8]); 5] = [
    (
        "shapes-star.png",
        include_bytes!("../../assets/samples/shapes-star.png"),
    ),
    (
        "shapes-ring.png",
        include_bytes!("../../assets/samples/shapes-ring.png"),
    ),
    (
        "chelsea.jpg",
        include_bytes!("../../assets/samples/chelsea.jpg"),
    ),
    (
        "coffee.jpg",
        include_bytes!("../../assets/samples/coffee.jpg"),
    ),
    (
        "astronaut.jpg",
        include_bytes!("../../assets/samples/astronaut.jpg"),
    ),
];

/// How one tile of the central panel is drawn.
enum TileDraw {
    /// A CPU-drawn picture.
    Texture(TextureHandle),
    /// The overlay shader, with a key of the uploaded content.
    Shader(OverlayInput, u64),
}

/// The whole app state.
pub struct ViewerApp {
    device: Device,
    /// Name of the compute backend, shown in the status bar.
    pub backend: String,
    /// The loaded checkpoint.
    pub model: Option<LoadedModel>,
    /// Loaded images (name, pixels).
    pub images: Vec<(String, RgbImage)>,
    /// Index of the image shown.
    pub current: usize,
    /// Block whose attention is shown; `None` means the last.
    pub layer: Option<usize>,
    /// Square input side in pixels.
    pub resolution: u32,
    /// What the central panel shows.
    pub view: View,
    /// Threshold, opacity and queried patch.
    pub settings: Settings,
    /// The latest finished analysis.
    pub analysis: Option<Analysis>,
    /// The analysis in flight, if any.
    pub pending: Option<Request>,
    /// When it was requested (seconds, [`crate::infer::web_time_now`]).
    pending_since: f64,
    /// The last error, shown until dismissed; it does not hold back the next analysis.
    pub error: Option<String>,
    /// A Hugging Face `config.json` opened on its own (dropped with its weights, or before
    /// them): it goes with the next weights opened.
    hf_config: Option<String>,
    /// The request whose analysis failed, not retried until the settings or the model change
    /// (a failure that repeats itself must not loop).
    failed: Option<Request>,
    /// A one-line status.
    pub status: String,
    tiles: Vec<(String, TileDraw)>,
    /// Overlays are drawn by the WGSL shader inside egui's render pass (eframe on wgpu).
    pub gpu_overlay: bool,
    texture_key: Option<(Request, View, [u32; 3])>,
    tx: Sender<Job>,
    rx: Receiver<Job>,
    pub(crate) loading_model: bool,
    /// The compute worker of the web viewer, when one could be started.
    #[cfg(target_arch = "wasm32")]
    remote: Option<crate::worker::Remote>,
}

impl ViewerApp {
    /// An empty viewer computing on `device`, labelled `backend` in the UI.
    pub fn new(device: Device, backend: impl Into<String>) -> Self {
        let (tx, rx) = channel();
        Self {
            device,
            backend: backend.into(),
            model: None,
            images: Vec::new(),
            current: 0,
            layer: None,
            resolution: 480,
            view: View::Heads,
            settings: Settings { threshold: 0.6, alpha: 0.6, query: 0 },
            analysis: None,
            pending: None,
            pending_since: 0.0,
            error: None,
            hf_config: None,
            failed: None,
            status: "Drop a checkpoint (.safetensors or .pth) and images here, or use the buttons above.".into(),
            tiles: Vec::new(),
            gpu_overlay: false,
            texture_key: None,
            tx,
            rx,
            loading_model: false,
            #[cfg(target_arch = "wasm32")]
            remote: None,
        }
    }

    /// Moves decoding and inference into the web worker, keeping the page responsive.
    #[cfg(target_arch = "wasm32")]
    pub fn use_worker(&mut self, remote: crate::worker::Remote, backend: impl Into<String>) {
        self.remote = Some(remote);
        self.backend = backend.into();
    }

    /// Runs `work` off the UI thread (a thread natively, a task on the web) and repaints when done.
    pub fn spawn(&self, ctx: &egui::Context, work: impl FnOnce() -> Job + Send + 'static) {
        let (tx, ctx) = (self.tx.clone(), ctx.clone());
        let run = move || {
            // A panic in the work (a bug, or a reader meeting something unforeseen) must
            // not leave the app waiting for an answer forever.
            let job = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(
                |panic| {
                    let what = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("no message");
                    Job::Crashed(format!("the background work failed unexpectedly: {what}"))
                },
            );
            let _ = tx.send(job);
            ctx.request_repaint();
        };
        #[cfg(not(target_arch = "wasm32"))]
        std::thread::spawn(run);
        #[cfg(target_arch = "wasm32")]
        wasm_bindgen_futures::spawn_local(async move { run() });
    }

    /// A sender for jobs that complete elsewhere (web file reads and fetches).
    pub fn sender(&self) -> Sender<Job> {
        self.tx.clone()
    }

    /// Loads a checkpoint from bytes in the background.
    pub fn open_checkpoint(&mut self, ctx: &egui::Context, name: String, bytes: Vec<u8>) {
        self.open_checkpoint_with(ctx, name, bytes, None);
    }

    /// Loads a checkpoint with the Hugging Face `config.json` that came with it.
    pub fn open_checkpoint_with(
        &mut self,
        ctx: &egui::Context,
        name: String,
        bytes: Vec<u8>,
        config: Option<String>,
    ) {
        self.loading_model = true;
        self.status = format!("Loading checkpoint {name}…");
        #[cfg(target_arch = "wasm32")]
        if let Some(remote) = &self.remote {
            remote.load(&name, &bytes, config.as_deref());
            return;
        }
        let device = self.device.clone();
        self.spawn(ctx, move || {
            Job::Model(load_model_with(&name, &bytes, config.as_deref(), &device))
        });
    }

    /// Adds an image from bytes; errors are shown, the app keeps working.
    pub fn add_image(&mut self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let img = decode_for_viewer(name, bytes)?;
        self.push_image(name, img);
        Ok(())
    }

    fn push_image(&mut self, name: &str, img: RgbImage) {
        self.images.push((name.to_string(), img));
        self.current = self.images.len() - 1;
    }

    /// Routes a file to the image list or the checkpoint loader by its content.
    pub fn open_file(&mut self, ctx: &egui::Context, name: String, bytes: Vec<u8>) {
        if bytes.len() > MAX_FILE_BYTES {
            self.error = Some(too_large(&name, bytes.len() as u64));
        } else if image::guess_format(&bytes).is_ok() {
            #[cfg(target_arch = "wasm32")]
            if let Some(remote) = &self.remote {
                // A hostile file may take long to decode: never on the page's thread.
                remote.decode(&name, &bytes);
                return;
            }
            if let Err(e) = self.add_image(&name, &bytes) {
                self.error = Some(e);
            }
        } else if name.to_lowercase().ends_with(".json") {
            // Hub models come as weights plus config.json; the config alone is no model.
            match String::from_utf8(bytes) {
                Ok(text) => {
                    self.status = format!(
                        "{name} kept: it describes the next weights you open (model.safetensors)"
                    );
                    self.hf_config = Some(text);
                }
                Err(_) => self.error = Some(format!("{name}: not a UTF-8 JSON file")),
            }
        } else {
            let config = self.hf_config.take();
            self.open_checkpoint_with(ctx, name, bytes, config);
        }
    }

    /// The block shown.
    pub fn layer_index(&self) -> usize {
        let depth = self.model.as_ref().map_or(1, |m| m.config.vit.depth);
        self.layer.unwrap_or(depth - 1).min(depth - 1)
    }

    /// The request the current settings call for.
    pub fn wanted(&self) -> Option<Request> {
        let model = self.model.as_ref()?;
        if self.images.is_empty() {
            return None;
        }
        Some(Request {
            image: self.current.min(self.images.len() - 1),
            layer: self.layer_index(),
            resolution: to_patch(self.resolution, model.config.vit.patch_size),
        })
    }

    /// The request to run next: [`ViewerApp::wanted`], preceded by a [`PREVIEW_PX`] pass when
    /// nothing of this image and block is on screen yet. Attention costs the square of the
    /// tokens, so the preview arrives several times sooner on a CPU and is then refined.
    pub fn next_request(&self) -> Option<Request> {
        let want = self.wanted()?;
        let shown = self
            .analysis
            .as_ref()
            .is_some_and(|a| a.request.image == want.image && a.request.layer == want.layer);
        let preview = to_patch(PREVIEW_PX, self.model.as_ref()?.config.vit.patch_size);
        if shown || want.resolution <= preview {
            return Some(want);
        }
        Some(Request {
            resolution: preview,
            ..want
        })
    }

    fn handle(&mut self, ctx: &egui::Context, job: Job) {
        match job {
            Job::Backend(name, inner) => {
                self.backend = name;
                self.handle(ctx, *inner);
            }
            Job::Model(Ok(m)) => {
                self.status = format!(
                    "Loaded {}: {} /{} ({} blocks, {} heads)",
                    m.name,
                    m.config.vit.arch,
                    m.config.vit.patch_size,
                    m.config.vit.depth,
                    m.config.vit.num_heads
                );
                self.model = Some(m);
                self.layer = None;
                self.analysis = None;
                self.failed = None;
                self.loading_model = false;
            }
            Job::Model(Err(e)) => {
                #[cfg(target_arch = "wasm32")]
                crate::browser::set_state("error");
                self.error = Some(e);
                self.loading_model = false;
            }
            Job::File(name, Ok(bytes)) => self.open_file(ctx, name, bytes),
            Job::Checkpoint(name, bytes, config) => {
                self.open_checkpoint_with(ctx, name, bytes, config)
            }
            Job::Status(text) => self.status = text,
            Job::File(name, Err(e)) => self.error = Some(format!("{name}: {e}")),
            Job::Image(name, Ok(img)) => self.push_image(&name, img),
            Job::Image(_, Err(e)) => self.error = Some(e),
            Job::Crashed(e) => {
                #[cfg(target_arch = "wasm32")]
                crate::browser::set_state("error");
                self.failed = self.pending.take();
                self.loading_model = false;
                self.error = Some(e);
            }
            Job::WorkerFailed(e) => {
                // The weights died with the worker: start over on the page.
                #[cfg(target_arch = "wasm32")]
                {
                    self.remote = None;
                    crate::browser::set_state("error");
                }
                self.backend = crate::infer::wasm_cpu_backend("page thread");
                self.model = None;
                self.pending = None;
                self.loading_model = false;
                self.error = Some(e);
            }
            Job::Analysis(result) => {
                let request = self.pending.take();
                match result {
                    Ok(a) => {
                        // From the request to the maps being here: what a user waits.
                        let waited = crate::infer::web_time_now() - self.pending_since;
                        self.status = format!(
                            "{} heads of block {} at {}x{} px: network {:.2} s, {:.2} s in all, on {}",
                            a.heads,
                            a.request.layer,
                            a.display.width(),
                            a.display.height(),
                            a.seconds,
                            waited,
                            self.backend
                        );
                        #[cfg(target_arch = "wasm32")]
                        crate::browser::show_analysis(&crate::browser::Shown {
                            heads: a.heads,
                            resolution: a.request.resolution,
                            is_final: self.wanted().as_ref() == Some(&a.request),
                            network_secs: a.seconds,
                            waited_secs: waited,
                            backend: &self.backend,
                        });
                        self.analysis = Some(a);
                    }
                    Err(e) => {
                        self.failed = request;
                        self.error = Some(e);
                    }
                }
            }
        }
    }

    fn poll(&mut self, ctx: &egui::Context) {
        while let Ok(job) = self.rx.try_recv() {
            self.handle(ctx, job);
        }
        // Start the analysis the settings call for when nothing is running.
        if let Some(want) = self.next_request() {
            let have = self.analysis.as_ref().map(|a| &a.request);
            if self.pending.is_none() && have != Some(&want) && self.failed.as_ref() != Some(&want)
            {
                self.pending = Some(want.clone());
                self.pending_since = crate::infer::web_time_now();
                if let Some(net) = self.model.as_ref().and_then(|m| m.model.clone()) {
                    let (img, device) = (self.images[want.image].1.clone(), self.device.clone());
                    self.spawn(ctx, move || {
                        Job::Analysis(analyse(&net, &img, want, &device))
                    });
                } else {
                    // The weights live in the web worker.
                    #[cfg(target_arch = "wasm32")]
                    if let Some(remote) = &self.remote {
                        remote.analyse(&self.images[want.image].1, &want);
                    }
                }
            }
        }
    }

    fn top_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal_wrapped(|ui| {
            ui.heading("dinoscope");
            if ui.button("Open checkpoint…").clicked() {
                self.pick_files(ui.ctx());
            }
            if ui.button("Add images…").clicked() {
                self.pick_files(ui.ctx());
            }
            ui.separator();
            ui.label("Samples:");
            for (name, bytes) in SAMPLES {
                let label = name.trim_end_matches(".jpg").trim_end_matches(".png");
                if ui.button(label).clicked()
                    && let Err(e) = self.add_image(name, bytes)
                {
                    self.error = Some(e);
                }
            }
            ui.separator();
            ui.label(RichText::new(format!("backend: {}", self.backend)).weak());
            let overlay = if self.gpu_overlay {
                "overlays: WGSL shader"
            } else {
                "overlays: CPU"
            };
            ui.label(RichText::new(overlay).weak());
        });
    }

    fn pick_files(&mut self, ctx: &egui::Context) {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let files = rfd::FileDialog::new()
                .add_filter(
                    "checkpoints and images",
                    &[
                        "safetensors",
                        "pth",
                        "pt",
                        "json",
                        "png",
                        "jpg",
                        "jpeg",
                        "webp",
                        "bmp",
                    ],
                )
                .pick_files()
                .unwrap_or_default();
            let mut files = files;
            files.sort_by_key(|f| !f.to_string_lossy().to_lowercase().ends_with(".json"));
            for f in files {
                let name = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                match read_file(&f) {
                    Ok(bytes) => self.open_file(ctx, name, bytes),
                    Err(e) => self.error = Some(e),
                }
            }
        }
        #[cfg(target_arch = "wasm32")]
        {
            let (tx, ctx) = (self.sender(), ctx.clone());
            wasm_bindgen_futures::spawn_local(async move {
                let mut files = rfd::AsyncFileDialog::new()
                    .pick_files()
                    .await
                    .unwrap_or_default();
                // A config.json picked with its weights must arrive before them.
                files.sort_by_key(|f| !f.file_name().to_lowercase().ends_with(".json"));
                for f in files {
                    // The picker reads the file whole; `open_file` refuses it if too large.
                    let bytes = f.read().await;
                    let _ = tx.send(Job::File(f.file_name(), Ok(bytes)));
                }
                ctx.request_repaint();
            });
        }
    }

    fn side_ui(&mut self, ui: &mut egui::Ui) {
        ui.heading("Images");
        if self.images.is_empty() {
            ui.label("None yet: drop photos here or pick a sample above.");
        }
        for (i, (name, _)) in self.images.iter().enumerate() {
            if ui.selectable_label(i == self.current, name).clicked() {
                self.current = i;
            }
        }
        ui.separator();
        ui.heading("Model");
        match &self.model {
            Some(m) => {
                ui.label(format!(
                    "{}\n{}\ndim {}, {} blocks × {} heads",
                    m.name,
                    m.config.vit.describe(),
                    m.config.vit.embed_dim,
                    m.config.vit.depth,
                    m.config.vit.num_heads
                ));
                let depth = m.config.vit.depth;
                let patch = m.config.vit.patch_size as u32;
                let mut layer = self.layer_index();
                if ui
                    .add(egui::Slider::new(&mut layer, 0..=depth - 1).text("layer"))
                    .changed()
                {
                    self.layer = Some(layer);
                }
                egui::ComboBox::from_label("input size")
                    .selected_text(format!("{} px", self.resolution))
                    .show_ui(ui, |ui| {
                        // Multiples of the patch; the size the weights were trained at (518
                        // for DINOv2) is offered too.
                        let native = m.config.vit.img_size as u32;
                        let mut targets = vec![224u32, 320, 480, 640, 800];
                        if !targets.contains(&native) {
                            targets.push(native);
                            targets.sort_unstable();
                        }
                        for target in targets {
                            let px = (target / patch).max(1) * patch;
                            let label = if target == 480 {
                                format!("{px} px (official script)")
                            } else if target == native && native != 224 {
                                format!("{px} px (trained size)")
                            } else {
                                format!("{px} px")
                            };
                            ui.selectable_value(&mut self.resolution, px, label);
                        }
                    });
            }
            None if self.loading_model => {
                ui.spinner();
            }
            None => {
                ui.label("No checkpoint loaded.");
            }
        }
        self.hub_ui(ui);
        ui.separator();
        ui.heading("View");
        let registers = self
            .model
            .as_ref()
            .map_or(0, |m| m.config.vit.num_register_tokens);
        for v in View::ALL.into_iter().filter(|v| v.applies(registers)) {
            ui.radio_value(&mut self.view, v, v.label());
        }
        ui.add(egui::Slider::new(&mut self.settings.threshold, 0.05..=0.95).text("mass threshold"));
        ui.add(egui::Slider::new(&mut self.settings.alpha, 0.0..=1.0).text("opacity"));
        if self.analysis.is_some() && ui.button("Export PNG").clicked() {
            self.export_png();
        }
    }

    /// The official releases on the Hugging Face Hub: fetched by the web viewer (and kept in
    /// the browser's cache for the next visit), links to download by hand otherwise.
    fn hub_ui(&mut self, ui: &mut egui::Ui) {
        use dino_model::import::hub::HUB_MODELS;
        egui::CollapsingHeader::new("Models on the Hugging Face Hub")
            .default_open(false)
            .show(ui, |ui| {
                for m in HUB_MODELS {
                    let label = format!("{} ({} MB)", m.label, m.megabytes);
                    #[cfg(target_arch = "wasm32")]
                    if !m.gated {
                        if ui.button(label).on_hover_text(m.repo).clicked() && !self.loading_model {
                            self.loading_model = true;
                            crate::browser::open_hub_model(m.repo, self.sender(), ui.ctx().clone());
                        }
                        continue;
                    }
                    let why = if m.gated {
                        "licence on the Hub: accept it, download, drop the file here"
                    } else {
                        "download, then drop the file here"
                    };
                    ui.hyperlink_to(format!("{label}: {why}"), m.page());
                }
            });
    }

    fn export_png(&mut self) {
        let Some(a) = &self.analysis else { return };
        let img = export(a, self.view, &self.settings);
        let mut bytes = Vec::new();
        if let Err(e) = img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        ) {
            self.error = Some(format!("encoding PNG: {e}"));
            return;
        }
        let name = format!(
            "dinoscope-{}.png",
            self.view.label().to_lowercase().replace(' ', "-")
        );
        #[cfg(not(target_arch = "wasm32"))]
        {
            if let Some(path) = rfd::FileDialog::new().set_file_name(&name).save_file() {
                match std::fs::write(&path, &bytes) {
                    Ok(()) => self.status = format!("Saved {}", path.display()),
                    Err(e) => self.error = Some(format!("{}: {e}", path.display())),
                }
            }
        }
        #[cfg(target_arch = "wasm32")]
        if let Err(e) = crate::browser::download(&name, &bytes) {
            self.error = Some(e);
        }
    }

    fn refresh_textures(&mut self, ctx: &egui::Context) {
        let Some(a) = &self.analysis else {
            self.tiles.clear();
            return;
        };
        let key = (
            a.request.clone(),
            self.view,
            [
                self.settings.threshold.to_bits(),
                self.settings.alpha.to_bits(),
                self.settings.query as u32,
            ],
        );
        if self.texture_key.as_ref() == Some(&key) {
            return;
        }
        let shader_tiles = if self.gpu_overlay {
            overlay_inputs(a, self.view, &self.settings)
        } else {
            None
        };
        self.tiles = match shader_tiles {
            Some(tiles) => tiles
                .into_iter()
                .enumerate()
                .map(|(i, (caption, input))| {
                    // The opacity is a uniform: only what is uploaded goes into the key.
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    (&key.0, key.1, key.2[0], i).hash(&mut h);
                    (caption, TileDraw::Shader(input, h.finish()))
                })
                .collect(),
            None => render(a, self.view, &self.settings)
                .into_iter()
                .map(|(caption, img)| {
                    let color = egui::ColorImage::from_rgb(
                        [img.width() as usize, img.height() as usize],
                        img.as_raw(),
                    );
                    let tex = ctx.load_texture(caption.clone(), color, TextureOptions::NEAREST);
                    (caption, TileDraw::Texture(tex))
                })
                .collect(),
        };
        self.texture_key = Some(key);
        // What the canvas shows, in words, for tests and scripts (the canvas has no DOM).
        #[cfg(target_arch = "wasm32")]
        {
            let captions: Vec<&str> = self.tiles.iter().map(|(c, _)| c.as_str()).collect();
            crate::browser::set_body_attribute("data-tiles", &captions.join("|"));
        }
    }

    fn central_ui(&mut self, ui: &mut egui::Ui) {
        if let Some(e) = self.error.clone() {
            ui.horizontal(|ui| {
                ui.label(
                    RichText::new(format!("Error: {e}")).color(Color32::from_rgb(220, 60, 60)),
                );
                if ui.button("Dismiss").clicked() {
                    self.error = None;
                }
            });
        }
        ui.label(&self.status);
        if self.pending.is_some() {
            // A clock at 4 Hz, not egui's spinner: that repaints every frame, and on a CPU
            // without GPU compositing (a classroom PC, headless Chromium) drawing the page 60
            // times a second takes a core from the network it is waiting for.
            let waited = crate::infer::web_time_now() - self.pending_since;
            ui.label(format!(
                "Computing attention on {}… {waited:.1} s",
                self.backend
            ));
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_millis(250));
        }
        if self.view == View::PatchQuery {
            ui.label("Click a patch of the image to see where it attends.");
        }
        self.refresh_textures(ui.ctx());
        let Some(a) = &self.analysis else { return };
        let (grid_w, grid_h) = (a.grid_w, a.grid_h);
        let avail = ui.available_width();
        let n = self.tiles.len().max(1);
        let cols = if n <= 2 { n } else { 3.min(n) };
        let side = ((avail - 12.0 * cols as f32) / cols as f32).clamp(96.0, 512.0);
        let size = egui::vec2(
            side,
            side * a.display.height() as f32 / a.display.width() as f32,
        );
        let mut clicked_patch = None;
        egui::ScrollArea::vertical().show(ui, |ui| {
            egui::Grid::new("tiles").spacing([8.0, 8.0]).show(ui, |ui| {
                for (i, (caption, draw)) in self.tiles.iter().enumerate() {
                    ui.vertical(|ui| {
                        ui.label(caption);
                        let resp = match draw {
                            TileDraw::Texture(tex) => ui.add(
                                egui::Image::new(tex)
                                    .fit_to_exact_size(size)
                                    .sense(egui::Sense::click()),
                            ),
                            TileDraw::Shader(input, content) => {
                                let (rect, resp) =
                                    ui.allocate_exact_size(size, egui::Sense::click());
                                ui.painter()
                                    .add(eframe::egui_wgpu::Callback::new_paint_callback(
                                        rect,
                                        OverlayCallback {
                                            slot: i,
                                            content: *content,
                                            input: input.clone(),
                                        },
                                    ));
                                resp
                            }
                        };
                        if resp.clicked()
                            && let Some(pos) = resp.interact_pointer_pos()
                        {
                            let rel = (pos - resp.rect.min) / resp.rect.size();
                            let (px, py) = (
                                (rel.x * grid_w as f32) as usize,
                                (rel.y * grid_h as f32) as usize,
                            );
                            clicked_patch = Some(py.min(grid_h - 1) * grid_w + px.min(grid_w - 1));
                        }
                    });
                    if (i + 1) % cols == 0 {
                        ui.end_row();
                    }
                }
            });
        });
        if let Some(q) = clicked_patch
            && (self.view == View::PatchQuery || self.view == View::Heads)
        {
            self.settings.query = q;
            self.view = View::PatchQuery;
        }
    }

    fn handle_drops(&mut self, ctx: &egui::Context) {
        let mut dropped = ctx.input(|i| i.raw.dropped_files.clone());
        // A config.json dropped with its weights must be read before them.
        dropped.sort_by_key(|f| !f.path().to_string_lossy().to_lowercase().ends_with(".json"));
        for file in dropped {
            let name = file
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "dropped file".into());
            #[cfg(not(target_arch = "wasm32"))]
            match read_file(file.path()) {
                Ok(bytes) => self.open_file(ctx, name, bytes),
                Err(e) => self.error = Some(e),
            }
            #[cfg(target_arch = "wasm32")]
            {
                // The browser says the size before anything is read.
                if let Some(size) = file.web_file().map(|f| f.size() as u64)
                    && size > MAX_FILE_BYTES as u64
                {
                    self.error = Some(too_large(&name, size));
                    continue;
                }
                let (tx, ctx) = (self.sender(), ctx.clone());
                wasm_bindgen_futures::spawn_local(async move {
                    let bytes = file.bytes_async().await;
                    let _ = tx.send(Job::File(name, bytes));
                    ctx.request_repaint();
                });
            }
        }
    }
}

impl eframe::App for ViewerApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.handle_drops(&ctx);
        self.poll(&ctx);
        egui::Panel::top("top").show(ui, |ui| self.top_ui(ui));
        egui::Panel::left("side")
            .default_size(260.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| self.side_ui(ui));
            });
        egui::CentralPanel::default().show(ui, |ui| self.central_ui(ui));
    }
}
