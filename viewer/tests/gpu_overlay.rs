//! The overlay shader draws the same pixels as its CPU twin: `attention_overlay.wgsl` runs in
//! a real wgpu render pass (lavapipe in CI, Mesa's CPU Vulkan driver), the picture is read
//! back and compared pixel by pixel with `OverlayInput::to_image`.
//!
//! Needs a Vulkan/Metal/DX12 adapter; `scripts/setup-tests.sh` installs lavapipe. Set
//! `DINOSCOPE_SKIP_WGPU_TEST=1` to skip explicitly on a machine without any adapter.

use std::sync::Arc;

use dino_viewer::gpu_overlay::{OverlayInput, OverlayRenderer};
use eframe::wgpu;

fn render(device: &wgpu::Device, queue: &wgpu::Queue, input: &OverlayInput) -> image::RgbaImage {
    let (w, h) = input.image.dimensions();
    let format = wgpu::TextureFormat::Rgba8Unorm;
    let mut renderer = OverlayRenderer::new(device, format);
    renderer.prepare(device, queue, 0, 1, input);
    let target = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("target"),
        size: wgpu::Extent3d {
            width: w,
            height: h,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[],
    });
    let view = target.create_view(&Default::default());
    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: (w * h * 4) as u64,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("overlay"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view: &view,
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                    store: wgpu::StoreOp::Store,
                },
            })],
            depth_stencil_attachment: None,
            timestamp_writes: None,
            occlusion_query_set: None,
            multiview_mask: None,
        });
        renderer.paint(&mut pass, 0);
    }
    encoder.copy_texture_to_buffer(
        target.as_image_copy(),
        wgpu::TexelCopyBufferInfo {
            buffer: &readback,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(w * 4),
                rows_per_image: Some(h),
            },
        },
        target.size(),
    );
    queue.submit([encoder.finish()]);
    let slice = readback.slice(..);
    slice.map_async(wgpu::MapMode::Read, |r| {
        r.expect("mapping the readback buffer")
    });
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("waiting for the GPU");
    let bytes = slice
        .get_mapped_range()
        .expect("reading the mapped buffer")
        .to_vec();
    image::RgbaImage::from_raw(w, h, bytes).unwrap()
}

#[test]
fn shader_overlay_matches_the_cpu_twin() {
    if std::env::var("DINOSCOPE_SKIP_WGPU_TEST").is_ok_and(|v| v == "1") {
        println!("skipped on request (DINOSCOPE_SKIP_WGPU_TEST=1)");
        return;
    }
    let instance = wgpu::Instance::default();
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        force_fallback_adapter: false,
        ..Default::default()
    }))
    .expect("no wgpu adapter: install Mesa's lavapipe (mesa-vulkan-drivers) or set DINOSCOPE_SKIP_WGPU_TEST=1");
    println!("adapter: {:?}", adapter.get_info());
    let (device, queue) =
        pollster::block_on(adapter.request_device(&Default::default())).expect("a wgpu device");

    // 8 x 4 patches of 8 px (a 64 x 32 image; 256-byte rows for the readback).
    let (gw, gh, patch) = (8usize, 4usize, 8u32);
    let image = Arc::new(image::RgbImage::from_fn(
        gw as u32 * patch,
        gh as u32 * patch,
        |x, y| image::Rgb([(x * 4) as u8, (y * 8) as u8, ((x + y) * 3) as u8]),
    ));
    let ramp: Vec<f32> = (0..gw * gh)
        .map(|k| k as f32 / (gw * gh - 1) as f32)
        .collect();
    let mask: Vec<f32> = (0..gw * gh)
        .map(|k| ((k * 7) % 3 == 0) as u8 as f32)
        .collect();
    for (values, alpha, mask_mode) in [(ramp, 0.6, false), (mask, 0.75, true)] {
        let input = OverlayInput {
            image: image.clone(),
            values: Arc::new(values),
            grid_h: gh,
            grid_w: gw,
            alpha,
            mask_mode,
        };
        let gpu = render(&device, &queue, &input);
        let cpu = input.to_image();
        let mut worst = 0i32;
        for (g, c) in gpu.pixels().zip(cpu.pixels()) {
            for ch in 0..3 {
                worst = worst.max((g.0[ch] as i32 - c.0[ch] as i32).abs());
            }
        }
        println!("mask_mode {mask_mode}: largest channel difference {worst}");
        assert!(worst <= 2, "shader and CPU twin differ by {worst} levels");
    }
}
