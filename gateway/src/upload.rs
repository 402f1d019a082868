//! Upload to the provincial online-monitoring platform: real-time indicators every 15 minutes
//! (30 or 60 where the province relaxes it), daily and monthly figures, to every configured
//! endpoint over HTTPS (docs/upload.md).
//!
//! A record is made once its period is over (plus `settle_s` for late samples) and goes into a
//! durable outbox in the gateway's database, exactly as it will be sent (the mapping of field
//! names and energy-type codes already applied). Each endpoint has its own cursor: the next
//! record goes only after the previous one is acknowledged (an answer naming its `record_id`),
//! retried with backoff for as long as it takes, across restarts. Receivers deduplicate by
//! `record_id`, so a record resent after a lost acknowledgement is stored once.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::clock::NowFn;
use crate::report::seal::{self, Sealer};
use crate::storage::UploadStore;
use crate::view::Reader;
use ems_energy::calendar::{buckets, local_rfc3339, Period};
use ems_energy::figures::unit_figures;
use ems_energy::Plant;

/// The upload format's name and version, in every record.
pub const FORMAT: &str = "ems-upload";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    pub endpoints: Vec<EndpointConfig>,
    /// Minutes per real-time record: 15 (the rule), 30 or 60 where the province allows it.
    #[serde(default = "default_realtime_min")]
    pub realtime_interval_min: i64,
    /// Seconds after a period ends before its record is made, for late samples.
    #[serde(default = "default_settle_s")]
    pub settle_s: i64,
    /// The first period to upload (RFC 3339); default: when the uploader first ran.
    #[serde(default)]
    pub from: Option<String>,
    /// Field names and energy-type codes of the platform (TOML, see docs/upload.md).
    #[serde(default)]
    pub mapping: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub id: String,
    pub url: String,
    /// Bearer token the platform issued.
    #[serde(default)]
    pub token: Option<String>,
    /// An extra CA certificate (PEM) for the platform's HTTPS.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
}

fn default_realtime_min() -> i64 {
    15
}
fn default_settle_s() -> i64 {
    120
}
fn default_timeout_s() -> u64 {
    30
}

/// Renames fields and recodes energy types for a platform whose code tables differ from ours.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Our carrier codes (coefficients file) to the platform's energy-type codes.
    #[serde(default)]
    pub energy_codes: BTreeMap<String, String>,
}

impl Mapping {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Mapping> {
        let src = ems_config::Source::read(path)?;
        Ok(src.parse()?)
    }

    /// Applies the mapping to a record: carrier codes first, then field names.
    pub fn apply(&self, v: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| {
                        let v = match (k.as_str(), v) {
                            ("carrier", Value::String(c)) => {
                                Value::String(self.energy_codes.get(&c).cloned().unwrap_or(c))
                            }
                            (_, v) => self.apply(v),
                        };
                        (self.fields.get(&k).cloned().unwrap_or(k), v)
                    })
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.into_iter().map(|v| self.apply(v)).collect()),
            v => v,
        }
    }
}

/// The kinds of record, with how their periods are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Realtime,
    Daily,
    Monthly,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Realtime, Kind::Daily, Kind::Monthly];

    fn name(self) -> &'static str {
        match self {
            Kind::Realtime => "realtime",
            Kind::Daily => "daily",
            Kind::Monthly => "monthly",
        }
    }

    /// Periods starting at `from` (on a boundary) and ended by `until`.
    fn periods(self, plant: &Plant, interval_ms: i64, from: i64, until: i64) -> Vec<(i64, i64)> {
        let all = match self {
            Kind::Realtime => {
                let offset = plant.utc_offset().local_minus_utc() as i64 * 1000;
                let mut start = from - (from + offset).rem_euclid(interval_ms);
                let mut out = Vec::new();
                while start + interval_ms <= until {
                    out.push((start, start + interval_ms));
                    start += interval_ms;
                }
                return out;
            }
            Kind::Daily => buckets(Period::Day, from, until, &plant.calendar),
            Kind::Monthly => buckets(Period::Month, from, until, &plant.calendar),
        };
        all.into_iter().filter(|&(_, e)| e <= until).collect()
    }
}

