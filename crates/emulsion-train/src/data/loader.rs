//! A Burn [`DataLoader`] that serves the batch of each optimiser step, in step order, starting
//! at any step: what a step-based, resumable training loop consumes.

use std::ops::Range;
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::prelude::*;
use burn::tensor::TensorData;

use super::{DataOrder, ImageSet};

/// The inputs of one training step.
#[derive(Debug, Clone)]
pub struct DiffusionBatch<B: Backend> {
    /// `[B, C, H, W]` in `[-1, 1]`.
    pub images: Tensor<B, 4>,
    /// `[B]` class labels, when the dataset has them.
    pub labels: Option<Tensor<B, 1, Int>>,
    /// The 0-based optimiser step this batch is for; it seeds the step's randomness.
    pub step: u64,
    /// The images of step `step + 1`, when the loader looks ahead (so the step can start
    /// solving the next step's assignment) and the run has one.
    pub next_images: Option<Tensor<B, 4>>,
}

/// Serves the batches of steps `steps` of a run.
#[derive(Clone)]
pub struct StepLoader<B: Backend> {
    images: Arc<ImageSet>,
    order: DataOrder,
    batch_size: usize,
    steps: Range<u64>,
    device: B::Device,
    lookahead: bool,
}

impl<B: Backend> StepLoader<B> {
    pub fn new(images: Arc<ImageSet>, order: DataOrder, batch_size: usize, steps: Range<u64>, device: B::Device) -> Self {
        Self { images, order, batch_size, steps, device, lookahead: false }
    }

    /// Serves each batch with the next step's images too ([`DiffusionBatch::next_images`]).
    pub fn with_lookahead(self, lookahead: bool) -> Self {
        Self { lookahead, ..self }
    }

    /// The batch of `step` on this loader's device.
    pub fn batch(&self, order: &mut DataOrder, step: u64) -> DiffusionBatch<B> {
        let indices = order.indices(step);
        let flips = order.flips(step);
        let set = &self.images;
        let shape = [indices.len(), set.channels, set.size, set.size];
        let images = Tensor::from_data(TensorData::new(set.batch(&indices, &flips), shape), &self.device);
        let labels = set.labels.as_ref().map(|labels| {
            let values: Vec<i64> = indices.iter().map(|&i| labels[i] as i64).collect();
            Tensor::from_data(TensorData::new(values, [indices.len()]), &self.device)
        });
        DiffusionBatch { images, labels, step, next_images: None }
    }
}

struct StepIterator<'a, B: Backend> {
    loader: &'a StepLoader<B>,
    order: DataOrder,
    next: u64,
    /// The batch of step `next`, built a step early when looking ahead.
    ahead: Option<DiffusionBatch<B>>,
}

impl<B: Backend> Iterator for StepIterator<'_, B> {
    type Item = DiffusionBatch<B>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.loader.steps.end {
            return None;
        }
        let mut batch = match self.ahead.take() {
            Some(batch) => batch,
            None => self.loader.batch(&mut self.order, self.next),
        };
        self.next += 1;
        if self.loader.lookahead && self.next < self.loader.steps.end {
            let ahead = self.loader.batch(&mut self.order, self.next);
            batch.next_images = Some(ahead.images.clone());
            self.ahead = Some(ahead);
        }
        Some(batch)
    }
}

impl<B: Backend> DataLoaderIterator<DiffusionBatch<B>> for StepIterator<'_, B> {
    fn progress(&self) -> Progress {
        Progress::new(self.next as usize, self.loader.steps.end as usize)
    }
}

impl<B: Backend> DataLoader<B, DiffusionBatch<B>> for StepLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<DiffusionBatch<B>> + 'a> {
        Box::new(StepIterator { loader: self, order: self.order.clone(), next: self.steps.start, ahead: None })
    }

    fn num_items(&self) -> usize {
        (self.steps.end - self.steps.start) as usize * self.batch_size
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, DiffusionBatch<B>>> {
        Arc::new(Self { device: device.clone(), ..self.clone() })
    }

    /// Items `start..end` of this loader, rounded to whole steps.
    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, DiffusionBatch<B>>> {
        let first = self.steps.start + (start / self.batch_size) as u64;
        let last = (self.steps.start + end.div_ceil(self.batch_size) as u64).min(self.steps.end);
        Arc::new(Self { steps: first..last, ..self.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    #[test]
    fn serves_every_step_of_its_range_in_order() {
        let set = Arc::new(ImageSet {
            pixels: (0..5u8).flat_map(|i| [i * 50; 4]).collect(),
            labels: Some((0..5).collect()),
            num_classes: 5,
            channels: 1,
            size: 2,
        });
        let order = DataOrder::new(5, 2, 1, false);
        let loader = StepLoader::<TestBackend>::new(set.clone(), order.clone(), 2, 3..6, Default::default());
        let batches: Vec<_> = loader.iter().collect();
        assert_eq!(batches.iter().map(|b| b.step).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(loader.num_items(), 6);
        // Each image's pixels match its label: image i is filled with 50 i.
        for b in &batches {
            let labels: Vec<i64> = b.labels.clone().unwrap().into_data().convert::<i64>().to_vec().unwrap();
            let pixels: Vec<f32> = b.images.clone().into_data().to_vec().unwrap();
            for (k, label) in labels.iter().enumerate() {
                assert!((pixels[4 * k] - ((*label as f32 * 50.0) / 127.5 - 1.0)).abs() < 1e-6);
            }
        }
        let tail: Vec<_> = loader.slice(2, 6).iter().map(|b| b.step).collect();
        assert_eq!(tail, vec![4, 5]);
        assert!(batches.iter().all(|b| b.next_images.is_none()));

        // Looking ahead: each batch but the last carries the next one's images, and the
        // batches themselves are unchanged.
        let ahead: Vec<_> = loader.clone().with_lookahead(true).iter().collect();
        let data = |t: &Tensor<TestBackend, 4>| -> Vec<f32> { t.clone().into_data().to_vec().unwrap() };
        for (i, b) in ahead.iter().enumerate() {
            assert_eq!(data(&b.images), data(&batches[i].images));
            match batches.get(i + 1) {
                Some(next) => assert_eq!(data(b.next_images.as_ref().unwrap()), data(&next.images)),
                None => assert!(b.next_images.is_none()),
            }
        }
    }
}
