//! Loading typed TOML configuration so that every error names the file, the line and the key.
//!
//! Each component declares its configuration as `#[serde(deny_unknown_fields)]` structs; this
//! crate only turns parse and validation failures into one message an operator can act on:
//! `edge.toml:14:1: key devices[2].unit_id: invalid type: string "a", expected u8`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use toml::Spanned;

/// A configuration problem located in its file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// One-based line and column, when the problem has a place in the file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path of the key, e.g. `devices[2].unit_id`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The text of one configuration file, kept so that later validation can point at lines.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: PathBuf,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Ok(Source {
            file: path.to_owned(),
            text,
        })
    }

    /// A source that lives in the binary (embedded defaults); `name` stands in for the path.
    pub fn embedded(name: &str, text: &str) -> Self {
        Source {
            file: PathBuf::from(name),
            text: text.to_owned(),
        }
    }

    /// Deserializes the whole file into `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        // The parsed document borrows its strings from the text: a large site file costs
        // little more than its text while it is read (an edge board counts its megabytes).
        let de = toml::Deserializer::parse(&self.text).map_err(|e| self.toml_error(&e, None))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            self.toml_error(e.inner(), (path != ".").then_some(path))
        })
    }

    fn toml_error(&self, e: &toml::de::Error, key: Option<String>) -> ConfigError {
        let (line, column) = e.span().map(|s| self.line_col(s.start)).unzip();
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            key,
            message: e.message().trim_end().to_owned(),
        }
    }

    /// An error about a value that parsed but is wrong (unknown reference, duplicate id, ...).
    pub fn error_at(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.line_col(span.start);
        ConfigError {
            file: self.file.clone(),
            line: Some(line),
            column: Some(column),
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    /// An error that has no single place in the file.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: None,
            column: None,
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        #[allow(dead_code)]
        name: String,
        devices: Vec<Device>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Device {
        #[allow(dead_code)]
        unit_id: u8,
        profile: Spanned<String>,
    }

    fn src(text: &str) -> Source {
        Source {
            file: PathBuf::from("site/edge.toml"),
            text: text.to_owned(),
        }
    }

    #[test]
    fn wrong_type_names_file_line_and_key() {
        let s = src("name = \"x\"\n\n[[devices]]\nunit_id = 1\nprofile = \"a\"\n\n[[devices]]\nunit_id = \"two\"\nprofile = \"b\"\n");
        let err = s.parse::<Conf>().unwrap_err();
        assert_eq!(err.line, Some(8));
        assert_eq!(err.key.as_deref(), Some("devices[1].unit_id"));
        let text = err.to_string();
        assert!(text.starts_with("site/edge.toml:8:"), "{text}");
        assert!(text.contains("devices[1].unit_id"), "{text}");
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let s = src("name = \"x\"\ndevices = []\npoll_intervall = 5\n");
        let err = s.parse::<Conf>().unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
        assert!(err.message.contains("poll_intervall"), "{err}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let err = src("name = \"x\"\ndevices = [\n")
            .parse::<Conf>()
            .unwrap_err();
        assert!(err.line.is_some(), "{err}");
    }

    #[test]
    fn validation_errors_point_at_the_value() {
        let s = src("name = \"x\"\n[[devices]]\nunit_id = 1\nprofile = \"nope\"\n");
        let conf: Conf = s.parse().unwrap();
        let p = &conf.devices[0].profile;
        let err = s.error_at(p.span(), "devices[0].profile", "unknown profile `nope`");
        assert_eq!(
            err.to_string(),
            "site/edge.toml:4:11: key `devices[0].profile`: unknown profile `nope`"
        );
    }
}
