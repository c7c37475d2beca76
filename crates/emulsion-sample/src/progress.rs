//! Progress of long tasks (training steps, sampler steps, FID images, sweep runs) as `tracing`
//! events that a front end may draw as bars: target [`TARGET`], level trace, fields `task`,
//! `done` and `total`. At trace level they stay out of a plain log, whose progress is the
//! periodic info lines.

/// The target of progress events.
pub const TARGET: &str = "emulsion::progress";

/// `done` of `total` units of `task` are finished; `done == total` ends the task.
pub fn report(task: &str, done: u64, total: u64) {
    tracing::trace!(target: TARGET, task, done, total);
}
