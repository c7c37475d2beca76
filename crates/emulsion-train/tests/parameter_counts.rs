//! Every shipped config builds a network with exactly the parameter count PyTorch gives the
//! same network in EDM's `SongUNet` layout (`scripts/torch_reference.py --count-only`, committed
//! in `scripts/reference_parameter_counts.json`).

mod common;

use std::collections::BTreeMap;

use burn::backend::NdArray;
use burn::module::Module;
use common::repo;
use emulsion_train::config::DatasetKind;

#[test]
fn every_shipped_config_has_the_pytorch_reference_parameter_count() {
    let text = std::fs::read_to_string(repo().join("scripts/reference_parameter_counts.json")).unwrap();
    let table: serde_json::Value = serde_json::from_str(&text).unwrap();
    let counts: BTreeMap<String, usize> = serde_json::from_value(table["counts"].clone()).unwrap();

    let mut shipped: Vec<String> = std::fs::read_dir(repo().join("configs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"))
        .map(|name| format!("configs/{name}"))
        .collect();
    shipped.sort();
    assert_eq!(counts.keys().cloned().collect::<Vec<_>>(), shipped, "the table covers every shipped config: rerun torch_reference.py --count-only for new ones");

    let fashion = repo().join("datasets/fashion-mnist");
    for (config, expected) in &counts {
        let data_path = format!("data.path={:?}", fashion.display().to_string());
        let probe = emulsion_train::Config::load(&repo().join(config), &[]).unwrap();
        // CIFAR-10 is not shipped: its format fixes the shape and the classes.
        let (size, channels, classes) = match probe.data.dataset {
            DatasetKind::Cifar10 => (32, 3, 10),
            _ => {
                let with_data = emulsion_train::Config::load(&repo().join(config), &[data_path]).unwrap();
                let set = emulsion_train::data::load(&with_data).unwrap();
                (set.size, set.channels, set.num_classes)
            }
        };
        let unet = probe.unet_config(size, channels, classes);
        let count = unet.init::<NdArray<f32>>(&Default::default()).num_params();
        assert_eq!(count, *expected, "{config}: Emulsion builds {count} parameters, PyTorch's SongUNet {expected}");
    }
}
