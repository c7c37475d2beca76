//! The kernel cache: one folder for what CubeCL learns about a GPU between runs — autotune
//! results (which kernel won for each shape, WGPU and CUDA) and compiled kernels (PTX, CUDA;
//! CubeCL caches no WGSL) — so that a second run compiles and tunes nothing the first did.
//! Compiled kernels go to a sub-folder per binary ([`build_id`]): CubeCL keys them by the
//! kernel's Rust type and launch settings, not its body, so a rebuilt binary whose kernel changed
//! would otherwise load the old code.
//!
//! The folder is `--kernel-cache DIR`, else `$EMULSION_KERNEL_CACHE`, else `.kernel-cache/` in
//! the Emulsion checkout that holds the working directory, else `emulsion/kernels` in the user's
//! cache directory. It is opened when a GPU backend is chosen (`--device wgpu`, `cuda` or
//! `auto`), before the device: CPU runs never create it. Everything else CubeCL reads from a
//! `cubecl.toml` or `CUBECL_*` variables still applies; only the two cache locations are ours.
//! The drivers' caches of the machine code they build from those kernels go into the same folder
//! unless their variables are already set ([`DRIVER_CACHES`]), so that the folder alone holds
//! what a second start reuses.

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

static FOLDER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Remembers the folder (from [`resolve`]) until a GPU backend is chosen; CPU runs never touch it.
pub fn remember(folder: PathBuf) {
    let _ = FOLDER.set(folder);
}

/// Before the first GPU device opens, once: points the drivers' caches (where their variables are
/// unset) and CubeCL's at the remembered folder, creating it.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub fn activate() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let result = DONE.get_or_init(|| {
        let Some(folder) = FOLDER.get() else { return Ok(()) };
        for (variable, sub_folder) in DRIVER_CACHES {
            if std::env::var_os(variable).is_none() {
                // SAFETY: runs on the main thread before any device, and so any thread of
                // the GPU runtimes, exists; no other thread of ours reads the environment.
                unsafe { std::env::set_var(variable, folder.join(sub_folder)) };
            }
        }
        prepare(folder);
        install(folder).map_err(|e| crate::describe(&e))
    });
    result.clone().map_err(anyhow::Error::msg)
}

/// Creates the folder and the drivers' sub-folders that it holds: Mesa does not create missing
/// parents, and would silently cache nothing. A folder that cannot be made only costs speed.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn prepare(folder: &Path) {
    for (_, sub_folder) in DRIVER_CACHES {
        if let Err(e) = std::fs::create_dir_all(folder.join(sub_folder)) {
            tracing::warn!("kernel cache {}: {e}; kernels will be compiled again next time", folder.display());
        }
    }
}

/// Points CubeCL's autotune and compilation caches at `folder`. Must run before the first GPU
/// device is opened: CubeCL reads its configuration once.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn install(folder: &Path) -> anyhow::Result<()> {
    use cubecl::config::cache::CacheConfig;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    // What CubeCL would have read by itself: a cubecl.toml above the working directory, then
    // the CUBECL_* variables. It panics on a malformed file; say which instead.
    let read = std::panic::catch_unwind(|| CubeClRuntimeConfig::from_current_dir().override_from_env());
    let mut config = read.map_err(|_| {
        anyhow::anyhow!("a cubecl.toml (or burn.toml) above the working directory is not a valid CubeCL configuration")
    })?;
    config.autotune.cache = CacheConfig::File(folder.to_path_buf());
    config.compilation.cache = Some(CacheConfig::File(folder.join(format!("compiled-{}", build_id()))));
    CubeClRuntimeConfig::set(config);
    tracing::info!("kernel cache: {}", folder.display());
    Ok(())
}

/// A hash of this executable's bytes: the same binary anywhere (copied, unpacked on another
/// machine) has the same id, a rebuilt one another.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn build_id() -> String {
    use std::hash::Hasher;
    let mut hasher = std::hash::DefaultHasher::new();
    match std::env::current_exe().and_then(std::fs::read) {
        Ok(bytes) => hasher.write(&bytes),
        // No way to tell builds apart: a name no build shares, so nothing stale is ever loaded.
        Err(_) => hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()),
    }
    format!("{:016x}", hasher.finish())
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

    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    #[test]
    fn a_binary_has_one_build_id() {
        let id = build_id();
        assert_eq!(id, build_id());
        assert!(id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    }

    #[test]
    fn inside_a_checkout_the_folder_is_at_its_root() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert!(is_emulsion_checkout(root), "the package root is a checkout");
        assert_eq!(resolve(None, &root.join("configs")), root.join(CHECKOUT_FOLDER));
        assert!(!is_emulsion_checkout(&root.join("crates/emulsion-train")), "a member crate is not the checkout");
    }
}
