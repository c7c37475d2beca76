//! The configuration's documentation cannot drift from the code: the README's reference tables
//! list exactly the keys the config types have (their field names, read from serde), with the
//! defaults the code uses; every key the example configs write (or show commented out) exists;
//! and `configs/cifar.toml` shows every key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use emulsion_assign::AssignConfig;
use emulsion_schedule::ict::IctCurriculum;
use emulsion_schedule::polynomial::{PolynomialLevels, SinusoidalCurriculum};
use emulsion_schedule::{Cauchy, CosineBetas, Curve, Laplace, LinearBetas, LogNormal};
use serde::de::{self, Deserialize, Visitor};

use crate::distributed::DistributedConfig;
use crate::config::{Config, DataConfig, DiffusionConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig};
use emulsion_sample::SampleConfig;
use crate::objective::{CtConfig, Curriculum, FdmConfig, LevelChoice, ObjectiveConfig};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A deserializer that only answers which fields a struct asks for.
struct FieldNames;

#[derive(Debug)]
struct Fields(Vec<&'static str>);

impl std::fmt::Display for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::error::Error for Fields {}

impl de::Error for Fields {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Fields(Vec::new())
    }
}

impl<'de> de::Deserializer<'de> for FieldNames {
    type Error = Fields;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
        Err(Fields(Vec::new()))
    }

    fn deserialize_struct<V: Visitor<'de>>(self, _: &'static str, fields: &'static [&'static str], _: V) -> Result<V::Value, Fields> {
        Err(Fields(fields.to_vec()))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// The serde field names of `T`, a struct.
fn fields<'de, T: Deserialize<'de>>() -> Vec<&'static str> {
    match T::deserialize(FieldNames) {
        Err(Fields(fields)) if !fields.is_empty() => fields,
        _ => panic!("{} is not a struct with fields", std::any::type_name::<T>()),
    }
}

/// Every objective with its defaults, found by name in serde's list of variants (so a new
/// objective cannot be missed).
fn objectives() -> Vec<ObjectiveConfig> {
    let message = toml::Value::String("?".into()).try_into::<ObjectiveConfig>().unwrap_err().to_string();
    let expected = message.split("expected").nth(1).expect("serde lists the variants");
    let names: Vec<String> = expected.split('`').skip(1).step_by(2).map(str::to_string).collect();
    assert!(names.len() >= 5, "{message}");
    names.iter().map(|name| toml::Value::String(name.clone()).try_into().unwrap()).collect()
}

/// The dotted keys of `value` serialised as a table, under `prefix`.
fn serialised_keys<T: serde::Serialize>(prefix: &str, value: &T) -> BTreeMap<String, Vec<toml::Value>> {
    fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, Vec<toml::Value>>) {
        for (k, v) in table {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match v {
                toml::Value::Table(t) => flatten(&key, t, out),
                other => out.entry(key).or_default().push(other.clone()),
            }
        }
    }
    let mut out = BTreeMap::new();
    flatten(prefix, &toml::Table::try_from(value).unwrap(), &mut out);
    out
}

