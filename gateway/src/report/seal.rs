//! A JSON report's evidence, and checking a report against the record it was drawn from.
//!
//! [`seal`] adds an `evidence` section to the report: what was asked for and when, the SHA-256
//! of the configuration and the coefficient and limit files it was drawn with, and for each
//! meter the report draws on its ledger (last number, gaps, numbers declared lost with who and
//! why) and its chain of signed messages (protocol v1.2); then the gateway's Ed25519 signature
//! over the whole: the report's JSON with the signature left out, as serde_json writes it
//! (its maps keep their keys in order, so the bytes do not depend on how the report was built).
//!
//! [`check`] is the verifier's side: the signature, the files, and every figure of the report
//! drawn again from the record as it is, at the time the report says it was made. Together with
//! the integrity check (every rollup from the raw samples, every raw sample against its edge's
//! signature), a figure in a report is tied to the readings the meters' edges signed.

use std::collections::{BTreeMap, BTreeSet};

use ems_core::evidence::{EdgeKey, PublicKey};
use serde_json::{json, Value};

use super::{make, of_enterprise, parse_month, Format, Inputs, Month, Request, Span};
use crate::clock::rfc3339;
use crate::view::Reader;

/// What a report is sealed with.
pub struct Seal<'a> {
    /// The gateway's key (`[evidence] report_key_file`); `None`: the evidence goes unsigned.
    pub key: Option<&'a EdgeKey>,
    /// SHA-256 of the configuration and data files ([`crate::Config::digests`]).
    pub digests: &'a BTreeMap<String, String>,
}

/// What the gateway seals with, owned: for tasks that outlive a borrow of the configuration.
pub struct Sealer {
    pub key: Option<EdgeKey>,
    pub digests: BTreeMap<String, String>,
}

impl Sealer {
    pub fn seal(&self) -> Seal<'_> {
        Seal {
            key: self.key.as_ref(),
            digests: &self.digests,
        }
    }
}

fn month_text((y, m): Month) -> String {
    format!("{y}-{m:02}")
}

/// The request as the evidence names it.
fn request_json(r: &Request) -> Value {
    match r {
        Request::Annual { year, enterprise } => {
            json!({"kind": "annual", "year": year, "enterprise": enterprise})
        }
        Request::Compliance { month, enterprise } => {
            json!({"kind": "compliance", "month": month_text(*month), "enterprise": enterprise})
        }
        Request::Savings {
            unit,
            baseline,
            reporting,
            variables,
        } => json!({
            "kind": "savings",
            "unit": unit,
            "baseline": [month_text(baseline.0), month_text(baseline.1)],
            "reporting": [month_text(reporting.0), month_text(reporting.1)],
            "variables": variables.iter().map(|(d, p)| format!("{d}/{p}")).collect::<Vec<_>>(),
        }),
    }
}

