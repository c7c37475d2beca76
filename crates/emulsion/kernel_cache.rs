//! The kernel cache: one folder for what CubeCL learns about a GPU between runs — autotune
//! results (which kernel won for each shape) and compiled kernels (PTX on CUDA, SPIR-V on WGPU's
//! Vulkan compiler) — so that a second run compiles and tunes nothing the first did.
//!
//! The folder is `--kernel-cache DIR`, else `$EMULSION_KERNEL_CACHE`, else `.kernel-cache/` in
//! the Emulsion checkout that holds the working directory, else `emulsion/kernels` in the user's
//! cache directory. Everything else CubeCL reads from a `cubecl.toml` or `CUBECL_*` variables
//! still applies; only the two cache locations are ours. The drivers' caches of the machine code
//! they build from those kernels go into the same folder unless their variables are already set
//! ([`DRIVER_CACHES`]), so that the folder alone holds what a second start reuses.

use std::path::{Path, PathBuf};

/// Names the folder for `emulsion` and the `emulsion train` children of a sweep.
pub const ENV: &str = "EMULSION_KERNEL_CACHE";

/// Where the drivers keep the machine code they compile from our kernels, as (variable, sub-folder):
/// Mesa's shader cache (Vulkan drivers such as lavapipe) and NVIDIA's JIT cache (PTX to SASS).
pub const DRIVER_CACHES: [(&str, &str); 2] = [("MESA_SHADER_CACHE_DIR", "mesa"), ("CUDA_CACHE_PATH", "cuda-jit")];

/// The folder's name inside a checkout (git-ignored).
pub const CHECKOUT_FOLDER: &str = ".kernel-cache";

/// The folder to use, given `--kernel-cache` (or `$EMULSION_KERNEL_CACHE`, which clap reads),
/// made absolute against `cwd`.
pub fn resolve(explicit: Option<&Path>, cwd: &Path) -> PathBuf {
    if let Some(dir) = explicit {
        return cwd.join(dir);
    }
    if let Some(checkout) = cwd.ancestors().find(|dir| is_emulsion_checkout(dir)) {
        return checkout.join(CHECKOUT_FOLDER);
    }
    let user_cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")));
    match user_cache {
        Some(dir) => dir.join("emulsion").join("kernels"),
        None => cwd.join(CHECKOUT_FOLDER),
    }
}

/// Whether `dir` is the root of an Emulsion checkout: its `Cargo.toml` is this package's.
fn is_emulsion_checkout(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .is_ok_and(|manifest| manifest.lines().any(|line| line.trim() == "name = \"emulsion\""))
}

/// Creates the folder and the drivers' sub-folders that it holds: Mesa does not create missing
/// parents, and would silently cache nothing. A folder that cannot be made only costs speed.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub fn prepare(folder: &Path) {
    for (_, sub_folder) in DRIVER_CACHES {
        if let Err(e) = std::fs::create_dir_all(folder.join(sub_folder)) {
            tracing::warn!("kernel cache {}: {e}; kernels will be compiled again next time", folder.display());
        }
    }
}

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
pub fn prepare(_folder: &Path) {}

/// Points CubeCL's autotune and compilation caches at `folder`. Must run before the first GPU
/// device is opened: CubeCL reads its configuration once.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub fn install(folder: &Path) -> anyhow::Result<()> {
    use cubecl::config::cache::CacheConfig;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    // What CubeCL would have read by itself: a cubecl.toml above the working directory, then
    // the CUBECL_* variables. It panics on a malformed file; say which instead.
    let read = std::panic::catch_unwind(|| CubeClRuntimeConfig::from_current_dir().override_from_env());
    let mut config = read.map_err(|_| {
        anyhow::anyhow!("a cubecl.toml (or burn.toml) above the working directory is not a valid CubeCL configuration")
    })?;
    config.autotune.cache = CacheConfig::File(folder.to_path_buf());
    config.compilation.cache = Some(CacheConfig::File(folder.to_path_buf()));
    CubeClRuntimeConfig::set(config);
    tracing::info!("kernel cache: {}", folder.display());
    Ok(())
}

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
pub fn install(_folder: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_folder_wins_and_is_made_absolute() {
        let cwd = Path::new("/work/somewhere");
        assert_eq!(resolve(Some(Path::new("cache")), cwd), PathBuf::from("/work/somewhere/cache"));
        assert_eq!(resolve(Some(Path::new("/abs/cache")), cwd), PathBuf::from("/abs/cache"));
    }

    #[test]
    fn inside_a_checkout_the_folder_is_at_its_root() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert!(is_emulsion_checkout(root), "the package root is a checkout");
        assert_eq!(resolve(None, &root.join("configs")), root.join(CHECKOUT_FOLDER));
        assert!(!is_emulsion_checkout(&root.join("crates/emulsion-train")), "a member crate is not the checkout");
    }
}
