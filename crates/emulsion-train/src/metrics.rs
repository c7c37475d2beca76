//! Numeric metrics of a training step beyond Burn's loss and learning rate: the mean distance
//! between each image and its (assigned) noise, and the time the assignment took. They reach
//! `metrics.jsonl` through the monitor like the loss does.

use std::marker::PhantomData;
use std::sync::Arc;

use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry, SerializedEntry,
};

/// A per-step number a [`ScalarMetric`] records.
pub trait Scalar: Send + Sync + 'static {
    /// The metric's name, as the monitor looks it up.
    const NAME: &'static str;
    fn value(&self) -> f64;
}

/// Mean L2 distance between each image and its noise.
pub struct AssignDistance(pub f64);

impl Scalar for AssignDistance {
    const NAME: &'static str = "Assign Distance";
    fn value(&self) -> f64 {
        self.0
    }
}

/// Host milliseconds the noise assignment took.
pub struct AssignMilliseconds(pub f64);

impl Scalar for AssignMilliseconds {
    const NAME: &'static str = "Assign Milliseconds";
    fn value(&self) -> f64 {
        self.0
    }
}

/// Steps whose update was skipped for a non-finite loss or gradient, so far in the session.
pub struct SkippedSteps(pub u64);

impl Scalar for SkippedSteps {
    const NAME: &'static str = "Skipped Steps";
    fn value(&self) -> f64 {
        self.0 as f64
    }
}

/// Records one [`Scalar`] per step.
pub struct ScalarMetric<S> {
    name: Arc<String>,
    state: NumericMetricState,
    _scalar: PhantomData<fn() -> S>,
}

impl<S: Scalar> ScalarMetric<S> {
    pub fn new() -> Self {
        Self { name: Arc::new(S::NAME.to_string()), state: NumericMetricState::default(), _scalar: PhantomData }
    }
}

impl<S: Scalar> Default for ScalarMetric<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Clone for ScalarMetric<S> {
    fn clone(&self) -> Self {
        Self { name: self.name.clone(), state: self.state.clone(), _scalar: PhantomData }
    }
}

impl<S: Scalar> Metric for ScalarMetric<S> {
    type Input = S;

    fn update(&mut self, input: &S, _metadata: &MetricMetadata) -> SerializedEntry {
        self.state.update(input.value(), 1, FormatOptions::new(self.name()).precision(4))
    }

    fn clear(&mut self) {
        self.state.reset()
    }

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes { unit: None, higher_is_better: false }.into()
    }
}

impl<S: Scalar> Numeric for ScalarMetric<S> {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}