/// Every key of the configuration, dotted, from the types themselves. A tagged section has its
/// name's key in its parent's table (`diffusion.schedule`) and `type` in its own; one inside the
/// objective (`base`, `curriculum`, `levels`) is documented by its name's row and its keys.
fn code_keys() -> BTreeSet<String> {
    let sections: [(&str, Vec<&str>); 9] = [
        ("run", fields::<RunConfig>()),
        ("data", fields::<DataConfig>()),
        ("model", fields::<ModelConfig>()),
        ("diffusion", fields::<DiffusionConfig>()),
        ("assignment", fields::<AssignConfig>()),
        ("train", fields::<TrainConfig>()),
        ("sample", fields::<SampleConfig>()),
        ("eval", fields::<EvalConfig>()),
        ("distributed", fields::<DistributedConfig>()),
    ];
    let top: BTreeSet<&str> = fields::<Config>().into_iter().collect();
    let listed: BTreeSet<&str> = sections.iter().map(|(s, _)| *s).collect();
    assert_eq!(top, listed, "a new section of Config needs its place in this check");
    let mut keys: BTreeSet<String> = sections.iter().flat_map(|(section, fields)| fields.iter().map(move |f| format!("{section}.{f}"))).collect();
    // The schedule's keys: `type` and every curve's parameters.
    keys.insert("diffusion.schedule.type".into());
    let curve_parameters = [fields::<CosineBetas>(), fields::<LinearBetas>(), fields::<Laplace>(), fields::<Cauchy>(), fields::<LogNormal>()];
    keys.extend(curve_parameters.into_iter().flatten().map(|p| format!("diffusion.schedule.{p}")));
    assert_eq!(Curve::defaults().len(), 7, "a new curve's parameter struct needs its place in this check");
    // The objective's: `type`, each objective's keys as written, and the optional ones.
    keys.insert("diffusion.objective.type".into());
    for objective in objectives() {
        keys.extend(serialised_keys("diffusion.objective", &objective).into_keys().filter(|k| !k.ends_with(".type") || k == "diffusion.objective.type"));
    }
    let optional = [("", fields::<FdmConfig>()), ("", fields::<CtConfig>()), ("curriculum.", fields::<IctCurriculum>()), ("curriculum.", fields::<SinusoidalCurriculum>()), ("levels.", fields::<PolynomialLevels>())];
    keys.extend(optional.iter().flat_map(|(within, fields)| fields.iter().map(move |f| format!("diffusion.objective.{within}{f}"))));
    keys
}

/// The code's defaults as TOML values, by dotted key (keys whose default is "unset" and
/// decided elsewhere are absent).
fn code_defaults() -> BTreeMap<String, Vec<toml::Value>> {
    let config = Config::from_toml("[data]\ndataset = \"idx\"\n", Path::new("defaults.toml"), &[]).unwrap();
    let mut out = serialised_keys("", &config);
    let mut add = |more: BTreeMap<String, Vec<toml::Value>>| {
        for (k, v) in more {
            out.entry(k).or_default().extend(v);
        }
    };
    for curve in Curve::defaults() {
        add(serialised_keys("diffusion.schedule", &curve));
    }
    for objective in objectives() {
        add(serialised_keys("diffusion.objective", &objective));
    }
    let gokmen = CtConfig { curriculum: Curriculum::Sinusoidal(SinusoidalCurriculum::default()), levels: LevelChoice::Polynomial(PolynomialLevels::default()), ..CtConfig::default() };
    add(serialised_keys("diffusion.objective", &gokmen));
    out
}

/// One row of a README reference table: its keys and the default column.
#[derive(Debug)]
struct Row {
    line: usize,
    keys: Vec<String>,
    defaults: Vec<String>,
}

/// The backticked words of `cell`.
fn backticked(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// The rows of every `| key | default | meaning |` table in the README, keys qualified by the
/// section the table documents: the last heading or paragraph that opens with `` `[section]` ``.
fn readme_rows() -> Vec<Row> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut section = String::new();
    let mut in_table = false;
    let mut rows = Vec::new();
    for (i, line) in readme.lines().enumerate() {
        if line.starts_with("### ") || line.starts_with("`[") {
            let opening = if line.starts_with("### ") { line } else { &line[..line.find(']').map_or(line.len(), |e| e + 2)] };
            if let Some(name) = backticked(opening).into_iter().find(|w| w.starts_with('[') && w.ends_with(']')) {
                section = name.trim_matches(['[', ']']).to_string();
            }
        }
        if line.starts_with("| key | default | meaning |") {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if in_table && !line.starts_with("|--") {
            let cells: Vec<&str> = line.split(" | ").collect();
            let keys = backticked(cells[0]).into_iter().map(|k| format!("{section}.{k}")).collect();
            rows.push(Row { line: i + 1, keys, defaults: backticked(cells.get(1).copied().unwrap_or("")) });
        }
    }
    rows
}

/// `text` as a TOML value, if it is one.
fn toml_value(text: &str) -> Option<toml::Value> {
    format!("v = {text}").parse::<toml::Table>().ok()?.remove("v")
}

fn same_value(a: &toml::Value, b: &toml::Value) -> bool {
    match (a, b) {
        (toml::Value::Integer(_) | toml::Value::Float(_), toml::Value::Integer(_) | toml::Value::Float(_)) => {
            let f = |v: &toml::Value| v.as_float().or(v.as_integer().map(|i| i as f64)).unwrap();
            (f(a) - f(b)).abs() <= 1e-12 * f(a).abs().max(f(b).abs())
        }
        (toml::Value::Array(x), toml::Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q)),
        _ => a == b,
    }
}

