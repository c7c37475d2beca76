//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `configs/quickstart.toml` on the shipped data as run `name` under `out`, with an 8-channel
/// model without attention, a journal line per step, no periodic samples and 2-image grids;
/// then `extra` on top (batch, steps, sizes and what the test is about).
pub fn quickstart_config(out: &Path, name: &str, extra: &[String]) -> emulsion_train::Config {
    let mut overrides = vec![
        format!("run.out_dir={:?}", out.display().to_string()),
        format!("run.name={name}"),
        format!("data.path={:?}", repo().join("datasets/fashion-mnist").display().to_string()),
        "model.channels=8".into(),
        "model.attn_resolutions=[]".into(),
        "train.sample_every=0".into(),
        "train.log_every=1".into(),
        "sample.n=2".into(),
    ];
    overrides.extend_from_slice(extra);
    emulsion_train::Config::load(&repo().join("configs/quickstart.toml"), &overrides).unwrap()
}

/// A fresh empty folder under the system temp dir.
pub fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("emulsion-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `count` pseudo-random `size`x`size` images with labels `i % 10` as gzipped IDX files
/// (`train-*`) into `dir`.
pub fn write_idx_dataset(dir: &Path, count: usize, size: usize) {
    let mut images = Vec::new();
    for v in [2051u32, count as u32, size as u32, size as u32] {
        images.extend(v.to_be_bytes());
    }
    let mut state = 12345u32;
    for _ in 0..count * size * size {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        images.push((state >> 24) as u8);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&images).unwrap();
    std::fs::write(dir.join("train-images-idx3-ubyte.gz"), gz.finish().unwrap()).unwrap();
    let mut labels = Vec::new();
    for v in [2049u32, count as u32] {
        labels.extend(v.to_be_bytes());
    }
    labels.extend((0..count).map(|i| (i % 10) as u8));
    std::fs::write(dir.join("train-labels-idx1-ubyte"), labels).unwrap();
}

/// Every float parameter of a module, flattened, in visiting order.
pub fn weights<B: Backend, M: Module<B>>(module: &M) -> Vec<f32> {
    struct Grab(Vec<f32>);
    impl<B: Backend> ModuleVisitor<B> for Grab {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.extend(param.val().into_data().convert::<f32>().to_vec::<f32>().unwrap());
        }
    }
    let mut grab = Grab(Vec::new());
    module.visit(&mut grab);
    grab.0
}
