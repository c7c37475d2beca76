//! Emulsion's reports on runs, apart from training itself: what the command line shows and
//! writes about runs, schedules and speed.
//!
//! - [`sweep`]: grids of runs, their status and their summary (`emulsion sweep`).
//! - [`schedule_report`]: a schedule's tables and plots (`emulsion schedule`).
//! - [`bench`]: the run `train` builds, timed step by step, and Inception's throughput
//!   (`emulsion bench`).
//! - [`fid`]: Inception statistics of folders, configs and saved statistics (`emulsion fid`).

pub mod bench;
pub mod fid;
pub mod schedule_report;
pub mod sweep;
