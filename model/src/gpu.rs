//! Which hardware GPUs this machine has, asked of wgpu before any burn device exists.
//!
//! burn creates a device on a runner thread that panics when no adapter of the requested kind
//! exists, and the runner logs that panic as a warning however the caller catches it. Asking
//! wgpu for the adapters first lets `--device auto` (trainer and viewer) pass over kinds the
//! machine lacks without ever starting such a runner.

/// A hardware adapter kind burn's wgpu backend can address as `DeviceKind::…Gpu(0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuKind {
    /// A discrete GPU.
    Discrete,
    /// A GPU integrated with the CPU.
    Integrated,
}

/// The hardware GPUs wgpu finds on the primary backends (Vulkan, Metal, DX12), with their
/// names, in enumeration order; software adapters (lavapipe, WARP) are left out.
pub fn hardware_gpus() -> Vec<(GpuKind, String)> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY))
        .iter()
        .filter_map(|adapter| {
            let info = adapter.get_info();
            let kind = match info.device_type {
                wgpu::DeviceType::DiscreteGpu => GpuKind::Discrete,
                wgpu::DeviceType::IntegratedGpu => GpuKind::Integrated,
                _ => return None,
            };
            Some((kind, info.name))
        })
        .collect()
}

/// Native wgpu resolves adapter enumeration synchronously; poll until it does.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_adapters_are_not_hardware_gpus() {
        // This machine (and CI) has lavapipe at most: it must never be listed as a GPU.
        for (kind, name) in hardware_gpus() {
            assert!(
                !name.to_lowercase().contains("llvmpipe"),
                "{name} listed as {kind:?}"
            );
        }
    }
}
