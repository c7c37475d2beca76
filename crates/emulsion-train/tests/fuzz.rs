//! Every parser of untrusted input, fed seeded random damage of valid files — truncations, byte
//! flips, inserted and repeated runs of bytes — must answer with an error or a value, never a
//! panic: config TOML, IDX images and labels (raw and gzipped), CIFAR-10 batches, image folders
//! (PNG, JPEG), `.npy` (the FID and the assignment readers), `.npz` statistics, `state.json`,
//! checkpoint records (checked, then loaded by Burn) and weights files (a checkpoint's snapshot).

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::backend::{Autodiff, NdArray};
use emulsion_train::checkpoint::{self, Checkpoint, MODEL};
use emulsion_train::config::Split;
use emulsion_train::export::SNAPSHOT_FILE;
use emulsion_train::trainer::{Recipe, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Damaged variants of each valid input: 5,200 cases over the 13 parsers.
const CASES_PER_PARSER: usize = 400;

/// One kind of damage, chosen and placed by `rng`.
fn mutate(valid: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    let len = bytes.len().max(1);
    match rng.random_range(0..5) {
        0 => bytes.truncate(rng.random_range(0..len)),
        1 => {
            for _ in 0..rng.random_range(1..=8) {
                if !bytes.is_empty() {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] ^= rng.random_range(1..=255u8);
                }
            }
        }
        2 => {
            let at = rng.random_range(0..=bytes.len());
            let run: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
            bytes.splice(at..at, run);
        }
        3 => {
            // Header fields read as sizes: the first bytes, set to extremes.
            for i in 0..rng.random_range(1..=4).min(bytes.len()) {
                let at = rng.random_range(0..bytes.len().min(32));
                bytes[at] = if (i + at) % 2 == 0 { 0xff } else { 0x00 };
            }
        }
        _ => {
            let start = rng.random_range(0..len);
            let end = (start + rng.random_range(1..256)).min(bytes.len());
            let chunk = bytes.get(start..end).unwrap_or_default().to_vec();
            let at = rng.random_range(0..=bytes.len());
            bytes.splice(at..at, chunk);
        }
    }
    bytes
}

/// What the fuzzing of one parser found.
#[derive(Default)]
struct Tally {
    accepted: usize,
    rejected: usize,
    panics: Vec<String>,
}

/// Feeds `CASES_PER_PARSER` damaged copies of `valid` to `parse` (which writes them where its
/// parser reads), counting answers and catching panics with their messages.
fn fuzz(name: &str, valid: &[u8], seed: u64, mut parse: impl FnMut(&[u8]) -> Result<(), String>) -> Tally {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tally = Tally::default();
    // The panics looked for are caught below; keep their messages out of the output.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for case in 0..CASES_PER_PARSER {
        let bytes = mutate(valid, &mut rng);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(&bytes))) {
            Ok(Ok(())) => tally.accepted += 1,
            Ok(Err(_)) => tally.rejected += 1,
            Err(payload) => {
                let message = payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                tally.panics.push(format!("{name} case {case} ({} bytes): {message}", bytes.len()));
            }
        }
    }
    std::panic::set_hook(hook);
    eprintln!("{name}: {CASES_PER_PARSER} cases, {} accepted, {} errors, {} panics", tally.accepted, tally.rejected, tally.panics.len());
    tally
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

