//! Enrolling an edge's public key: `ems-gateway enrol` writes it into the configuration's
//! `[evidence.edge_keys]`, keeping the file's comments and layout, and logs the act in the
//! audit log (who, why, the key and the one it replaces). A key already enrolled for the edge is
//! replaced only when asked: a new key for a board is a new identity, never a typo's accident.

use ems_core::evidence::PublicKey;
use toml_edit::{DocumentMut, Item, Table};

/// The configuration `text` with `edge`'s key set to `key`, and the key it had before, if any.
pub fn with_edge_key(
    text: &str,
    edge: &str,
    key: &PublicKey,
    replace: bool,
) -> anyhow::Result<(String, Option<String>)> {
    anyhow::ensure!(
        crate::config::valid_name(edge),
        "`{edge}` is not an edge name (letters, digits, `-`, `_`, `.`)"
    );
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| anyhow::anyhow!("the configuration is not TOML: {e}"))?;
    let evidence = doc
        .entry("evidence")
        .or_insert_with(|| Item::Table(Table::new()))
        .as_table_like_mut()
        .ok_or_else(|| anyhow::anyhow!("`evidence` is not a table"))?;
    let keys = evidence
        .entry("edge_keys")
        .or_insert(Item::Table(Table::new()))
        .as_table_like_mut()
        .ok_or_else(|| anyhow::anyhow!("`evidence.edge_keys` is not a table"))?;
    let previous = keys
        .get(edge)
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("evidence.edge_keys.{edge} is not a string"))
        })
        .transpose()?;
    let hex = key.to_hex();
    match &previous {
        Some(p) if p.eq_ignore_ascii_case(&hex) => {}
        Some(p) if !replace => anyhow::bail!(
            "edge `{edge}` is enrolled with another key ({p}); pass --replace to enrol the new one"
        ),
        _ => {
            keys.insert(edge, toml_edit::value(hex));
        }
    }
    Ok((doc.to_string(), previous))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> PublicKey {
        let k = ems_core::evidence::EdgeKey::from_seed([seed; 32]);
        PublicKey::from_hex(&k.public_hex()).unwrap()
    }

    #[test]
    fn a_key_is_written_beside_what_is_there_and_replaced_only_when_asked() {
        let text = "# the plant's gateway\n[mqtt]\nhost = \"127.0.0.1\" # the broker\n\n[evidence]\nreport_key_file = \"gateway.key\"\n";
        let (once, previous) = with_edge_key(text, "edge-1", &key(1), false).unwrap();
        assert_eq!(previous, None);
        assert!(
            once.starts_with("# the plant's gateway\n[mqtt]\nhost = \"127.0.0.1\" # the broker\n"),
            "{once}"
        );
        let parsed: toml::Value = toml::from_str(&once).unwrap();
        assert_eq!(
            parsed["evidence"]["report_key_file"].as_str(),
            Some("gateway.key")
        );
        assert_eq!(
            parsed["evidence"]["edge_keys"]["edge-1"].as_str(),
            Some(key(1).to_hex().as_str())
        );
        // The same key again changes nothing; another is refused unless replacing.
        let (again, previous) = with_edge_key(&once, "edge-1", &key(1), false).unwrap();
        assert_eq!(
            (again.as_str(), previous),
            (once.as_str(), Some(key(1).to_hex()))
        );
        let err = with_edge_key(&once, "edge-1", &key(2), false).unwrap_err();
        assert!(err.to_string().contains("--replace"), "{err}");
        let (replaced, previous) = with_edge_key(&once, "edge-1", &key(2), true).unwrap();
        assert_eq!(previous, Some(key(1).to_hex()));
        let parsed: toml::Value = toml::from_str(&replaced).unwrap();
        assert_eq!(
            parsed["evidence"]["edge_keys"]["edge-1"].as_str(),
            Some(key(2).to_hex().as_str())
        );
        // A second edge beside the first; an inline table is kept inline.
        let inline = "[evidence]\nedge_keys = { a = \"x\" }\n";
        let (both, _) = with_edge_key(inline, "edge-2", &key(3), false).unwrap();
        assert!(both.contains("edge_keys = { a = \"x\""), "{both}");
        assert!(with_edge_key("", "no/edge", &key(1), false).is_err());
        assert!(with_edge_key("evidence = 3", "edge-1", &key(1), false).is_err());
    }
}
