//! The order images are served in: a fresh permutation of the dataset each epoch, so the batch of
//! any step is a pure function of `(seed, step)` and resuming needs nothing but the step.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::seeds::{self, Stream};

/// Where a batch starts in the stream of epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    /// Index, within the epoch's permutation, of the batch's first image.
    pub offset: usize,
}

/// Batches of `batch_size` images drawn epoch by epoch without replacement.
#[derive(Debug, Clone)]
pub struct DataOrder {
    len: usize,
    batch_size: usize,
    seed: u64,
    hflip: bool,
    epoch_cache: Option<(u64, Vec<u32>)>,
}

impl DataOrder {
    /// # Panics
    /// If `len` or `batch_size` is 0.
    pub fn new(len: usize, batch_size: usize, seed: u64, hflip: bool) -> Self {
        assert!(len > 0 && batch_size > 0, "an order needs images and a batch size");
        Self { len, batch_size, seed, hflip, epoch_cache: None }
    }

    /// Where batch `step` starts.
    pub fn position(&self, step: u64) -> DataPosition {
        let first = step * self.batch_size as u64;
        DataPosition { epoch: first / self.len as u64, offset: (first % self.len as u64) as usize }
    }

    /// The image indices of batch `step` (which may straddle epochs).
    pub fn indices(&mut self, step: u64) -> Vec<usize> {
        let DataPosition { mut epoch, mut offset } = self.position(step);
        let mut out = Vec::with_capacity(self.batch_size);
        while out.len() < self.batch_size {
            let take = (self.batch_size - out.len()).min(self.len - offset);
            let perm = self.permutation(epoch);
            out.extend(perm[offset..offset + take].iter().map(|&i| i as usize));
            epoch += 1;
            offset = 0;
        }
        out
    }

    /// Whether each image of batch `step` is mirrored.
    pub fn flips(&self, step: u64) -> Vec<bool> {
        if !self.hflip {
            return vec![false; self.batch_size];
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seeds::derive(self.seed, Stream::Flips, step));
        (0..self.batch_size).map(|_| rng.random::<bool>()).collect()
    }

    fn permutation(&mut self, epoch: u64) -> &[u32] {
        if self.epoch_cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut perm: Vec<u32> = (0..self.len as u32).collect();
            perm.shuffle(&mut ChaCha8Rng::seed_from_u64(seeds::derive(self.seed, Stream::DataOrder, epoch)));
            self.epoch_cache = Some((epoch, perm));
        }
        &self.epoch_cache.as_ref().expect("just filled").1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_epoch_is_a_permutation() {
        let mut order = DataOrder::new(10, 5, 3, false);
        let mut epoch0: Vec<usize> = [order.indices(0), order.indices(1)].concat();
        epoch0.sort();
        assert_eq!(epoch0, (0..10).collect::<Vec<_>>());
        let e1 = [order.indices(2), order.indices(3)].concat();
        assert_ne!(e1, [order.indices(0), order.indices(1)].concat(), "epochs are reshuffled");
    }

    #[test]
    fn batches_straddle_epochs_and_depend_only_on_the_step() {
        let mut a = DataOrder::new(7, 3, 11, true);
        let straddle = a.indices(2); // images 6, 7, 8 of the stream: last of epoch 0, first two of epoch 1
        assert_eq!(a.position(2), DataPosition { epoch: 0, offset: 6 });
        let mut fresh = DataOrder::new(7, 3, 11, true);
        assert_eq!(fresh.indices(2), straddle);
        assert_eq!(fresh.flips(5), a.flips(5));
        assert!(fresh.flips(5).len() == 3);
        let all: Vec<bool> = (0..50).flat_map(|s| a.flips(s)).collect();
        let heads = all.iter().filter(|&&f| f).count();
        assert!(heads > 50 && heads < 100, "{heads} of 150 flipped");
    }
}