fn request_of(v: &Value) -> anyhow::Result<Request> {
    let text = |key: &str| v[key].as_str().map(str::to_owned);
    let months = |key: &str| -> anyhow::Result<(Month, Month)> {
        let pair = v[key]
            .as_array()
            .filter(|a| a.len() == 2)
            .ok_or_else(|| anyhow::anyhow!("`{key}` is not two months"))?;
        let month = |x: &Value| parse_month(x.as_str().unwrap_or_default());
        Ok((month(&pair[0])?, month(&pair[1])?))
    };
    Ok(match v["kind"].as_str() {
        Some("annual") => Request::Annual {
            year: v["year"]
                .as_i64()
                .and_then(|y| i32::try_from(y).ok())
                .ok_or_else(|| anyhow::anyhow!("no year"))?,
            enterprise: text("enterprise"),
        },
        Some("compliance") => Request::Compliance {
            month: parse_month(v["month"].as_str().unwrap_or_default())?,
            enterprise: text("enterprise"),
        },
        Some("savings") => Request::Savings {
            unit: text("unit").ok_or_else(|| anyhow::anyhow!("no unit"))?,
            baseline: months("baseline")?,
            reporting: months("reporting")?,
            variables: super::parse_variables(
                &v["variables"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
                    .unwrap_or_default(),
            )?,
        },
        other => anyhow::bail!("unknown report kind {other:?}"),
    })
}

/// The meters a report draws on: its enterprise's (the whole plant's for a unit's savings).
fn devices(inputs: &Inputs, request: &Request) -> anyhow::Result<BTreeSet<String>> {
    let enterprise = match request {
        Request::Annual { enterprise, .. } | Request::Compliance { enterprise, .. } => {
            enterprise.as_deref()
        }
        Request::Savings { .. } => {
            return Ok(inputs.plant.flows().map(|f| f.device.clone()).collect())
        }
    };
    let plant = of_enterprise(inputs.plant, enterprise)?;
    Ok(plant.flows().map(|f| f.device.clone()).collect())
}

/// Each of the meters `wanted` as the record holds it now: its ledger (last number, gaps,
/// numbers declared lost with who and why) and its chain of signed messages; and for each of
/// `spans`, the messages of that period the figures are drawn from ([`periods`]).
pub fn meters(
    reader: &Reader,
    wanted: &BTreeSet<String>,
    spans: &[Span],
) -> anyhow::Result<Vec<Value>> {
    reader
        .devices()?
        .into_iter()
        .filter(|d| wanted.contains(&d.id))
        .map(|d| {
            Ok(json!({
                "device": d.id, "site": d.site, "edge": d.edge, "last_seq": d.last_seq,
                "messages": d.messages, "missing": d.missing, "gaps": d.gaps,
                "lost_ranges": d.lost_ranges, "chain": d.chain,
                "periods": periods(reader, &d.id, spans)?,
            }))
        })
        .collect()
}

/// The messages of `device` in each of `spans` the record holds: the period, its first and
/// last sequence number and how many (null numbers and 0 where it holds none).
fn periods(reader: &Reader, device: &str, spans: &[Span]) -> anyhow::Result<Value> {
    spans
        .iter()
        .map(|&(from, to)| {
            let held = reader.seq_span(device, from, to)?;
            Ok(json!({
                "from": rfc3339(from), "to": rfc3339(to),
                "from_ms": from, "to_ms": to,
                "first_seq": held.map(|s| s.first_seq),
                "last_seq": held.map(|s| s.last_seq),
                "messages": held.map_or(0, |s| s.messages),
            }))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Value::Array)
}

/// Puts `evidence` (with `gateway_key`) into the JSON object `doc` and signs the whole with
/// `seal`'s key: the signature goes into the evidence, over `doc` as serde_json writes it with
/// the signature left out.
pub fn sign_into(doc: &mut Value, mut evidence: Value, seal: &Seal) -> anyhow::Result<()> {
    evidence["gateway_key"] = json!(seal.key.map(EdgeKey::public_hex));
    evidence["files_sha256"] = json!(seal.digests);
    let object = doc
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("a sealed document is a JSON object"))?;
    object.insert("evidence".into(), evidence.clone());
    let signature = seal
        .key
        .map(|k| k.sign_bytes(&serde_json::to_vec(doc).expect("a JSON value serializes")));
    evidence["signature"] = json!(signature);
    doc["evidence"] = evidence;
    Ok(())
}

/// The key that signed `doc` (sealed by [`sign_into`]), if its signature verifies; an error
/// says why not. `doc` is left as it was.
pub fn signed_by(doc: &Value) -> Result<PublicKey, String> {
    let evidence = doc["evidence"].as_object().ok_or("no evidence section")?;
    let key = evidence
        .get("gateway_key")
        .and_then(Value::as_str)
        .ok_or("not signed: no gateway_key")?;
    let key = PublicKey::from_hex(key).map_err(|e| format!("gateway_key: {e}"))?;
    let sig = evidence
        .get("signature")
        .and_then(Value::as_str)
        .ok_or("not signed: no signature")?;
    let mut unsigned = doc.clone();
    unsigned["evidence"]
        .as_object_mut()
        .expect("an object, as above")
        .remove("signature");
    if key.verifies(
        &serde_json::to_vec(&unsigned).expect("a JSON value serializes"),
        sig,
    ) {
        Ok(key)
    } else {
        Err(
            "the gateway's signature does not verify: the document was changed after it was signed"
                .into(),
        )
    }
}

/// A sealed JSON report: its bytes, and its evidence section (what a PDF's evidence page shows).
pub struct Sealed {
    pub json: Vec<u8>,
    pub evidence: Value,
}

/// The `report` with its evidence section, signed if `seal` has a key.
pub fn seal(
    mut report: Value,
    inputs: &Inputs,
    request: &Request,
    seal: &Seal,
) -> anyhow::Result<Sealed> {
    let evidence = json!({
        "request": request_json(request),
        "made": rfc3339(inputs.now_ms),
        "made_ms": inputs.now_ms,
        "meters": meters(
            inputs.reader,
            &devices(inputs, request)?,
            &request.spans(inputs.plant)?,
        )?,
    });
    sign_into(&mut report, evidence, seal)?;
    let mut json = serde_json::to_vec_pretty(&report)?;
    json.push(b'\n');
    Ok(Sealed {
        json,
        evidence: report["evidence"].take(),
    })
}

/// Checks a sealed report against the record: its signature (by `expected`, if given), the
/// files it was drawn with, and each figure drawn again. Returns what differs (empty: it holds).
pub fn check(
    report: &[u8],
    inputs: &Inputs,
    digests: &BTreeMap<String, String>,
    expected: Option<&PublicKey>,
) -> anyhow::Result<Vec<String>> {
    let mut report: Value = serde_json::from_slice(report)?;
    // The signature over the report as it came, before its evidence is taken apart.
    let signer = signed_by(&report);
    let evidence = report
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("a report is a JSON object"))?
        .remove("evidence")
        .ok_or_else(|| anyhow::anyhow!("the report has no evidence section"))?;
    let mut findings = Vec::new();
    match signer {
        Ok(key) => {
            if let Some(expected) = expected.filter(|e| **e != key) {
                findings.push(format!(
                    "signed by key {}, not the gateway's {}",
                    key.to_hex(),
                    expected.to_hex()
                ));
            }
        }
        Err(why) => findings.push(why),
    }

    let files: BTreeMap<String, String> =
        serde_json::from_value(evidence["files_sha256"].clone()).unwrap_or_default();
    for (name, now) in digests {
        match files.get(name) {
            Some(then) if then == now => {}
            then => findings.push(format!(
                "{name}: drawn with sha256 {}, the gateway's is now {now}",
                then.map_or("(not named)", String::as_str)
            )),
        }
    }

    let request = request_of(&evidence["request"])?;
    let made_ms = evidence["made_ms"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("the evidence names no made_ms"))?;
    let again = make(
        &Inputs {
            now_ms: made_ms,
            ..*inputs
        },
        &request,
        Format::Json,
        &|| anyhow::bail!("no font is needed for JSON"),
        |_, _| {},
        None,
    )?;
    let again: Value = serde_json::from_slice(&again)?;
    differences("", &report, &again, &mut findings);
    // The messages each period's figures were drawn from, counted again: a message stored
    // since, or one gone, changes them.
    for (i, meter) in evidence["meters"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if meter.get("periods").is_none() {
            continue; // sealed before periods were part of the evidence
        }
        let device = meter["device"].as_str().unwrap_or_default();
        let spans: Vec<Span> = meter["periods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["from_ms"].as_i64()?, p["to_ms"].as_i64()?)))
            .collect();
        let now = periods(inputs.reader, device, &spans)?;
        differences(
            &format!("/evidence/meters/{i}/periods"),
            &meter["periods"],
            &now,
            &mut findings,
        );
    }
    Ok(findings)
}

/// Every place where the report and the figures drawn again differ.
fn differences(path: &str, report: &Value, again: &Value, out: &mut Vec<String>) {
    match (report, again) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            let null = Value::Null;
            for k in keys {
                differences(
                    &format!("{path}/{k}"),
                    a.get(k).unwrap_or(&null),
                    b.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences(&format!("{path}/{i}"), x, y, out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!(
            "{path}: the report says {}, the record gives {}",
            short(a),
            short(b)
        )),
    }
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}
