//! A short training run on the quick-start data with each assignment method: the journal
//! records the mean image-noise distance and the assignment time of every step, and exact
//! assignment pairs the very same noise more closely than the random pairing does.

mod common;

use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use emulsion_train::journal::{train_lines, TrainLine};
use emulsion_train::{Resume, TrainOptions};

type B = Autodiff<NdArray<f32>>;

fn train(out: &Path, method: &str, extra: &[&str]) -> Vec<TrainLine> {
    let mut overrides: Vec<String> = [
        "data.limit=64",
        "model.channel_mult=[1, 2]",
        "train.batch_size=16",
        "train.micro_batch=8",
        "train.steps=3",
        "train.checkpoint_every=3",
        "sample.steps=2",
    ]
    .map(String::from)
    .into();
    overrides.push(format!("assignment.method={method}"));
    overrides.extend(extra.iter().map(|s| s.to_string()));
    let config = common::quickstart_config(out, method, &overrides);
    let options = TrainOptions { resume: Resume::No, overwrite: true, ..Default::default() };
    emulsion_train::train::<B>(&config, &Default::default(), &options).unwrap();
    train_lines(&config.run_dir().join("metrics.jsonl")).unwrap()
}

#[test]
fn every_method_trains_and_records_its_distance_and_time() {
    let out = common::tempdir("assignment");
    let none = train(&out, "none", &[]);
    let lsa = train(&out, "lsa", &[]);
    let lsa_fp16_sq = train(&out, "lsa", &["run.name=lsa-fp16", "assignment.quantize=fp16", "assignment.metric=l2sq"]);
    let knn = train(&out, "knn", &["assignment.k=8"]);
    let auction = train(&out, "auction", &["assignment.quantize=fp16"]);
    let auction_eps = train(&out, "auction", &["run.name=auction-eps", "assignment.epsilon=0.001"]);
    for journal in [&none, &lsa, &lsa_fp16_sq, &knn, &auction, &auction_eps] {
        assert_eq!(journal.len(), 3);
        for line in journal.iter() {
            assert!(line.loss.is_finite());
            assert!(line.assign_distance.is_some_and(|d| d.is_finite() && d > 0.0), "{line:?}");
            assert!(line.assign_ms.is_some_and(|ms| ms >= 0.0), "{line:?}");
        }
    }
    // The noise of each step is drawn before assignment from its own stream, so `none` and `lsa`
    // pair the same images with the same noises: the optimum can only be closer.
    for (random, exact) in none.iter().zip(&lsa) {
        let (random, exact) = (random.assign_distance.unwrap(), exact.assign_distance.unwrap());
        assert!(exact < random, "step: assigned {exact} vs random {random}");
    }
    for (random, exact) in none.iter().zip(&lsa_fp16_sq) {
        assert!(exact.assign_distance.unwrap() < random.assign_distance.unwrap());
    }
    // The auction solves the same problems: exactly on fp16 costs, within B·ε otherwise.
    for ((random, lsa), (auction, auction_eps)) in none.iter().zip(&lsa).zip(auction.iter().zip(&auction_eps)) {
        let (random, lsa) = (random.assign_distance.unwrap(), lsa.assign_distance.unwrap());
        for assigned in [auction.assign_distance.unwrap(), auction_eps.assign_distance.unwrap()] {
            assert!(assigned < random, "auction {assigned} vs random {random}");
            assert!((assigned - lsa).abs() < 1e-2 * lsa, "auction {assigned} vs lsa {lsa}");
        }
    }
    let mean = |j: &[TrainLine]| j.iter().map(|l| l.assign_distance.unwrap()).sum::<f64>() / j.len() as f64;
    assert!(mean(&knn) < mean(&none), "nearest of 8: {} vs random {}", mean(&knn), mean(&none));
    std::fs::remove_dir_all(&out).unwrap();
}
