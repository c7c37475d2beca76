//! `metrics.jsonl`, a run's journal: one JSON object per line, its `kind` saying which record it
//! is: `"train"` every `train.log_every` steps (from the monitor), `"fid"` at each FID
//! evaluation. Every line is appended in one `O_APPEND` write, so the monitor's thread and the
//! training loop's FID never interleave; a torn last line (a killed process) is skipped.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum JournalLine {
    Train(TrainLine),
    Fid(FidLine),
}

impl JournalLine {
    /// The optimiser step the line was written at.
    pub fn step(&self) -> u64 {
        match self {
            JournalLine::Train(l) => l.step,
            JournalLine::Fid(l) => l.step,
        }
    }
}

/// Training progress since the previous `train` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainLine {
    pub step: u64,
    /// Mean training loss over the steps since the previous line; NaN (JSON `null`) when every
    /// one of them was skipped for a non-finite loss.
    #[serde(deserialize_with = "null_as_nan")]
    pub loss: f64,
    pub lr: f64,
    pub images_per_s: f64,
    /// Seconds of training in the whole run, resumed sessions included.
    pub wall_time_s: f64,
    /// Mean L2 distance between each image and its assigned noise (the random pairing's when
    /// `assignment.method = "none"`), over the steps since the previous line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assign_distance: Option<f64>,
    /// Mean host milliseconds per step spent assigning noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assign_ms: Option<f64>,
    /// Steps whose update was skipped for a non-finite loss or gradient (`on_nonfinite = "skip"`),
    /// so far in the run (all sessions); absent while there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<u64>,
}

/// One FID evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FidLine {
    pub step: u64,
    pub fid: f64,
    /// Whose features `fid` compares (journals from before the choice: Inception's).
    #[serde(default)]
    pub metric: emulsion_fid::Metric,
    pub fid_samples: usize,
    /// Seconds the evaluation took (sampling, Inception and the distance).
    pub fid_seconds: f64,
}

/// JSON has no NaN: `serde_json` writes it as `null`, read back here as NaN.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// `line` as the journal's text, newline included.
pub fn to_text(line: &JournalLine) -> std::io::Result<String> {
    Ok(serde_json::to_string(line).map_err(std::io::Error::other)? + "\n")
}

/// Appends `line` to the journal at `path` in one write.
pub fn append(path: &Path, line: &JournalLine) -> std::io::Result<()> {
    let text = to_text(line)?;
    std::fs::OpenOptions::new().create(true).append(true).open(path)?.write_all(text.as_bytes())
}

/// One line of text; journals written before lines had a `kind` are read by their fields.
fn parse(text: &str) -> Option<JournalLine> {
    serde_json::from_str(text)
        .or_else(|_| serde_json::from_str(text).map(JournalLine::Fid))
        .or_else(|_| serde_json::from_str(text).map(JournalLine::Train))
        .ok()
}

/// Every line of the journal at `path` in file order (none if there is no journal yet).
pub fn read(path: &Path) -> std::io::Result<Vec<JournalLine>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().filter_map(parse).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The `train` lines, in file order.
pub fn train_lines(path: &Path) -> std::io::Result<Vec<TrainLine>> {
    Ok(read(path)?.into_iter().filter_map(|l| if let JournalLine::Train(t) = l { Some(t) } else { None }).collect())
}

/// The `fid` lines, in step order.
pub fn fid_lines(path: &Path) -> std::io::Result<Vec<FidLine>> {
    let mut lines: Vec<FidLine> = read(path)?.into_iter().filter_map(|l| if let JournalLine::Fid(f) = l { Some(f) } else { None }).collect();
    lines.sort_by_key(|l| l.step);
    Ok(lines)
}

/// Keeps the lines up to `step` (resuming from a checkpoint at `step`), as they were written:
/// only their `step` is read, so a line is kept whatever else it holds.
pub fn truncate(path: &Path, step: u64) -> std::io::Result<()> {
    #[derive(Deserialize)]
    struct Step {
        step: u64,
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let kept: String = text.lines().filter(|l| serde_json::from_str::<Step>(l).is_ok_and(|s| s.step <= step)).map(|l| format!("{l}\n")).collect();
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, kept).and_then(|()| std::fs::rename(&tmp, path)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(step: u64) -> JournalLine {
        JournalLine::Train(TrainLine {
            step,
            loss: 1.0 / step as f64,
            lr: 1e-4,
            images_per_s: 10.0,
            wall_time_s: step as f64,
            assign_distance: Some(50.0),
            assign_ms: None,
            skipped_steps: None,
        })
    }

    fn fid(step: u64) -> JournalLine {
        JournalLine::Fid(FidLine { step, fid: 30.0 - step as f64 / 10.0, metric: Default::default(), fid_samples: 100, fid_seconds: 2.0 })
    }

    #[test]
    fn lines_carry_their_kind_and_truncate_on_resume() {
        let dir = std::env::temp_dir().join(format!("emulsion-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        let _ = std::fs::remove_file(&path);
        for line in [train(10), fid(10), train(20), train(30), fid(30), train(40)] {
            append(&path, &line).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().all(|l| l.starts_with("{\"kind\":\"train\"") || l.starts_with("{\"kind\":\"fid\"")), "{text}");
        // A torn last line, as a killed process leaves it, is skipped.
        std::fs::write(&path, text + "{\"kind\":\"train\",\"step\":50,\"lo").unwrap();
        assert_eq!(read(&path).unwrap().len(), 6);
        assert_eq!(fid_lines(&path).unwrap().iter().map(|l| l.step).collect::<Vec<_>>(), vec![10, 30]);
        truncate(&path, 20).unwrap();
        assert_eq!(read(&path).unwrap(), vec![train(10), fid(10), train(20)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_line_of_skipped_steps_survives_reading_and_resuming() {
        // Every step since the previous line skipped: the mean loss is NaN, written as `null`.
        let dir = std::env::temp_dir().join(format!("emulsion-journal-nan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        let _ = std::fs::remove_file(&path);
        let skipped = TrainLine { step: 20, loss: f64::NAN, lr: 1e-4, images_per_s: 10.0, wall_time_s: 2.0, assign_distance: None, assign_ms: None, skipped_steps: Some(3) };
        for line in [train(10), JournalLine::Train(skipped), train(30)] {
            append(&path, &line).unwrap();
        }
        assert!(std::fs::read_to_string(&path).unwrap().contains("\"loss\":null"));
        truncate(&path, 20).unwrap();
        let lines = train_lines(&path).unwrap();
        assert_eq!(lines.iter().map(|l| l.step).collect::<Vec<_>>(), vec![10, 20]);
        assert!(lines[1].loss.is_nan() && lines[1].skipped_steps == Some(3), "{lines:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn journals_written_before_kind_are_read_by_their_fields() {
        let old = "{\"step\":10,\"loss\":0.1,\"lr\":0.0001,\"images_per_s\":10.0,\"wall_time_s\":10.0}\n{\"step\":10,\"fid\":29.0,\"fid_samples\":100,\"fid_seconds\":2.0}\n";
        let lines: Vec<JournalLine> = old.lines().filter_map(parse).collect();
        assert!(matches!(&lines[..], [JournalLine::Train(t), JournalLine::Fid(f)] if t.loss == 0.1 && f.fid == 29.0), "{lines:?}");
    }
}
