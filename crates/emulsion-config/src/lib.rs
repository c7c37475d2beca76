//! What every configuration section shares, so that each section can deserialise into the type
//! it configures and be validated next to it:
//!
//! - [`Invalid`], the one validation error: the offending key (relative to the section that
//!   found it; parents prefix theirs with [`Invalid::within`]) and why.
//! - [`tagged_section!`], for a section that chooses one of several things (a schedule, a
//!   method): written either as the chosen name, `schedule = "laplace"` (its defaults), or as a
//!   table that names it in `type` beside its own parameters, as k-diffusion's configs do.

/// A configuration value that is not allowed, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct Invalid {
    /// The dotted key, relative to whoever reports it (`b`, `schedule.b`, `diffusion.schedule.b`).
    pub key: String,
    pub message: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }

    /// The same error with its key inside `section`: `b` within `schedule` is `schedule.b`.
    pub fn within(self, section: &str) -> Self {
        let key = if self.key.is_empty() { section.to_string() } else { format!("{section}.{}", self.key) };
        Self { key, ..self }
    }
}

/// Checks that the `f64` at `key` is finite and above 0.
pub fn positive(key: &str, value: f64) -> Result<(), Invalid> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(Invalid::new(key, format!("must be positive and finite, got {value}")))
    }
}

/// Checks that the `f64` at `key` is finite.
pub fn finite(key: &str, value: f64) -> Result<(), Invalid> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(Invalid::new(key, format!("must be finite, got {value}")))
    }
}

/// Checks that the count at `key` is at least `min`.
pub fn at_least(key: &str, value: usize, min: usize) -> Result<(), Invalid> {
    if value >= min {
        Ok(())
    } else {
        Err(Invalid::new(key, format!("must be at least {min}, got {value}")))
    }
}

/// The field that names a tagged section's choice.
pub const TAG: &str = "type";

/// Implements `Deserialize` and `Serialize` for an enum that derives them with
/// `#[serde(remote = "Self", tag = "type", deny_unknown_fields)]`: it reads either a bare name
/// (`"laplace"`, the variant with its defaults) or a table with `type` and the variant's own
/// keys, and writes the table. Parameterless variants are written `Name {}` so that a key given
/// to them is refused, not ignored.
#[macro_export]
macro_rules! tagged_section {
    ($ty:ty, $expecting:literal) => {
        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Section;
                impl<'de> ::serde::de::Visitor<'de> for Section {
                    type Value = $ty;
                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: ::serde::de::Error>(self, name: &str) -> Result<$ty, E> {
                        let table = ::std::iter::once(($crate::TAG, name));
                        <$ty>::deserialize(::serde::de::value::MapDeserializer::new(table))
                    }
                    fn visit_map<A: ::serde::de::MapAccess<'de>>(self, map: A) -> Result<$ty, A::Error> {
                        <$ty>::deserialize(::serde::de::value::MapAccessDeserializer::new(map))
                    }
                }
                deserializer.deserialize_any(Section)
            }
        }

        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                <$ty>::serialize(self, serializer)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Spread {
        width: f64,
    }

    impl Default for Spread {
        fn default() -> Self {
            Self { width: 2.0 }
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(remote = "Self", tag = "type", rename_all = "snake_case", deny_unknown_fields)]
    enum Choice {
        Plain {},
        Spread(Spread),
    }

    tagged_section!(Choice, "a choice's name, or a table with `type`");

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Holder {
        choice: Choice,
    }

    fn read(text: &str) -> Result<Choice, String> {
        toml::from_str::<Holder>(text).map(|h| h.choice).map_err(|e| e.message().to_string())
    }

    #[test]
    fn a_name_is_the_table_with_only_its_type() {
        assert_eq!(read("choice = \"spread\"").unwrap(), Choice::Spread(Spread { width: 2.0 }));
        assert_eq!(read("choice = \"plain\"").unwrap(), Choice::Plain {});
        assert_eq!(read("[choice]\ntype = \"spread\"\nwidth = 3.0\n").unwrap(), Choice::Spread(Spread { width: 3.0 }));
    }

    #[test]
    fn keys_of_another_choice_and_unknown_names_are_refused() {
        let e = read("[choice]\ntype = \"plain\"\nwidth = 3.0\n").unwrap_err();
        assert!(e.contains("unknown field `width`"), "{e}");
        let e = read("[choice]\ntype = \"spread\"\nheight = 3.0\n").unwrap_err();
        assert!(e.contains("unknown field `height`") && e.contains("width"), "{e}");
        let e = read("choice = \"wide\"").unwrap_err();
        assert!(e.contains("unknown variant `wide`") && e.contains("`plain` or `spread`"), "{e}");
        let e = read("[choice]\nwidth = 3.0\n").unwrap_err();
        assert!(e.contains("missing field `type`"), "{e}");
    }

    #[test]
    fn the_table_round_trips() {
        for choice in [Choice::Plain {}, Choice::Spread(Spread { width: 0.25 })] {
            let text = toml::to_string(&Holder { choice: choice.clone() }).unwrap();
            assert_eq!(read(&text).unwrap(), choice, "{text}");
        }
    }

    #[test]
    fn within_prefixes_the_key() {
        let e = Invalid::new("b", "must be positive").within("schedule").within("diffusion");
        assert_eq!(e.to_string(), "`diffusion.schedule.b`: must be positive");
        assert_eq!(Invalid::new("", "bad").within("assignment").key, "assignment");
    }
}