#[test]
fn the_readme_reference_lists_exactly_the_config_keys_with_their_defaults() {
    let code = code_keys();
    let rows = readme_rows();
    let documented: BTreeSet<String> = rows.iter().flat_map(|r| r.keys.iter().cloned()).collect();
    let undocumented: Vec<&String> = code.difference(&documented).collect();
    let unknown: Vec<&String> = documented.difference(&code).collect();
    assert!(undocumented.is_empty(), "keys missing from the README's configuration reference: {undocumented:?}");
    assert!(unknown.is_empty(), "README keys that no config type has: {unknown:?}");

    // Where a row gives one literal default per key, it is the code's default.
    let defaults = code_defaults();
    let mut checked = 0;
    for row in &rows {
        if row.defaults.len() != row.keys.len() {
            continue;
        }
        for (key, text) in row.keys.iter().zip(&row.defaults) {
            let (Some(documented), Some(actual)) = (toml_value(text), defaults.get(key)) else { continue };
            assert!(
                actual.iter().any(|a| same_value(a, &documented)),
                "README.md:{}: `{key}` defaults to {actual:?} in the code, not {text}",
                row.line
            );
            checked += 1;
        }
    }
    assert!(checked >= 60, "only {checked} defaults were compared: is the README's table format still `| key | default | meaning |`?");
}

/// `key = value` lines of a config file, commented out or not, qualified by the table they sit
/// in (`# [diffusion.objective]` headers count too).
fn config_file_keys(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start_matches('#').trim();
        let code = line.split(" #").next().unwrap().trim();
        if code.starts_with('[') && code.ends_with(']') && !code.contains(' ') {
            section = code.trim_matches(['[', ']']).to_string();
        } else if let Some((key, value)) = code.split_once(" = ") {
            let plain = key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if plain && toml_value(value).is_some() && !section.is_empty() {
                keys.insert(format!("{section}.{key}"));
            }
        }
    }
    keys
}

#[test]
fn example_configs_write_only_real_keys_and_show_every_key() {
    let code = code_keys();
    // `[x.base]` with `type = …` is `x.base` written as a table.
    let known = |key: &String| code.contains(key) || key.strip_suffix(".type").is_some_and(|section| code.contains(section));
    let mut configs: Vec<PathBuf> = std::fs::read_dir(repo().join("configs")).unwrap().map(|e| e.unwrap().path()).collect();
    configs.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    configs.sort();
    assert!(configs.len() >= 9, "{configs:?}");
    let mut anywhere = BTreeSet::new();
    for path in &configs {
        let keys = config_file_keys(path);
        let unknown: Vec<&String> = keys.iter().filter(|k| !known(k)).collect();
        assert!(unknown.is_empty(), "{}: keys that no config type has: {unknown:?}", path.display());
        Config::load(path, &[]).unwrap_or_else(|e| panic!("{e}"));
        anywhere.extend(keys);
    }
    // The other curves' parameters are listed in a comment of their own, not as `key = value`;
    // the other objectives' keys are shown by the configs that use them.
    let shown = config_file_keys(&repo().join("configs/cifar.toml"));
    let missing: Vec<&String> = code.iter().filter(|k| !k.starts_with("diffusion.schedule") && !k.starts_with("diffusion.objective") && !shown.contains(*k)).collect();
    assert!(missing.is_empty(), "configs/cifar.toml does not show {missing:?}");
    let missing: Vec<&String> = code.iter().filter(|k| k.starts_with("diffusion.objective") && !anywhere.contains(*k)).collect();
    assert!(missing.is_empty(), "no example config shows {missing:?}");
}
