//! Backend selection: `--device auto|wgpu|vulkan|cpu`, decided at run time.

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor};
use clap::ValueEnum;

/// Where tensors live.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A hardware GPU through wgpu (discrete first, then integrated), else the CPU backend;
    /// software adapters (lavapipe, WARP) are passed over, the CPU backend outruns them.
    #[default]
    Auto,
    /// burn's wgpu backend on the default adapter (Vulkan, Metal or DX12), software ones
    /// included.
    Wgpu,
    /// burn's wgpu backend pinned to Vulkan with the SPIR-V compiler (build feature `vulkan`).
    Vulkan,
    /// burn's pure-Rust CPU backend (flex).
    Cpu,
}

/// A ready device and a human-readable name for logs and progress bars.
pub struct Selected {
    /// The burn device.
    pub device: Device,
    /// What it is, e.g. "wgpu (default adapter)" or "cpu (flex)".
    pub name: String,
    /// Whether it is the CPU backend (a plan's estimate assumes another peak speed).
    pub on_cpu: bool,
}

#[cfg(feature = "wgpu")]
fn probe(device: &Device) -> bool {
    // Adapter creation panics inside burn when no adapter exists; probe once, quietly.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let d = device.clone();
    let ok = std::panic::catch_unwind(move || Tensor::<1>::zeros([1], &d).into_data()).is_ok();
    std::panic::set_hook(hook);
    ok
}

/// Resolves the user's choice to a working device, or explains why it cannot.
pub fn select(choice: DeviceChoice) -> Result<Selected> {
    select_for_rank(choice, 0)
}

/// [`select`] for the `local_rank`-th process of a machine: `auto` gives it the
/// `local_rank`-th hardware GPU of the kind it picks (round robin when there are fewer GPUs
/// than processes), as `torch.cuda.set_device(args.gpu)` does.
pub fn select_for_rank(choice: DeviceChoice, local_rank: usize) -> Result<Selected> {
    let cpu = || Selected {
        device: Device::flex(),
        name: "cpu (flex)".into(),
        on_cpu: true,
    };
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        #[cfg(feature = "wgpu")]
        DeviceChoice::Auto => {
            use burn::tensor::DeviceKind;
            use dino_model::gpu::GpuKind;
            // Only kinds wgpu lists are tried: asking burn for a missing one panics on its
            // device runner thread, which logs a warning even when the panic is caught.
            let gpus = dino_model::gpu::hardware_gpus();
            for (want, kind, name) in [
                (
                    GpuKind::Discrete,
                    DeviceKind::DiscreteGpu(0),
                    "wgpu (discrete GPU)",
                ),
                (
                    GpuKind::Integrated,
                    DeviceKind::IntegratedGpu(0),
                    "wgpu (integrated GPU)",
                ),
            ] {
                let of_kind: Vec<&String> = gpus
                    .iter()
                    .filter(|(k, _)| *k == want)
                    .map(|(_, a)| a)
                    .collect();
                if of_kind.is_empty() {
                    continue;
                }
                let index = local_rank % of_kind.len();
                let kind = match kind {
                    DeviceKind::DiscreteGpu(_) => DeviceKind::DiscreteGpu(index),
                    _ => DeviceKind::IntegratedGpu(index),
                };
                let device = Device::wgpu(kind);
                if probe(&device) {
                    let which = if of_kind.len() > 1 {
                        format!(" #{index}")
                    } else {
                        String::new()
                    };
                    return Ok(Selected {
                        device,
                        name: format!("{name}{which}: {}", of_kind[index]),
                        on_cpu: false,
                    });
                }
            }
            log::info!(
                "no hardware GPU adapter found; training on the CPU backend (--device wgpu would take a software adapter such as lavapipe, which is slower)"
            );
            Ok(cpu())
        }
        #[cfg(feature = "wgpu")]
        DeviceChoice::Wgpu => {
            let device = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
            if probe(&device) {
                Ok(Selected {
                    device,
                    name: "wgpu (default adapter)".into(),
                    on_cpu: false,
                })
            } else {
                bail!(
                    "no usable wgpu adapter was found; install a Vulkan/Metal/DX12 driver or use --device cpu"
                )
            }
        }
        #[cfg(not(feature = "wgpu"))]
        DeviceChoice::Auto => Ok(cpu()),
        #[cfg(not(feature = "wgpu"))]
        DeviceChoice::Wgpu => bail!(
            "this build has no wgpu backend; rebuild with --features wgpu or use --device cpu"
        ),
        #[cfg(feature = "vulkan")]
        DeviceChoice::Vulkan => {
            let device = Device::vulkan(burn::tensor::DeviceKind::DefaultDevice);
            if probe(&device) {
                Ok(Selected {
                    device,
                    name: "vulkan (SPIR-V)".into(),
                    on_cpu: false,
                })
            } else {
                bail!("no usable Vulkan adapter was found; use --device wgpu or --device cpu")
            }
        }
        #[cfg(not(feature = "vulkan"))]
        DeviceChoice::Vulkan => {
            bail!(
                "this build has no SPIR-V Vulkan backend; rebuild with `--features vulkan` or use --device wgpu"
            )
        }
    }
}