/// The record streams: a gateway serving a group uploads each enterprise's records from its
/// own plant, each kind with its own cursor (`ID/daily`); one enterprise keeps the plain
/// cursors (`daily`) and the whole plant. (cursor prefix, plant)
fn streams(plant: &Arc<Plant>) -> Vec<(String, Arc<Plant>)> {
    if plant.enterprises.len() > 1 {
        plant
            .enterprises
            .iter()
            .filter_map(|e| e.key())
            .filter_map(|k| Some((format!("{k}/"), Arc::new(plant.of_enterprise(k)?))))
            .collect()
    } else {
        vec![(String::new(), plant.clone())]
    }
}

/// One record of the upload format (before the mapping), for `period` of `kind`.
fn record(
    plant: &Plant,
    reader: &Reader,
    kind: Kind,
    (start, end): (i64, i64),
    now_ms: i64,
) -> anyhow::Result<serde_json::Value> {
    let tz = plant.utc_offset();
    let enterprise = plant.sole_enterprise();
    let code = enterprise
        .and_then(|e| e.code.clone())
        .unwrap_or_else(|| enterprise.map(|e| e.name.clone()).unwrap_or_default());
    let mut units = Vec::with_capacity(plant.units.len());
    let (mut consumed, mut recovered, mut comprehensive) = (0.0, 0.0, 0.0);
    for unit in &plant.units {
        let f = unit_figures(plant, reader, unit, &[(start, end)])?
            .pop()
            .expect("one period asked, one given");
        consumed += f.consumed_kgce;
        recovered += f.recovered_kgce;
        // Non-production users are outside the comprehensive energy (GB/T 2589).
        if unit.function != ems_energy::model::Function::NonProduction {
            comprehensive += f.energy_kgce;
        }
        units.push(serde_json::json!({
            "unit": unit.id,
            "name": unit.name,
            "output_t": f.product_t,
            "energy_kgce": f.energy_kgce,
            "consumed_kgce": f.consumed_kgce,
            "recovered_kgce": f.recovered_kgce,
            "kgce_per_t": f.kgce_per_t,
            "electricity_kwh": f.electricity_kwh,
            "kwh_per_t": f.kwh_per_t,
            "energy_equivalent_kgce": f.bases.equivalent.energy_kgce,
            "energy_equal_value_kgce": f.bases.equal_value.energy_kgce,
            "dc_kwh": f.dc_kwh,
            "dc_kwh_per_t": f.dc_kwh_per_t,
            "line_kah": f.line_kah,
            "current_efficiency_pct": f.current_efficiency_pct,
            "water_m3": f.water_m3,
            "level": f.level,
            "within_limit": f.within_limit,
            "completeness": f.completeness,
            "reportable": f.reportable,
            "estimated_share": f.estimated_share,
            "carriers": f.carriers.iter().map(|c| serde_json::json!({
                "carrier": c.carrier,
                "role": c.role,
                "quantity": c.quantity,
                "unit": c.unit,
                "kgce": c.kgce,
            })).collect::<Vec<_>>(),
        }));
    }
    // The enterprise from its boundary where it has boundary meters (GB/T 2589); otherwise the
    // units' sum, and the record says which.
    let units_sum = comprehensive;
    let boundary = if plant.boundary.is_empty() {
        None
    } else {
        ems_energy::balance::enterprise_balance(plant, reader, &[(start, end)])?.pop()
    };
    let (drawn_from, bases) = match boundary {
        Some(b) => {
            comprehensive = b.enterprise.energy_kgce;
            (
                "boundary",
                [b.enterprise.equivalent_kgce, b.enterprise.equal_value_kgce],
            )
        }
        None => (
            "sum_of_units",
            units
                .iter()
                .zip(&plant.units)
                .filter(|(_, pu)| pu.function != ems_energy::model::Function::NonProduction)
                .map(|(u, _)| u)
                .fold([0.0, 0.0], |a, u| {
                    [
                        a[0] + u["energy_equivalent_kgce"].as_f64().unwrap_or(0.0),
                        a[1] + u["energy_equal_value_kgce"].as_f64().unwrap_or(0.0),
                    ]
                }),
        ),
    };
    let period_start = local_rfc3339(start, tz);
    let mut record = serde_json::json!({
        "format": FORMAT,
        "version": VERSION,
        "record_id": format!("{code}/{}/{period_start}", kind.name()),
        "kind": kind.name(),
        "enterprise_code": code,
        "period_start": period_start,
        "period_end": local_rfc3339(end, tz),
        "generated_at": local_rfc3339(now_ms, tz),
        "consumed_tce": consumed / 1000.0,
        "recovered_tce": recovered / 1000.0,
        "comprehensive_tce": comprehensive / 1000.0,
        "comprehensive_equivalent_tce": bases[0] / 1000.0,
        "comprehensive_equal_value_tce": bases[1] / 1000.0,
        "comprehensive_drawn_from": drawn_from,
        "units_sum_tce": units_sum / 1000.0,
        "units": units,
    });
    // A month's energy per 10 000 yuan, where the enterprise gives its output value.
    if kind == Kind::Monthly {
        let month = chrono::DateTime::from_timestamp_millis(start)
            .map(|t| t.with_timezone(&tz).format("%Y-%m").to_string())
            .unwrap_or_default();
        let values = enterprise.map_or(&[][..], |e| &e.monthly_values[..]);
        let i = ems_energy::intensity::intensity(comprehensive / 1000.0, &[month], values);
        record["output_value_10k_yuan"] = serde_json::json!(i.output_value);
        record["value_added_10k_yuan"] = serde_json::json!(i.value_added);
        record["tce_per_10k_yuan_output"] = serde_json::json!(i.tce_per_10k_yuan_output);
        record["tce_per_10k_yuan_value_added"] = serde_json::json!(i.tce_per_10k_yuan_value_added);
    }
    Ok(record)
}

