//! Draws attention overlays with the WGSL shader of `dino-shaders` inside egui's own render
//! pass (an egui-wgpu paint callback), so changing the opacity or the head is a uniform
//! write instead of a CPU re-render. The CPU twin (`dino_shaders::images::overlay`) draws the
//! same pixels for exports, tests and renderers without wgpu.

use std::collections::HashMap;
use std::sync::Arc;

use eframe::egui_wgpu::{self, wgpu};
use image::RgbImage;

/// What one overlay tile shows: the image, a patch-grid map (already scaled to `[0, 1]`, or
/// 0/1 for masks) and the blend parameters of the shader.
#[derive(Clone)]
pub struct OverlayInput {
    /// The picture under the map.
    pub image: Arc<RgbImage>,
    /// Row-major `[grid_h, grid_w]` values in `[0, 1]`.
    pub values: Arc<Vec<f32>>,
    /// Patch grid rows.
    pub grid_h: usize,
    /// Patch grid columns.
    pub grid_w: usize,
    /// Weight of the colormap (heat maps) or dimming (masks).
    pub alpha: f32,
    /// Masks: dim outside instead of colouring.
    pub mask_mode: bool,
}

impl OverlayInput {
    /// The same tile drawn by the CPU twin of the shader.
    pub fn to_image(&self) -> RgbImage {
        let patch = self.image.width() as usize / self.grid_w;
        dino_shaders::images::overlay(
            &self.image,
            &self.values,
            self.grid_h,
            self.grid_w,
            patch,
            self.alpha,
            self.mask_mode,
        )
    }
}

struct Tile {
    /// Identifies the uploaded image and values; the alpha lives in the uniform.
    content: u64,
    bind_group: wgpu::BindGroup,
    uniform: wgpu::Buffer,
}

/// The render pipeline of `attention_overlay.wgsl` and the GPU state of each tile slot.
pub struct OverlayRenderer {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
    sampler: wgpu::Sampler,
    tiles: HashMap<usize, Tile>,
}

fn texture_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::FRAGMENT,
        // The attention map is f32; f32 textures are not filterable everywhere, and the
        // maps are drawn patch-sharp anyway.
        ty: wgpu::BindingType::Texture {
            sample_type: wgpu::TextureSampleType::Float { filterable: false },
            view_dimension: wgpu::TextureViewDimension::D2,
            multisampled: false,
        },
        count: None,
    }
}

impl OverlayRenderer {
    /// Builds the pipeline for render targets of `format`.
    pub fn new(device: &wgpu::Device, format: wgpu::TextureFormat) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("attention_overlay.wgsl"),
            source: wgpu::ShaderSource::Wgsl(dino_shaders::ATTENTION_OVERLAY_WGSL.into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("attention overlay"),
            entries: &[
                texture_entry(0),
                texture_entry(1),
                wgpu::BindGroupLayoutEntry {
                    binding: 2,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::NonFiltering),
                    count: None,
                },
                wgpu::BindGroupLayoutEntry {
                    binding: 3,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("attention overlay"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("attention overlay"),
            layout: Some(&pipeline_layout),
            vertex: wgpu::VertexState {
                module: &module,
                entry_point: Some("vs_main"),
                compilation_options: Default::default(),
                buffers: &[],
            },
            fragment: Some(wgpu::FragmentState {
                module: &module,
                entry_point: Some("fs_main"),
                compilation_options: Default::default(),
                targets: &[Some(format.into())],
            }),
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            multiview_mask: None,
            cache: None,
        });
        let sampler = device.create_sampler(&wgpu::SamplerDescriptor {
            label: Some("attention overlay"),
            mag_filter: wgpu::FilterMode::Nearest,
            min_filter: wgpu::FilterMode::Nearest,
            ..Default::default()
        });
        Self {
            pipeline,
            layout,
            sampler,
            tiles: HashMap::new(),
        }
    }

    fn upload(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        label: &str,
        size: (u32, u32),
        format: wgpu::TextureFormat,
        bytes: &[u8],
    ) -> wgpu::TextureView {
        let texture = device.create_texture(&wgpu::TextureDescriptor {
            label: Some(label),
            size: wgpu::Extent3d {
                width: size.0,
                height: size.1,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        let texel = bytes.len() as u32 / (size.0 * size.1);
        queue.write_texture(
            texture.as_image_copy(),
            bytes,
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(size.0 * texel),
                rows_per_image: Some(size.1),
            },
            texture.size(),
        );
        texture.create_view(&Default::default())
    }

    /// Makes slot `slot` show `input` (uploading textures only when `content` changed).
    pub fn prepare(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        slot: usize,
        content: u64,
        input: &OverlayInput,
    ) {
        let params: [f32; 4] = [
            input.alpha,
            if input.mask_mode { 1.0 } else { 0.0 },
            0.0,
            0.0,
        ];
        let params_bytes: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
        if self.tiles.get(&slot).is_none_or(|t| t.content != content) {
            let rgba: Vec<u8> = input
                .image
                .pixels()
                .flat_map(|p| [p.0[0], p.0[1], p.0[2], 255])
                .collect();
            let image = Self::upload(
                device,
                queue,
                "overlay image",
                input.image.dimensions(),
                wgpu::TextureFormat::Rgba8Unorm,
                &rgba,
            );
            let values: Vec<u8> = input.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let attention = Self::upload(
                device,
                queue,
                "overlay values",
                (input.grid_w as u32, input.grid_h as u32),
                wgpu::TextureFormat::R32Float,
                &values,
            );
            let uniform = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("overlay params"),
                size: 16,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("overlay tile"),
                layout: &self.layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::TextureView(&image),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: wgpu::BindingResource::TextureView(&attention),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: wgpu::BindingResource::Sampler(&self.sampler),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: uniform.as_entire_binding(),
                    },
                ],
            });
            self.tiles.insert(
                slot,
                Tile {
                    content,
                    bind_group,
                    uniform,
                },
            );
        }
        if let Some(tile) = self.tiles.get(&slot) {
            queue.write_buffer(&tile.uniform, 0, &params_bytes);
        }
    }

    /// Draws slot `slot` over the whole viewport of `pass`.
    pub fn paint(&self, pass: &mut wgpu::RenderPass<'_>, slot: usize) {
        if let Some(tile) = self.tiles.get(&slot) {
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &tile.bind_group, &[]);
            pass.draw(0..3, 0..1);
        }
    }
}

/// One tile drawn by the shader inside egui's frame.
pub struct OverlayCallback {
    /// Which tile slot (position in the grid) this is.
    pub slot: usize,
    /// Changes whenever the image or values change.
    pub content: u64,
    /// What to draw.
    pub input: OverlayInput,
}

impl egui_wgpu::CallbackTrait for OverlayCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen: &egui_wgpu::ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        if let Some(r) = resources.get_mut::<OverlayRenderer>() {
            r.prepare(device, queue, self.slot, self.content, &self.input);
        }
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        if let Some(r) = resources.get::<OverlayRenderer>() {
            r.paint(pass, self.slot);
        }
    }
}

/// Installs the overlay pipeline into eframe's wgpu renderer; false when eframe renders
/// without wgpu (the app then shows CPU-drawn textures).
pub fn install(cc: &eframe::CreationContext<'_>) -> bool {
    let Some(state) = cc.wgpu_render_state.as_ref() else {
        return false;
    };
    let renderer = OverlayRenderer::new(&state.device, state.target_format);
    state.renderer.write().callback_resources.insert(renderer);
    true
}
