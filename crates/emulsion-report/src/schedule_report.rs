//! `emulsion schedule`: a schedule's values as CSV, and every schedule on one figure.

use std::fmt::Write as _;
use std::path::Path;

use emulsion_schedule::{process::Process, Curve, LogSnr, Schedule};

use emulsion_train::config::{apply_override, read_section, ConfigError, DiffusionConfig};

/// `[diffusion]` keys that are not the curve's own parameters.
const RANGE_KEYS: [&str; 3] = ["shift", "lambda_min", "lambda_max"];

/// The schedule `name` with `PARAM=VALUE` settings applied: a parameter of that curve
/// (`mu=0.5` for `laplace`) or a `[diffusion]` key of the range (`shift=2`, `lambda_min=-10`).
pub fn resolve(name: &str, settings: &[String]) -> Result<Schedule, ConfigError> {
    if Curve::named(name).is_none() {
        let known = Curve::NAMES.map(|n| format!("`{n}`")).join(", ");
        return Err(ConfigError::Key { location: "schedule".into(), key: name.to_string(), message: format!("no such schedule; the schedules are {known}") });
    }
    let mut table = toml::Table::new();
    table.insert("schedule".into(), toml::Value::String(name.into()));
    for arg in settings {
        let key = arg.split_once('=').map_or(arg.as_str(), |(k, _)| k.trim());
        let qualified = if RANGE_KEYS.contains(&key) { arg.clone() } else { format!("schedule.{arg}") };
        apply_override(&mut table, &qualified, "diffusion").map_err(|e| match e {
            ConfigError::Override { message, .. } => ConfigError::Override { arg: arg.clone(), message },
            other => other,
        })?;
    }
    let config: DiffusionConfig = read_section(&table, "diffusion").map_err(|(key, message)| ConfigError::Key { location: "--set".into(), key, message })?;
    config.schedule().map_err(|e| {
        let e = e.within("diffusion");
        ConfigError::Key { location: "--set".into(), key: e.key, message: e.message }
    })
}

/// CSV with header `t,lambda,alpha,sigma`: the schedule's own `λ(t)` (shift applied, not
/// truncated) and the VP coefficients `α² = sigmoid(λ)`, `σ² = sigmoid(-λ)`, each number printed
/// with the shortest digits that read back to the same `f64`.
pub fn dump_csv(schedule: &Schedule, ts: &[f64]) -> String {
    let mut csv = String::from("t,lambda,alpha,sigma\n");
    for &t in ts {
        let lambda = schedule.lambda(t);
        let (alpha, sigma) = Process::Vp.alpha_sigma(lambda);
        writeln!(csv, "{t},{lambda},{alpha},{sigma}").expect("writing to a String");
    }
    csv
}

/// Parses `0.1,0.5,0.9`; every `t` must lie in `(0, 1)`.
pub fn check_ts(ts: Vec<f64>) -> Result<Vec<f64>, String> {
    match ts.iter().find(|&&t| !(t > 0.0 && t < 1.0)) {
        Some(t) => Err(format!("--t: {t} is outside (0, 1)")),
        None => Ok(ts),
    }
}

