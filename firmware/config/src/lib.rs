//! Loading typed TOML configuration so that every error names the file, the line and the key.
//!
//! Each component declares its configuration as `#[serde(deny_unknown_fields)]` structs; this
//! crate only turns parse and validation failures into one message an operator can act on:
//! `edge.toml:14:1: key devices[2].unit_id: invalid type: string "a", expected u8`.

use std::fmt;
use std::ops::Range;
#[cfg(feature = "fs")]
use std::path::Path;
use std::path::PathBuf;

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
    #[cfg(feature = "fs")]
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
        self.parse_at(&self.text, 0, |path| path)
    }

    /// Deserializes `text`, a stretch of this file starting at byte `offset`, so that errors
    /// point at the file's lines; `key` turns serde's path in `text` (absent for the whole of
    /// it) into the key an error names.
    fn parse_at<T: DeserializeOwned>(
        &self,
        text: &str,
        offset: usize,
        key: impl Fn(Option<String>) -> Option<String>,
    ) -> Result<T, ConfigError> {
        let error = |e: &toml::de::Error, path: Option<String>| {
            let (line, column) = e.span().map(|s| self.line_col(offset + s.start)).unzip();
            ConfigError {
                file: self.file.clone(),
                line,
                column,
                key: key(path),
                message: e.message().trim_end().to_owned(),
            }
        };
        // The parsed document borrows its strings from the text: a large site file costs
        // little more than its text while it is read (an edge board counts its megabytes).
        let de = toml::Deserializer::parse(text).map_err(|e| error(&e, None))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            error(e.inner(), (path != ".").then_some(path))
        })
    }

    /// Deserializes the file into `T` without its `[[name]]` tables, which come back as
    /// [`Part`]s to read one at a time. A site file lists thousands of meters: parsed whole,
    /// its document takes some twenty times the text's size; an edge board counts megabytes.
    pub fn parse_apart<'s, T: DeserializeOwned>(
        &'s self,
        name: &'s str,
    ) -> Result<(T, Vec<Part<'s>>), ConfigError> {
        let ranges = array_tables(&self.text, name);
        if ranges.is_empty() {
            return Ok((self.parse()?, Vec::new()));
        }
        // The rest of the file with those tables blanked out byte for byte, so that spans and
        // lines stay those of the file.
        let mut rest = self.text.clone().into_bytes();
        for t in &ranges {
            rest[t.start..t.body.end].fill(b' ');
        }
        let rest = String::from_utf8(rest).expect("spaces are UTF-8");
        let parsed = self.parse_at(&rest, 0, |path| path)?;
        drop(rest);
        let parts = ranges
            .into_iter()
            .enumerate()
            .map(|(index, t)| Part {
                src: self,
                name,
                index,
                body: t.body,
            })
            .collect();
        Ok((parsed, parts))
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

/// Where one `[[name]]` table lies in the text: its header, and its body up to the next header.
struct ArrayTable {
    start: usize,
    body: Range<usize>,
}

/// The top-level `[[name]]` tables of `text`, each from its header to the next table header
/// (or the end). Strings and comments are single tokens of toml's lexer, so a header-like
/// line inside a multi-line string is not taken for one.
fn array_tables(text: &str, name: &str) -> Vec<ArrayTable> {
    use toml_parser::lexer::TokenKind as K;
    let mut found = Vec::new();
    // The `[[name]]` table being read: where its header starts and ends.
    let mut open: Option<(usize, usize)> = None;
    // A header being read: its tokens so far (whitespace aside), with their spans.
    let mut header: Option<Vec<(K, &str, Range<usize>)>> = None;
    let mut line_start = true;
    let mut depth = 0usize;
    let mut end_header = |tokens: &[(K, &str, Range<usize>)], at: usize| {
        let start = tokens.first().map_or(at, |t| t.2.start);
        // Any table header ends the table before it.
        if let Some((s, header_end)) = open.take() {
            found.push(ArrayTable {
                start: s,
                body: header_end..start,
            });
        }
        // `[[` and `]]` are single tokens to TOML: `[[devices] ]` is not a header of ours
        // (the parser of the rest then says what is wrong with it, and where).
        if let [(K::LeftSquareBracket, _, a), (K::LeftSquareBracket, _, b), (K::Atom, n, _), (K::RightSquareBracket, _, c), (K::RightSquareBracket, _, d)] =
            tokens
        {
            if *n == name && a.end == b.start && c.end == d.start {
                open = Some((start, d.end));
            }
        }
    };
    for t in toml_parser::Source::new(text).lex() {
        let (kind, span) = (t.kind(), t.span());
        let range = span.start()..span.end();
        let raw = &text[range.clone()];
        if let Some(tokens) = &mut header {
            match kind {
                K::Whitespace => continue,
                K::LeftSquareBracket
                | K::RightSquareBracket
                | K::Atom
                | K::Dot
                | K::BasicString
                | K::LiteralString => {
                    tokens.push((kind, raw, range));
                    continue;
                }
                _ => {
                    end_header(tokens, range.start);
                    header = None;
                }
            }
        }
        match kind {
            K::LeftSquareBracket if line_start && depth == 0 => {
                header = Some(vec![(kind, raw, range)])
            }
            // Brackets of values (arrays, inline tables) may span lines.
            K::LeftSquareBracket | K::LeftCurlyBracket => depth += 1,
            K::RightSquareBracket | K::RightCurlyBracket => depth = depth.saturating_sub(1),
            _ => {}
        }
        line_start = match kind {
            K::Newline => true,
            K::Whitespace => line_start,
            _ => false,
        };
    }
    if let Some(tokens) = header {
        end_header(&tokens, text.len());
    }
    // The end of the file closes the last table as a header would.
    end_header(&[], text.len());
    found
}

/// One `[[name]]` table of a [`Source`], read on its own ([`Source::parse_apart`]); its errors
/// name the file's line and the key as `name[index].key`.
#[derive(Debug, Clone)]
pub struct Part<'s> {
    src: &'s Source,
    name: &'s str,
    index: usize,
    /// The table's text after its header line's `]]`.
    body: Range<usize>,
}

