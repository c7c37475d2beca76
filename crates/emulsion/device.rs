//! Choosing the backend for a device, among those compiled into this binary.

use anyhow::{bail, Result};
use emulsion_train::config::DeviceChoice;

/// A backend compiled into this binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Burn's Flex: the CPU backend, always built.
    Flex,
    #[cfg(feature = "ndarray")]
    NdArray,
    #[cfg(feature = "wgpu")]
    Wgpu,
    #[cfg(feature = "cuda")]
    Cuda,
}

impl Backend {
    pub fn describe(self) -> &'static str {
        match self {
            Backend::Flex => "cpu (Burn Flex)",
            #[cfg(feature = "ndarray")]
            Backend::NdArray => "cpu (Burn ndarray)",
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => "wgpu",
            #[cfg(feature = "cuda")]
            Backend::Cuda => "cuda",
        }
    }
}

/// Runs `$body` with the type alias `$B` set to the inner (non-autodiff) Burn backend.
#[macro_export]
macro_rules! on_backend {
    ($backend:expr, $B:ident => $body:expr) => {
        match $backend {
            $crate::device::Backend::Flex => {
                type $B = burn::backend::Flex;
                $body
            }
            #[cfg(feature = "ndarray")]
            $crate::device::Backend::NdArray => {
                type $B = burn::backend::NdArray<f32>;
                $body
            }
            #[cfg(feature = "wgpu")]
            $crate::device::Backend::Wgpu => {
                type $B = burn::backend::Wgpu;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::device::Backend::Cuda => {
                type $B = burn::backend::Cuda;
                $body
            }
        }
    };
}

/// Device memory reserved by the backend's allocator on the default device, in MiB; `None` for
/// the CPU backends, which do not report it.
pub fn memory_mib(backend: Backend) -> Option<f64> {
    match backend {
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => reserved_mib::<cubecl::wgpu::WgpuRuntime>(),
        #[cfg(feature = "cuda")]
        Backend::Cuda => reserved_mib::<cubecl::cuda::CudaRuntime>(),
        _ => None,
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn reserved_mib<R: cubecl::Runtime>() -> Option<f64> {
    let usage = R::client(&Default::default()).memory_usage().ok()?;
    Some(usage.bytes_reserved as f64 / (1024.0 * 1024.0))
}

/// The backend for `choice`; `auto` prefers CUDA, then a WGPU GPU, then the CPU.
pub fn resolve(choice: DeviceChoice) -> Result<Backend> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if matches!(choice, DeviceChoice::Wgpu | DeviceChoice::Cuda | DeviceChoice::Auto) {
        crate::kernel_cache::activate()?;
    }
    match choice {
        DeviceChoice::Cpu => Ok(Backend::Flex),
        DeviceChoice::Ndarray => {
            #[cfg(feature = "ndarray")]
            return Ok(Backend::NdArray);
            #[cfg(not(feature = "ndarray"))]
            bail!(not_built("ndarray"));
        }
        DeviceChoice::Wgpu => {
            #[cfg(feature = "wgpu")]
            {
                match wgpu_adapter() {
                    Some(WgpuAdapter::Gpu(name)) => eprintln!("wgpu adapter: {name}"),
                    Some(WgpuAdapter::Cpu(name)) => eprintln!(
                        "wgpu adapter: {name}, a software renderer: expect it to be much slower than --device cpu"
                    ),
                    None => bail!("--device wgpu: no WGPU adapter found (install a Vulkan driver, e.g. mesa-vulkan-drivers)"),
                }
                return Ok(Backend::Wgpu);
            }
            #[cfg(not(feature = "wgpu"))]
            bail!(not_built("wgpu"));
        }
        DeviceChoice::Cuda => {
            #[cfg(feature = "cuda")]
            {
                if !cuda_available() {
                    bail!("--device cuda: no CUDA device could be opened (is the NVIDIA driver installed and libcuda/libnvrtc on LD_LIBRARY_PATH?)");
                }
                return Ok(Backend::Cuda);
            }
            #[cfg(not(feature = "cuda"))]
            bail!(not_built("cuda"));
        }
        DeviceChoice::Auto => {
            #[cfg(feature = "cuda")]
            if cuda_available() {
                return Ok(Backend::Cuda);
            }
            #[cfg(feature = "wgpu")]
            if let Some(WgpuAdapter::Gpu(name)) = wgpu_adapter() {
                eprintln!("wgpu adapter: {name}");
                return Ok(Backend::Wgpu);
            }
            Ok(Backend::Flex)
        }
    }
}

#[allow(dead_code)]
fn not_built(backend: &str) -> String {
    format!(
        "this binary was built without the `{backend}` backend; rebuild with \
         `cargo build --release --features {backend}` (built in: {})",
        built_in().join(", ")
    )
}

fn built_in() -> Vec<&'static str> {
    let mut backends = vec!["cpu"];
    if cfg!(feature = "ndarray") {
        backends.push("ndarray");
    }
    if cfg!(feature = "wgpu") {
        backends.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        backends.push("cuda");
    }
    backends
}

#[cfg(feature = "wgpu")]
enum WgpuAdapter {
    Gpu(String),
    Cpu(String),
}

/// Opens the default WGPU adapter (once: the setup is kept for training) and says what it is.
#[cfg(feature = "wgpu")]
fn wgpu_adapter() -> Option<WgpuAdapter> {
    use burn::backend::wgpu::{graphics::AutoGraphicsApi, init_setup, RuntimeOptions, WgpuDevice};
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // Without it, the graphics stack prints "error: XDG_RUNTIME_DIR is invalid" while
        // probing adapters on headless machines; compute needs no display.
        // SAFETY: called before any other thread of ours reads the environment.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    let setup = quietly(|| init_setup::<AutoGraphicsApi>(&WgpuDevice::DefaultDevice, RuntimeOptions::default()))?;
    let info = setup.adapter.get_info();
    let name = format!("{} ({:?})", info.name, info.backend);
    Some(if info.device_type == wgpu::DeviceType::Cpu {
        WgpuAdapter::Cpu(name)
    } else {
        WgpuAdapter::Gpu(name)
    })
}

/// Whether a CUDA device opens and runs a kernel.
#[cfg(feature = "cuda")]
fn cuda_available() -> bool {
    use burn::prelude::*;
    quietly(|| {
        let device = burn::backend::cuda::CudaDevice::default();
        Tensor::<burn::backend::Cuda, 1>::ones([1], &device).sum().into_scalar()
    })
    .is_some()
}

/// Runs `f`, turning a panic (how backends report a missing driver) into `None`, silently.
#[allow(dead_code)]
fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Option<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(f).ok();
    std::panic::set_hook(hook);
    result
}