/// Draws `p(λ)` (left) and `λ(t)` (right) of each schedule on one figure.
pub fn plot(schedules: &[Schedule], out: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    emulsion_train::monitor::register_font();
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", out.display());
    let (lambda_lo, lambda_hi) = (-15.0, 15.0);
    // plotters picks the image format from the extension, so the temporary name ends in .png.
    let tmp = out.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (1400, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (left, right) = root.split_horizontally(700);
        let colour = |i: usize| Palette99::pick(i).to_rgba().stroke_width(2);

        let peak = schedules
            .iter()
            .flat_map(|s| (0..=600).map(move |i| s.density(lambda_lo + (lambda_hi - lambda_lo) * i as f64 / 600.0)))
            .fold(0.0, f64::max);
        let mut density = ChartBuilder::on(&left)
            .caption("density of the log-SNR, p(λ)", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(lambda_lo..lambda_hi, 0.0..peak * 1.05)
            .map_err(|e| err(&e))?;
        density.configure_mesh().x_desc("λ = ln(α²/σ²)").y_desc("p(λ)").draw().map_err(|e| err(&e))?;
        for (i, s) in schedules.iter().enumerate() {
            let points = (0..=1200).map(|k| {
                let l = lambda_lo + (lambda_hi - lambda_lo) * k as f64 / 1200.0;
                (l, s.density(l))
            });
            density
                .draw_series(LineSeries::new(points, colour(i)))
                .map_err(|e| err(&e))?
                .label(label(s))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour(i)));
        }
        density
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;

        let mut curves = ChartBuilder::on(&right)
            .caption("log-SNR against time, λ(t)", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..1.0, lambda_lo..lambda_hi)
            .map_err(|e| err(&e))?;
        curves.configure_mesh().x_desc("t").y_desc("λ(t)").draw().map_err(|e| err(&e))?;
        for (i, s) in schedules.iter().enumerate() {
            let points = (1..2000).map(|k| {
                let t = k as f64 / 2000.0;
                (t, s.lambda(t).clamp(lambda_lo, lambda_hi))
            });
            curves.draw_series(LineSeries::new(points, colour(i))).map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| err(&e))
}

/// The schedule's name, and its shift when there is one, for the legend.
fn label(s: &Schedule) -> String {
    let kind = s.curve();
    let shift = if s.shift() != 1.0 { format!(", shift {}", s.shift()) } else { String::new() };
    format!("{kind}{shift}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_prints_the_laplace_closed_form_at_full_precision() {
        let schedule = resolve("laplace", &["mu=0.5".into(), "b=2".into()]).unwrap();
        let csv = dump_csv(&schedule, &[0.1, 0.5, 0.9]);
        let rows: Vec<Vec<f64>> = csv.lines().skip(1).map(|l| l.split(',').map(|v| v.parse().unwrap()).collect()).collect();
        assert_eq!(csv.lines().next(), Some("t,lambda,alpha,sigma"));
        // λ(0.1) = μ - b ln(0.2); the CSV carries every digit of the f64.
        assert!((rows[0][1] - (0.5 - 2.0 * 0.2f64.ln())).abs() < 1e-15);
        assert_eq!(rows[0][1], schedule.lambda(0.1));
        assert_eq!(rows[1][1], 0.5);
        let (a, s) = (rows[2][2], rows[2][3]);
        assert!((a * a + s * s - 1.0).abs() < 1e-15 && ((a * a / (s * s)).ln() - rows[2][1]).abs() < 1e-12);
    }

    #[test]
    fn settings_name_parameters_or_diffusion_keys() {
        let s = resolve("cauchy", &["gamma=2".into(), "shift=2".into(), "lambda_min=-20".into()]).unwrap();
        assert_eq!((s.curve(), s.shift(), s.lambda_min), (&Curve::Cauchy(emulsion_schedule::Cauchy { mu: 0.0, gamma: 2.0 }), 2.0, -20.0));
        let e = resolve("laplace", &["b=-1".into()]).unwrap_err().to_string();
        assert!(e.contains("diffusion.schedule.b") && e.contains("positive"), "{e}");
        let e = resolve("laplacian", &[]).unwrap_err().to_string();
        assert!(e.contains("laplace") && e.contains("cosine"), "{e}");
        let e = resolve("laplace", &["gamma=2".into()]).unwrap_err().to_string();
        assert!(e.contains("`diffusion.schedule.gamma`") && e.contains("does not apply to `type = \"laplace\"`"), "{e}");
        assert!(check_ts(vec![0.1, 0.5]).is_ok() && check_ts(vec![0.1, 1.0]).is_err() && check_ts(vec![f64::NAN]).is_err());
    }

    #[test]
    fn plot_draws_every_schedule_to_a_png() {
        let dir = std::env::temp_dir().join(format!("emulsion-schedule-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("schedules.png");
        let all: Vec<Schedule> = Curve::NAMES.iter().map(|name| resolve(name, &[]).unwrap()).collect();
        plot(&all, &out).unwrap();
        let image = image::open(&out).unwrap();
        assert_eq!((image.width(), image.height()), (1400, 600));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