impl Part<'_> {
    /// Deserializes the table. Spans in the result count from the table's text: give them to
    /// [`Part::error_at`].
    pub fn parse<U: DeserializeOwned>(&self) -> Result<U, ConfigError> {
        let text = &self.src.text[self.body.clone()];
        self.src.parse_at(text, self.body.start, |path| {
            Some(self.key(path.as_deref()))
        })
    }

    /// The key of this table, or of `key` in it.
    fn key(&self, key: Option<&str>) -> String {
        match key {
            Some(k) => format!("{}[{}].{k}", self.name, self.index),
            None => format!("{}[{}]", self.name, self.index),
        }
    }

    /// An error about the value at `span` (of what [`Part::parse`] returned) under `key`.
    pub fn error_at(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let at = self.body.start;
        self.src.error_at(
            span.start + at..span.end + at,
            &self.key(Some(key)),
            message,
        )
    }

    /// An error about `key` of this table that has no single place in it.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.src.error(&self.key(Some(key)), message)
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

    /// A file whose `[[devices]]` tables sit among things that look like headers but are not.
    const SITE: &str = r#"name = "x"
note = """
[[devices]]
is text, not a table
"""
levels = [
[1, 2],
[3],
]

[[devices]]
unit_id = 1
profile = "a"

[[ devices ]] # with a comment
unit_id = 2
profile = "b"
registers = [
[1, 2],
[3],
]
[mqtt]
host = "h"

[[devices]]
unit_id = 3
profile = "c""#;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Site {
        name: String,
        note: String,
        levels: Vec<Vec<u8>>,
        mqtt: Mqtt,
        #[serde(default)]
        devices: Vec<Dev>,
    }
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Mqtt {
        host: String,
    }
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Dev {
        unit_id: u8,
        profile: String,
        #[serde(default)]
        registers: Vec<Vec<u16>>,
    }

    #[test]
    fn tables_read_apart_are_what_the_whole_file_says() {
        let s = src(SITE);
        let whole: Site = s.parse().unwrap();
        assert_eq!(whole.devices.len(), 3);
        let (mut rest, parts): (Site, _) = s.parse_apart("devices").unwrap();
        assert!(rest.devices.is_empty(), "the tables are not in the rest");
        rest.devices = parts.iter().map(|p| p.parse().unwrap()).collect();
        assert_eq!(rest, whole);
    }

    #[test]
    fn an_error_in_a_table_read_apart_names_its_line_and_index() {
        let s = src(&SITE.replace("unit_id = 2", "unit_id = \"two\""));
        let (_, parts): (Site, _) = s.parse_apart("devices").unwrap();
        let err = parts[1].parse::<Dev>().unwrap_err();
        assert_eq!(err.line, Some(16), "{err}");
        assert_eq!(err.key.as_deref(), Some("devices[1].unit_id"), "{err}");

        let s = src("name = \"x\"\n[[devices]]\nunit_id = 1\nprofile = \"nope\"\n");
        let (_, parts): (toml::Table, _) = s.parse_apart("devices").unwrap();
        let d: Device = parts[0].parse().unwrap();
        let err = parts[0].error_at(d.profile.span(), "profile", "unknown profile `nope`");
        assert_eq!(
            err.to_string(),
            "site/edge.toml:4:11: key `devices[0].profile`: unknown profile `nope`"
        );
    }

    #[test]
    fn a_header_with_its_brackets_apart_is_an_error_at_its_line_not_a_panic() {
        // Found by the edge_config fuzz target: `] ]` was taken for our `]]`, and the header's
        // end looked for in text that did not hold it.
        let s =
            src("name = \"x\"\n[[devices] ]=id\n \"a\"\nunit_id = 1\n[[devices]]\nunit_id = 2\n");
        let err = s.parse_apart::<toml::Table>("devices").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        assert!(err.to_string().starts_with("site/edge.toml:2:"), "{err}");

        // Space inside the brackets is TOML's own, and the table is still read apart.
        let s = src("name = \"x\"\n[[ devices ]]\nunit_id = 1\nprofile = \"p\"\n");
        let (_, parts): (toml::Table, _) = s.parse_apart("devices").unwrap();
        let d: Device = parts[0].parse().unwrap();
        assert_eq!(d.unit_id, 1);
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