fn idx_bytes(magic: u32, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut bytes: Vec<u8> = std::iter::once(magic).chain(dims.iter().copied()).flat_map(u32::to_be_bytes).collect();
    bytes.extend_from_slice(body);
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// A one-step run's checkpoint folder, and the module its model record belongs to.
fn checkpoint_of_a_tiny_run(root: &Path) -> (PathBuf, Trainer<NdArray<f32>>) {
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    common::write_idx_dataset(&data, 8, 8);
    let sets = [format!("data.path={:?}", data.display().to_string()), "data.split=train".into(), "train.steps=1".into(), "train.batch_size=4".into(), "model.channel_mult=[1, 2]".into(), "model.channels=8".into()];
    let config = common::quickstart_config(root, "fuzz", &sets);
    emulsion_train::train::<Autodiff<NdArray<f32>>>(&config, &Default::default(), &Default::default()).unwrap();
    let dir = checkpoint::latest(&config.run_dir().join("checkpoints")).unwrap();
    let trainer = Recipe::from_config(&config).unwrap().init(&config.unet_config(8, 1, 10), &Default::default());
    (dir, trainer)
}

#[test]
fn damaged_inputs_give_errors_never_panics() {
    let root = common::tempdir("fuzz");
    let panics = Arc::new(Mutex::new(Vec::new()));
    let mut all = Vec::new();
    let mut run = |name: &str, valid: &[u8], seed: u64, parse: &mut dyn FnMut(&[u8]) -> Result<(), String>| {
        let tally = fuzz(name, valid, seed, parse);
        panics.lock().unwrap().extend(tally.panics.clone());
        all.push((name.to_string(), tally));
    };

    // Config TOML.
    let config_text = std::fs::read(common::repo().join("configs/cifar.toml")).unwrap();
    run("config", &config_text, 1, &mut |bytes| {
        emulsion_train::Config::from_toml(&String::from_utf8_lossy(bytes), Path::new("fuzz.toml"), &[]).map(drop).map_err(|e| e.to_string())
    });

    // IDX images and labels, raw and gzipped.
    let idx_dir = root.join("idx");
    std::fs::create_dir_all(&idx_dir).unwrap();
    let pixels: Vec<u8> = (0..6 * 8 * 8).map(|i| (i * 37 % 251) as u8).collect();
    let images = idx_bytes(2051, &[6, 8, 8], &pixels);
    let labels = idx_bytes(2049, &[6], &[0, 1, 2, 3, 4, 5]);
    let load_idx = |dir: &Path| emulsion_train::data::idx::load(dir, Split::Train, None).map(drop).map_err(|e| e.to_string());
    write(&idx_dir.join("train-labels-idx1-ubyte"), &labels);
    run("idx images", &images, 2, &mut |bytes| {
        write(&idx_dir.join("train-images-idx3-ubyte"), bytes);
        load_idx(&idx_dir)
    });
    write(&idx_dir.join("train-images-idx3-ubyte"), &images);
    run("idx labels", &labels, 3, &mut |bytes| {
        write(&idx_dir.join("train-labels-idx1-ubyte"), bytes);
        load_idx(&idx_dir)
    });
    let gz_dir = root.join("idx-gz");
    std::fs::create_dir_all(&gz_dir).unwrap();
    write(&gz_dir.join("train-labels-idx1-ubyte"), &labels);
    run("idx images (gzip)", &gzip(&images), 4, &mut |bytes| {
        write(&gz_dir.join("train-images-idx3-ubyte.gz"), bytes);
        load_idx(&gz_dir)
    });

    // CIFAR-10 test batch.
    let cifar_dir = root.join("cifar");
    std::fs::create_dir_all(&cifar_dir).unwrap();
    let records: Vec<u8> = (0..4).flat_map(|k: u8| std::iter::once(k).chain((0..3072).map(move |i| (i as u8).wrapping_mul(k)))).collect();
    run("cifar", &records, 5, &mut |bytes| {
        write(&cifar_dir.join("test_batch.bin"), bytes);
        emulsion_train::data::cifar::load(&cifar_dir, Split::Test).map(drop).map_err(|e| e.to_string())
    });

    // Image folders: a PNG and a JPEG.
    let folder = root.join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    let picture = image::RgbImage::from_fn(12, 10, |x, y| image::Rgb([(x * 20) as u8, (y * 25) as u8, 128]));
    for (name, format) in [("png", image::ImageFormat::Png), ("jpg", image::ImageFormat::Jpeg)] {
        let mut encoded = std::io::Cursor::new(Vec::new());
        picture.write_to(&mut encoded, format).unwrap();
        let path = folder.join(format!("a.{name}"));
        run(&format!("image folder ({name})"), encoded.get_ref(), 6, &mut |bytes| {
            write(&path, bytes);
            emulsion_train::data::folder::load(&folder, 3, 8).map(drop).map_err(|e| e.to_string())
        });
        std::fs::remove_file(&path).unwrap();
    }

    // .npy: the FID reader and the assignment cost reader.
    let npy = emulsion_fid::npy::to_bytes(&[3, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    run("npy (fid)", &npy, 7, &mut |bytes| emulsion_fid::npy::parse(bytes).map(drop));
    let npy_path = root.join("costs.npy");
    run("npy (assign costs)", &npy, 8, &mut |bytes| {
        write(&npy_path, bytes);
        emulsion_assign::npy::read_costs(&npy_path).map(drop).map_err(|e| e.to_string())
    });

    // .npz statistics.
    let mut acc = emulsion_fid::StatsAccumulator::new(3);
    acc.add(&[1.0, 2.0, 3.0, 2.0, 0.5, 1.0, 4.0, 1.0, 0.0]);
    let npz_path = root.join("stats.npz");
    acc.finish().unwrap().save_npz(&npz_path).unwrap();
    let npz = std::fs::read(&npz_path).unwrap();
    run("npz", &npz, 9, &mut |bytes| {
        write(&npz_path, bytes);
        emulsion_fid::FeatureStats::load_npz(&npz_path).map(drop).map_err(|e| e.to_string())
    });

    // state.json and the model record of a real checkpoint.
    let (checkpoint_dir, trainer) = checkpoint_of_a_tiny_run(&root);
    let state = std::fs::read(checkpoint_dir.join("state.json")).unwrap();
    run("state.json", &state, 10, &mut |bytes| {
        write(&checkpoint_dir.join("state.json"), bytes);
        Checkpoint::open(&checkpoint_dir).map(drop).map_err(|e| e.to_string())
    });
    write(&checkpoint_dir.join("state.json"), &state);
    let record = std::fs::read(checkpoint_dir.join("model.mpk")).unwrap();
    run("checkpoint record", &record, 11, &mut |bytes| {
        write(&checkpoint_dir.join("model.mpk"), bytes);
        let ckpt = Checkpoint::open(&checkpoint_dir).map_err(|e| e.to_string())?;
        ckpt.load_for::<_, NdArray<f32>>(MODEL, &trainer, &Default::default()).map(drop).map_err(|e| e.to_string())
    });

    // The checkpoint's sampling snapshot: an exported weights file, with its metadata.
    let snapshot_path = checkpoint_dir.join(SNAPSHOT_FILE);
    let snapshot = std::fs::read(&snapshot_path).unwrap();
    run("weights file", &snapshot, 12, &mut |bytes| {
        write(&snapshot_path, bytes);
        emulsion_train::export::load::<NdArray<f32>>(&snapshot_path, &Default::default()).map(drop).map_err(|e| e.to_string())
    });

    let total: usize = all.iter().map(|(_, t)| t.accepted + t.rejected + t.panics.len()).sum();
    eprintln!("{total} damaged inputs in all");
    let panics = panics.lock().unwrap();
    assert!(panics.is_empty(), "{} panics:\n{}", panics.len(), panics.join("\n"));
    // The damage is real: every parser rejected some of it. And the checks are not blanket
    // refusals: damage inside pixel or tensor bytes still loads.
    for (name, tally) in &all {
        assert!(tally.rejected > 0, "{name}: no damaged input was rejected");
        if ["idx images", "cifar", "checkpoint record", "weights file"].contains(&name.as_str()) {
            assert!(tally.accepted > 0, "{name}: every damaged input was rejected");
        }
    }
}
