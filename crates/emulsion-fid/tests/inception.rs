//! The Burn Inception-v3 against an independent NumPy float64 forward pass of the same weights
//! (`scripts/inception_reference.py`, outputs in `tests/fixtures/`).
//!
//! Needs the converted weights: `scripts/fetch_inception.sh` (CI runs it), or
//! `EMULSION_INCEPTION=/path/to/weights.safetensors`.

use std::path::PathBuf;

use burn::prelude::*;
use emulsion_fid::npy;
use emulsion_fid::resize::resize_bilinear_tf1;
use emulsion_fid::{InceptionV3, FEATURES};

type B = burn::backend::NdArray<f32>;
/// The backend of `--device cpu`.
type Flex = burn::backend::Flex;

/// The converted weights (`EMULSION_INCEPTION`, or where scripts/fetch_inception.sh puts them);
/// `None`, with a note saying how to get them, when they are not there (a failure under
/// `EMULSION_CI`).
fn weights() -> Option<PathBuf> {
    let path = std::env::var_os("EMULSION_INCEPTION")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(emulsion_fid::DEFAULT_WEIGHTS));
    if path.is_file() {
        return Some(path);
    }
    let note = format!("{} not found: run scripts/fetch_inception.sh (or set EMULSION_INCEPTION)", path.display());
    assert!(std::env::var_os("EMULSION_CI").is_none(), "{note}");
    eprintln!("skipped: {note}");
    None
}

fn fixture(name: &str) -> npy::Array {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    npy::parse(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Fixture images as `[N, C, H, W]` pixel values; NHWC colour arrays are transposed.
fn images<B: Backend>(name: &str, device: &B::Device) -> Tensor<B, 4> {
    let array = fixture(name);
    let values: Vec<f32> = array.values.iter().map(|&v| v as f32).collect();
    match array.shape[..] {
        [n, h, w] => Tensor::from_data(TensorData::new(values, [n, 1, h, w]), device),
        [n, h, w, c] => Tensor::<B, 4>::from_data(TensorData::new(values, [n, h, w, c]), device).permute([0, 3, 1, 2]),
        _ => panic!("{name}: shape {:?}", array.shape),
    }
}

/// Largest error relative to the largest reference value, and the largest elementwise
/// relative error among reference values above 0.1.
fn errors(got: &[f32], reference: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), reference.len());
    let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let pairs = || got.iter().zip(reference).map(|(&g, &r)| (g as f64, r));
    let max_abs = pairs().map(|(g, r)| (g - r).abs()).fold(0.0, f64::max);
    let max_rel = pairs().filter(|(_, r)| r.abs() > 0.1).map(|(g, r)| (g - r).abs() / r.abs()).fold(0.0, f64::max);
    (max_abs / scale, max_rel)
}

/// Every fixture set through the network on backend `B`, within 1e-4 of the reference.
fn check_features<B: Backend>(backend: &str) {
    let Some(weights) = weights() else { return };
    let device = Default::default();
    let net = InceptionV3::<B>::load(&weights, &device).unwrap_or_else(|e| panic!("{e}"));
    for set in ["gray28", "rgb32", "rgb299"] {
        let got: Vec<f32> = net.features(images::<B>(&format!("{set}.npy"), &device)).into_data().convert::<f32>().to_vec().unwrap();
        let reference = fixture(&format!("{set}_features.npy"));
        assert_eq!(reference.shape[1], FEATURES);
        let (scaled, relative) = errors(&got, &reference.values);
        eprintln!("{backend} {set}: max |Δ| / max |ref| = {scaled:.2e}, max relative error (|ref| > 0.1) = {relative:.2e}");
        assert!(scaled < 1e-4 && relative < 1e-4, "{backend} {set}: {scaled:e}, {relative:e}");
    }
}

#[test]
fn features_match_the_numpy_reference() {
    check_features::<B>("ndarray");
}

#[test]
fn features_match_the_numpy_reference_on_flex() {
    check_features::<Flex>("flex");
}

#[test]
fn resized_inputs_match_the_numpy_reference() {
    let device = Default::default();
    let resized = resize_bilinear_tf1(images::<B>("rgb32.npy", &device), [299, 299]);
    let got: Vec<f32> = ((resized - 128.0) / 128.0).into_data().to_vec().unwrap();
    let (scaled, _) = errors(&got, &fixture("resized_rgb32.npy").values);
    assert!(scaled < 1e-6, "{scaled:e}");
}

#[test]
fn a_missing_or_foreign_weights_file_is_named() {
    let device = Default::default();
    let missing = InceptionV3::<B>::load(std::path::Path::new("no/such/weights.safetensors"), &device).unwrap_err().to_string();
    assert!(missing.contains("no/such/weights.safetensors") && missing.contains("fetch_inception.sh"), "{missing}");
    let dir = std::env::temp_dir().join(format!("emulsion-fid-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let foreign = dir.join("foreign.safetensors");
    std::fs::write(&foreign, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ").unwrap();
    let error = InceptionV3::<B>::load(&foreign, &device).unwrap_err().to_string();
    assert!(error.contains("foreign.safetensors") && error.contains("format"), "{error}");
}