/// Makes records as they are sent: made from the record, mapped to the platform's names, then
/// sealed with the ledger and chain of every meter its plant draws on and the gateway's
/// signature over what is sent (report/seal.rs), so that the platform can check it with the
/// gateway's public key.
pub struct RecordMaker {
    reader: Arc<Reader>,
    mapping: Mapping,
    sealer: Sealer,
}

impl RecordMaker {
    /// Loads `[upload] mapping`, if any.
    pub fn new(
        reader: Arc<Reader>,
        cfg: &UploadConfig,
        sealer: Sealer,
    ) -> anyhow::Result<RecordMaker> {
        let mapping = match &cfg.mapping {
            Some(p) => Mapping::load(p)?,
            None => Mapping::default(),
        };
        Ok(RecordMaker {
            reader,
            mapping,
            sealer,
        })
    }

    /// The record of `plant`'s `period` of `kind` as it is sent, and its id.
    fn make(
        &self,
        plant: &Plant,
        kind: Kind,
        period: (i64, i64),
        now_ms: i64,
    ) -> anyhow::Result<(String, serde_json::Value)> {
        let made = record(plant, &self.reader, kind, period, now_ms)?;
        let id = made["record_id"].as_str().unwrap_or_default().to_owned();
        let mut sent = self.mapping.apply(made);
        let devices = plant.flows().map(|f| f.device.clone()).collect();
        let meters = seal::meters(&self.reader, &devices, &[period])?;
        let evidence = serde_json::json!({ "meters": meters });
        seal::sign_into(&mut sent, evidence, &self.sealer.seal())?;
        Ok((id, sent))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointStatus {
    pub id: String,
    pub url: String,
    pub records: i64,
    pub confirmed: i64,
    pub pending: i64,
    pub last_confirmed: Option<String>,
    pub last_error: Option<String>,
}

/// What the API shows of the uploader: last error per endpoint (the rest is in the database).
pub type UploadErrors = Arc<Mutex<HashMap<String, String>>>;

/// Opens the outbox where the configuration keeps the record (SQLite's file or PostgreSQL):
/// a connection of its own each time. Blocks: call it off the runtime.
pub type OpenOutbox = Arc<dyn Fn() -> anyhow::Result<Box<dyn UploadStore>> + Send + Sync>;

/// An outbox shared with the blocking tasks that use it.
type Shared = Arc<Mutex<Box<dyn UploadStore>>>;

/// Runs `f` on the outbox off the runtime (its database client may block).
async fn on<T: Send + 'static>(
    outbox: &Shared,
    f: impl FnOnce(&mut dyn UploadStore) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let outbox = outbox.clone();
    tokio::task::spawn_blocking(move || f(&mut **outbox.lock().expect("outbox lock poisoned")))
        .await
        .context("outbox task panicked")?
}

/// Makes records as their periods end and sends them to every endpoint, until `shutdown`.
pub async fn run(
    plant: Arc<Plant>,
    cfg: UploadConfig,
    open: OpenOutbox,
    maker: Arc<RecordMaker>,
    now: NowFn,
    errors: UploadErrors,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        [15, 30, 60].contains(&cfg.realtime_interval_min),
        "[upload] realtime_interval_min must be 15, 30 or 60"
    );
    let from = match &cfg.from {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .with_context(|| format!("[upload] from = {t:?}: not an RFC 3339 time"))?
            .timestamp_millis(),
        None => now(),
    };
    let mut senders = Vec::new();
    for ep in cfg.endpoints.clone() {
        let mut client = reqwest::Client::builder().timeout(Duration::from_secs(ep.timeout_s));
        if let Some(ca) = &ep.ca_file {
            let pem =
                std::fs::read(ca).with_context(|| format!("[upload] ca_file {}", ca.display()))?;
            client = client.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        let opened = open.clone();
        let outbox = tokio::task::spawn_blocking(move || opened()).await??;
        senders.push(tokio::spawn(send(
            ep,
            client.build()?,
            Arc::new(Mutex::new(outbox)),
            now.clone(),
            errors.clone(),
            shutdown.clone(),
        )));
    }
    let interval_ms = cfg.realtime_interval_min * 60_000;
    let opened = open.clone();
    let outbox: Shared = Arc::new(Mutex::new(
        tokio::task::spawn_blocking(move || opened()).await??,
    ));
    let streams = streams(&plant);
    while !shutdown.is_cancelled() {
        // With PostgreSQL, one gateway of the database makes the records.
        if on(&outbox, |o| o.leads(None)).await? {
            let until = now() - cfg.settle_s * 1000;
            for (prefix, part) in &streams {
                for kind in Kind::ALL {
                    let cursor = format!("{prefix}{}", kind.name());
                    let (c, from) = (cursor.clone(), from);
                    let next = on(&outbox, move |o| o.next_start(&c, from)).await?;
                    for period in kind.periods(part, interval_ms, next, until) {
                        let (p, m, t) = (part.clone(), maker.clone(), now());
                        let (id, sent) =
                            tokio::task::spawn_blocking(move || m.make(&p, kind, period, t))
                                .await??;
                        let c = cursor.clone();
                        on(&outbox, move |o| o.push(&c, period, &sent, &id, t)).await?;
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    for s in senders {
        s.await.context("upload sender panicked")??;
    }
    Ok(())
}

/// One endpoint's sender: the next unconfirmed record, again and again until acknowledged.
async fn send(
    ep: EndpointConfig,
    client: reqwest::Client,
    outbox: Shared,
    now: NowFn,
    errors: UploadErrors,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        // With PostgreSQL, one gateway of the database sends to each endpoint.
        let endpoint = ep.id.clone();
        let next = on(&outbox, move |o| {
            Ok(if o.leads(Some(&endpoint))? {
                o.next_for(&endpoint)?
            } else {
                None
            })
        })
        .await?;
        let Some((id, record_id, body)) = next else {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
            }
        };
        let mut req = client
            .post(&ep.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(t) = &ep.token {
            req = req.bearer_auth(t);
        }
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = req.send() => acknowledged(r, &record_id).await,
        };
        match outcome {
            Ok(()) => {
                let (endpoint, at) = (ep.id.clone(), now());
                on(&outbox, move |o| o.confirm(&endpoint, id, at)).await?;
                errors.lock().expect("errors lock").remove(&ep.id);
                backoff = Duration::from_millis(500);
            }
            Err(e) => {
                tracing::warn!(endpoint = %ep.id, record = %record_id, error = %e, "Upload not acknowledged; retrying.");
                errors
                    .lock()
                    .expect("errors lock")
                    .insert(ep.id.clone(), format!("{record_id}: {e}"));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
    Ok(())
}

/// Whether the answer acknowledges this very record: a 2xx with `{"ack": record_id}`.
async fn acknowledged(
    r: reqwest::Result<reqwest::Response>,
    record_id: &str,
) -> anyhow::Result<()> {
    let r = r.context("no answer")?;
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    anyhow::ensure!(
        status.is_success(),
        "HTTP {status}: {}",
        text.chars().take(200).collect::<String>()
    );
    let v: serde_json::Value =
        serde_json::from_str(&text).context("acknowledgement is not JSON")?;
    match v["ack"].as_str() {
        Some(a) if a == record_id => Ok(()),
        Some(a) => anyhow::bail!("acknowledged {a}, not this record"),
        None => anyhow::bail!("no `ack` in the answer"),
    }
}

/// Checks a record against the upload format (what the reference receiver accepts).
pub fn validate(v: &serde_json::Value) -> Result<(), String> {
    let s = |k: &str| v[k].as_str().ok_or(format!("`{k}` must be a string"));
    let n = |o: &serde_json::Value, k: &str| o[k].as_f64().ok_or(format!("`{k}` must be a number"));
    if v["format"] != FORMAT || v["version"] != VERSION {
        return Err(format!("not {FORMAT} version {VERSION}"));
    }
    if s("record_id")?.is_empty() {
        return Err("`record_id` is empty".into());
    }
    if !["realtime", "daily", "monthly"].contains(&s("kind")?) {
        return Err("`kind` must be realtime, daily or monthly".into());
    }
    let t = |k: &str| -> Result<i64, String> {
        chrono::DateTime::parse_from_rfc3339(s(k)?)
            .map(|t| t.timestamp_millis())
            .map_err(|_| format!("`{k}` is not RFC 3339"))
    };
    if t("period_start")? >= t("period_end")? {
        return Err("`period_start` must be before `period_end`".into());
    }
    t("generated_at")?;
    for k in ["consumed_tce", "recovered_tce", "comprehensive_tce"] {
        n(v, k)?;
    }
    let units = v["units"].as_array().ok_or("`units` must be a list")?;
    for u in units {
        u["unit"].as_str().ok_or("a unit needs its `unit` id")?;
        for k in ["output_t", "energy_kgce", "completeness", "estimated_share"] {
            n(u, k)?;
        }
        if !u["reportable"].is_boolean() {
            return Err("`reportable` must be true or false".into());
        }
        for c in u["carriers"]
            .as_array()
            .ok_or("`carriers` must be a list")?
        {
            c["carrier"].as_str().ok_or("a carrier needs its code")?;
            n(c, "quantity")?;
            n(c, "kgce")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_uploads_each_enterprises_records_under_its_own_code() {
        let tables = r#"
[[enterprises]]
id = "steel"
name = "S"
code = "91000000STEEL0001X"
monthly_values = [{ month = "2025-01", output_value = 1000.0, value_added = 200.0 }]
[[enterprises]]
id = "cement"
name = "C"
code = "91000000CEMNT0001X"
[[units]]
id = "bf1"
name = "BF"
kind = "blast_furnace"
enterprise = "steel"
flows = [{ device = "hm", point = "total", role = "product", unit = "t" }]
[[units]]
id = "kiln1"
name = "Kiln"
kind = "kiln"
enterprise = "cement"
flows = [{ device = "clinker", point = "total", role = "product", unit = "t" }]
"#;
        let plant =
            Arc::new(Plant::from_tables(&ems_config::Source::embedded("<test>", tables)).unwrap());
        let dir = std::env::temp_dir().join(format!("ems-upload-group-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut store = crate::store::Store::open(&dir.join("g.db")).unwrap();
        // The hot-metal meter's messages 1 and 3 (2 is missing), the clinker meter never heard.
        let message = |seq: u64| {
            crate::storage::Incoming::built(ems_core::wire::Telemetry {
                v: 1,
                site: "s".into(),
                edge: "e".into(),
                device: "hm".into(),
                seq,
                ts_ms: 1_735_700_000_000 + seq as i64 * 60_000,
                points: vec![],
                signed: None,
            })
        };
        let rules = crate::storage::AccountingRules {
            tracked: Default::default(),
            max_gap_ms: 900_000,
        };
        store
            .write_batch(&[message(1), message(3)], &rules.into(), 0)
            .unwrap();
        let reader = store.reader().unwrap();
        let streams = streams(&plant);
        let cursors: Vec<&str> = streams.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(cursors, ["steel/", "cement/"]);
        let day = (1_735_660_800_000, 1_735_747_200_000);
        let ids: Vec<(String, Vec<String>)> = streams
            .iter()
            .map(|(_, p)| {
                let r = record(p, &reader, Kind::Daily, day, day.1).unwrap();
                assert_eq!(validate(&r), Ok(()), "{r}");
                let units = r["units"].as_array().unwrap();
                let units = units.iter().map(|u| u["unit"].as_str().unwrap().to_owned());
                (r["record_id"].as_str().unwrap().to_owned(), units.collect())
            })
            .collect();
        assert_eq!(
            ids,
            [
                (
                    "91000000STEEL0001X/daily/2025-01-01T00:00:00+08:00".to_owned(),
                    vec!["bf1".to_owned()]
                ),
                (
                    "91000000CEMNT0001X/daily/2025-01-01T00:00:00+08:00".to_owned(),
                    vec!["kiln1".to_owned()]
                ),
            ]
        );
        // A monthly record carries the month's output value where the enterprise gives it.
        let january = (1_735_660_800_000, 1_738_339_200_000);
        let monthly = |i: usize| record(&streams[i].1, &reader, Kind::Monthly, january, january.1);
        let steel = monthly(0).unwrap();
        assert_eq!(validate(&steel), Ok(()), "{steel}");
        assert_eq!(steel["output_value_10k_yuan"], 1000.0);
        assert_eq!(steel["value_added_10k_yuan"], 200.0);
        assert_eq!(
            steel["tce_per_10k_yuan_output"], 0.0,
            "nothing recorded: {steel}"
        );
        assert!(monthly(1).unwrap()["output_value_10k_yuan"].is_null());

        // What is sent is sealed after the mapping: the files' digests, the gateway's key and
        // its signature over the record as the platform receives it.
        let key = ems_core::evidence::EdgeKey::from_seed([7; 32]);
        let public = key.public_hex();
        let sealer = Sealer {
            key: Some(key),
            digests: [("limits".to_owned(), "ab".to_owned())].into(),
        };
        let maker = RecordMaker {
            reader: Arc::new(reader),
            mapping: Mapping {
                fields: [("output_t".to_owned(), "cl".to_owned())].into(),
                ..Mapping::default()
            },
            sealer,
        };
        let (id, sent) = maker.make(&streams[0].1, Kind::Daily, day, day.1).unwrap();
        assert_eq!(id, "91000000STEEL0001X/daily/2025-01-01T00:00:00+08:00");
        assert_eq!(sent["units"][0]["cl"], 0.0, "mapped: {sent}");
        assert_eq!(sent["evidence"]["files_sha256"]["limits"], "ab");
        let meters = &sent["evidence"]["meters"];
        assert_eq!(meters.as_array().map(Vec::len), Some(1), "{meters}");
        assert_eq!(
            (
                &meters[0]["device"],
                &meters[0]["last_seq"],
                &meters[0]["missing"]
            ),
            (
                &serde_json::json!("hm"),
                &serde_json::json!(3),
                &serde_json::json!(1)
            ),
            "{meters}"
        );
        assert_eq!(seal::signed_by(&sent).map(|k| k.to_hex()), Ok(public));
        let mut changed = sent.clone();
        changed["comprehensive_tce"] = serde_json::json!(0.5);
        let why = seal::signed_by(&changed).unwrap_err();
        assert!(why.contains("does not verify"), "{why}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_mapping_renames_fields_and_recodes_carriers_everywhere() {
        let m = Mapping {
            fields: [
                ("output_t".to_owned(), "cl".to_owned()),
                ("carrier".to_owned(), "nyzl".to_owned()),
            ]
            .into(),
            energy_codes: [("electricity".to_owned(), "3300".to_owned())].into(),
        };
        let v = serde_json::json!({"units": [{"output_t": 5.0, "carriers": [{"carrier": "electricity"}, {"carrier": "coke"}]}]});
        assert_eq!(
            m.apply(v),
            serde_json::json!({"units": [{"cl": 5.0, "carriers": [{"nyzl": "3300"}, {"nyzl": "coke"}]}]})
        );
    }

    #[test]
    fn the_validator_names_what_is_wrong() {
        let good = serde_json::json!({
            "format": FORMAT, "version": VERSION, "record_id": "x/realtime/1", "kind": "realtime",
            "period_start": "2025-01-01T00:00:00+08:00", "period_end": "2025-01-01T00:15:00+08:00",
            "generated_at": "2025-01-01T00:17:00+08:00", "consumed_tce": 1.0, "recovered_tce": 0.0,
            "comprehensive_tce": 1.0,
            "units": [{"unit": "k", "output_t": 1.0, "energy_kgce": 1.0, "completeness": 1.0,
                       "estimated_share": 0.0, "reportable": true,
                       "carriers": [{"carrier": "coke", "quantity": 1.0, "kgce": 971.4}]}],
        });
        assert_eq!(validate(&good), Ok(()));
        let mut bad = good.clone();
        bad["kind"] = "weekly".into();
        assert!(validate(&bad).unwrap_err().contains("`kind`"));
        let mut bad = good.clone();
        bad["period_end"] = bad["period_start"].clone();
        assert!(validate(&bad).unwrap_err().contains("before"));
        let mut bad = good;
        bad["units"][0]["carriers"][0]["kgce"] = "lots".into();
        assert!(validate(&bad).unwrap_err().contains("`kgce`"));
    }
}
