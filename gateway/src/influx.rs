//! The InfluxDB 2 sink: raw samples and 15-minute unit rollups as line protocol, for plants that
//! already run a time-series store (and Grafana on it).
//!
//! Durable: the lines of every stored message are queued in SQLite in the very transaction that
//! stores the message, and each 15-minute slot a new sample touches is marked dirty there too.
//! The sink sends the oldest queued lines and the dirty slots' unit figures in one write, and
//! takes them off the queue only when the server has accepted it; a failing server is retried
//! with exponential backoff, the queue growing on disk meanwhile.
//!
//! A slot's rollup is written once the slot has settled: no stored sample has touched it for
//! `rollup_settle_s`. So the server gets one value per slot, not a growing partial one with
//! every batch; that matters because not every server resolves a rewrite the way InfluxDB does
//! (last write wins): VictoriaMetrics with deduplication keeps the largest value written at a
//! timestamp. A slot touched again later (a late sample, a replayed backlog) is written again
//! once it settles again.
//!
//! Measurements: `ems_sample` (tags site, device, point, quality; fields `value`, `good`),
//! `ems_unit` (tags unit, kind, workshop; fields energy_kgce, consumed_kgce, recovered_kgce,
//! product_t, electricity_kwh, water_m3, completeness, estimated_share and, with product,
//! kgce_per_t, kwh_per_t, water_m3_per_t; `level` and the first limit's corrected
//! `level1_threshold`..`level3_threshold` when judged; `water_quota_m3_per_t`) and `ems_carrier` (tags unit,
//! device, carrier, role; fields quantity, kgce), all with millisecond timestamps.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ems_core::wire::Telemetry;
use influxdb2::api::write::TimestampPrecision;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::view::Reader;
use ems_energy::counter::SLOT_MS;
use ems_energy::figures::unit_figures;
use ems_energy::indicators::Indicator;
use ems_energy::model::Unit;
use ems_energy::Plant;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// e.g. "http://influxdb:8086".
    pub url: String,
    pub org: String,
    pub bucket: String,
    #[serde(default)]
    pub token: String,
    /// Most queued messages sent in one write.
    #[serde(default = "default_batch_messages")]
    pub batch_messages: usize,
    /// Longest wait between retries while the server fails.
    #[serde(default = "default_max_backoff_s")]
    pub max_backoff_s: u64,
    /// Seconds without a new sample before a 15-minute slot's rollup is written.
    #[serde(default = "default_rollup_settle_s")]
    pub rollup_settle_s: f64,
}

fn default_batch_messages() -> usize {
    2_000
}
fn default_max_backoff_s() -> u64 {
    60
}
fn default_rollup_settle_s() -> f64 {
    30.0
}

/// Every measurement the sink writes, with every field it can carry (a field without a value
/// in a period is left out of that line). Dashboards query only these.
pub const WRITTEN: &[(&str, &[&str])] = &[
    ("ems_sample", &["value", "good"]),
    (
        "ems_unit",
        &[
            "energy_kgce",
            "consumed_kgce",
            "recovered_kgce",
            "product_t",
            "electricity_kwh",
            "water_m3",
            "completeness",
            "estimated_share",
            "kgce_per_t",
            "kwh_per_t",
            "water_m3_per_t",
            "level",
            "level1_threshold",
            "level2_threshold",
            "level3_threshold",
            "water_quota_m3_per_t",
        ],
    ),
    ("ems_carrier", &["quantity", "kgce"]),
];

/// A tag value or key with line protocol's special characters escaped.
pub fn escape_tag(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | '=' | ' ' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The lines of one telemetry message: one per point.
pub fn sample_lines(t: &Telemetry) -> String {
    let mut out = String::new();
    let (site, device) = (escape_tag(&t.site), escape_tag(&t.device));
    for p in &t.points {
        let _ = write!(
            out,
            "ems_sample,site={site},device={device},point={},quality={} ",
            escape_tag(&p.id),
            escape_tag(&p.q.to_string())
        );
        if let Some(v) = p.v {
            let _ = write!(out, "value={v:?},");
        }
        let _ = writeln!(out, "good={} {}", p.q.is_good() && p.v.is_some(), t.ts_ms);
    }
    out
}

/// The lines of one unit's figures for the slot starting at `slot_ms`.
pub fn unit_lines(unit: &Unit, slot_ms: i64, ind: &Indicator) -> String {
    let mut out = String::new();
    let tags = format!(
        "unit={},kind={},workshop={}",
        escape_tag(&unit.id),
        escape_tag(&unit.kind),
        escape_tag(unit.workshop.as_deref().unwrap_or("none"))
    );
    let _ = write!(
        out,
        "ems_unit,{tags} energy_kgce={:?},consumed_kgce={:?},recovered_kgce={:?},product_t={:?},electricity_kwh={:?},water_m3={:?},completeness={:?},estimated_share={:?}",
        ind.energy_kgce,
        ind.consumed_kgce,
        ind.recovered_kgce,
        ind.product_t,
        ind.electricity_kwh,
        ind.water_m3,
        ind.completeness,
        ind.estimated_share
    );
    for (name, v) in [
        ("kgce_per_t", ind.kgce_per_t),
        ("kwh_per_t", ind.kwh_per_t),
        ("water_m3_per_t", ind.water_m3_per_t),
    ] {
        if let Some(v) = v {
            let _ = write!(out, ",{name}={v:?}");
        }
    }
    if let Some(level) = ind.level {
        let _ = write!(out, ",level={level}i");
    }
    // The first limit's corrected thresholds, so that a chart can draw the limit lines.
    if let Some(j) = ind.limits.first() {
        for (name, v) in ["level1_threshold", "level2_threshold", "level3_threshold"]
            .iter()
            .zip(j.thresholds)
            .filter(|(_, v)| v.is_finite())
        {
            let _ = write!(out, ",{name}={v:?}");
        }
    }
    if let Some(q) = &ind.water_quota {
        let _ = write!(out, ",water_quota_m3_per_t={:?}", q.general);
    }
    let _ = writeln!(out, " {slot_ms}");
    for c in &ind.carriers {
        let _ = writeln!(
            out,
            "ems_carrier,unit={},device={},carrier={},role={} quantity={:?},kgce={:?} {slot_ms}",
            escape_tag(&unit.id),
            escape_tag(&c.device),
            escape_tag(&c.carrier),
            escape_tag(&format!("{:?}", c.role).to_lowercase()),
            c.quantity,
            c.kgce
        );
    }
    out
}

/// The sink's view of its queue: the table's rows, and when each dirty slot's version was
/// first seen.
pub struct SinkQueue {
    table: Box<dyn crate::storage::SinkStore>,
    settling: Settling,
}

/// When each dirty slot's version was first seen: a slot is ready once its version has stayed
/// the same for `settle`.
struct Settling {
    settle: Duration,
    seen: HashMap<i64, (i64, Instant)>,
}

impl Settling {
    fn ready(&mut self, slot: i64, version: i64, now: Instant) -> bool {
        let e = self.seen.entry(slot).or_insert((version, now));
        if e.0 != version {
            *e = (version, now);
        }
        now.duration_since(e.1) >= self.settle
    }
}

/// What one write carries, and how to take it off the queue once accepted.
#[derive(Debug, Default)]
pub struct Pending {
    pub body: String,
    pub lines: u64,
    /// The queue ids of the messages it carries.
    ids: Vec<i64>,
    slots: Vec<(i64, i64)>,
}

impl SinkQueue {
    /// The queue in the SQLite database at `path`; slot rollups wait `settle` without change.
    pub fn open(path: &Path, settle: Duration) -> anyhow::Result<SinkQueue> {
        Ok(SinkQueue::new(
            crate::store::sink_queue::SinkTable::open(path)?,
            settle,
        ))
    }

    /// The queue `table` keeps; slot rollups wait `settle` without change.
    pub fn new(table: impl crate::storage::SinkStore + 'static, settle: Duration) -> SinkQueue {
        SinkQueue {
            table: Box::new(table),
            settling: Settling {
                settle,
                seen: HashMap::new(),
            },
        }
    }

    /// Queued messages not yet accepted by the server.
    pub fn depth(&mut self) -> anyhow::Result<i64> {
        self.table.depth()
    }

    /// The oldest queued messages and the settled dirty slots' unit figures, as of `now`.
    pub fn next(
        &mut self,
        plant: &Plant,
        reader: &Reader,
        max_messages: usize,
        now: Instant,
    ) -> anyhow::Result<Pending> {
        let mut p = Pending::default();
        for (id, lines) in self.table.oldest(max_messages)? {
            p.lines += lines.lines().count() as u64;
            p.body.push_str(&lines);
            p.ids.push(id);
        }
        let settling = &mut self.settling;
        p.slots = self
            .table
            .dirty_slots(500)?
            .into_iter()
            .filter(|(slot, version)| settling.ready(*slot, *version, now))
            .collect();
        if !p.slots.is_empty() {
            let periods: Vec<(i64, i64)> = p.slots.iter().map(|(s, _)| (*s, s + SLOT_MS)).collect();
            for unit in &plant.units {
                let figures = unit_figures(plant, reader, unit, &periods)?;
                for ((slot, _), ind) in periods.iter().zip(&figures) {
                    if ind.completeness > 0.0 || ind.energy_kgce != 0.0 || ind.product_t != 0.0 {
                        let lines = unit_lines(unit, *slot, ind);
                        p.lines += lines.lines().count() as u64;
                        p.body.push_str(&lines);
                    }
                }
            }
        }
        Ok(p)
    }

    /// The server accepted `p`: off the queue. A slot dirtied again meanwhile stays dirty.
    pub fn done(&mut self, p: &Pending) -> anyhow::Result<()> {
        self.table.remove(&p.ids, &p.slots)?;
        for (slot, version) in &p.slots {
            if self
                .settling
                .seen
                .get(slot)
                .is_some_and(|e| e.0 == *version)
            {
                self.settling.seen.remove(slot);
            }
        }
        Ok(())
    }
}

/// Sends the queue to the server until `shutdown`; what is left waits in the database.
pub async fn run(
    plant: Arc<Plant>,
    cfg: InfluxConfig,
    queue: SinkQueue,
    reader: Arc<Reader>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = influxdb2::Client::new(cfg.url.clone(), cfg.org.clone(), cfg.token.clone());
    let queue = Arc::new(std::sync::Mutex::new(queue));
    let max_backoff = Duration::from_secs(cfg.max_backoff_s.max(1));
    let mut backoff = Duration::from_secs(1);
    let mut failing = false;
    loop {
        let (q, plant2, reader2, batch) = (
            queue.clone(),
            plant.clone(),
            reader.clone(),
            cfg.batch_messages,
        );
        let pending = tokio::task::spawn_blocking(move || {
            let mut q = q.lock().expect("sink queue lock poisoned");
            let depth = q.depth()?;
            let next = q.next(&plant2, &reader2, batch, Instant::now())?;
            Ok::<_, anyhow::Error>((next, depth))
        })
        .await?;
        let (pending, depth) = match pending {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "Cannot read the sink queue.");
                (Pending::default(), 0)
            }
        };
        metrics.sink_queue_depth.set(depth);
        if pending.body.is_empty() {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                () = shutdown.cancelled() => return Ok(()),
            }
        }
        let written = tokio::select! {
            r = client.write_line_protocol_with_precision(&cfg.org, &cfg.bucket, pending.body.clone(), TimestampPrecision::Milliseconds) => r,
            () = shutdown.cancelled() => return Ok(()),
        };
        match written {
            Ok(()) => {
                let q = queue.clone();
                tokio::task::spawn_blocking(move || {
                    q.lock()
                        .expect("sink queue lock poisoned")
                        .done(&pending)
                        .map(|()| pending.lines)
                })
                .await?
                .map(|lines| metrics.sink_lines_written.inc_by(lines))?;
                if failing {
                    tracing::info!(url = %cfg.url, "Time-series server accepts writes again.");
                }
                failing = false;
                backoff = Duration::from_secs(1);
            }
            Err(e) => {
                metrics.sink_write_errors.inc();
                if !failing {
                    tracing::warn!(url = %cfg.url, error = %e, "Time-series server write failed; queued on disk, retrying with backoff.");
                }
                failing = true;
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return Ok(()),
                }
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ems_core::wire::PointValue;
    use ems_core::Quality;

    /// Measurement and field names of line-protocol lines (values here never hold spaces).
    fn fields_of(lines: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for line in lines.lines() {
            let mut parts = line.split(' ');
            let series = parts.next().unwrap();
            let measurement = series.split(',').next().unwrap();
            for field in parts.next().unwrap().split(',') {
                let name = field.split('=').next().unwrap();
                out.push((measurement.to_owned(), name.to_owned()));
            }
        }
        out
    }

    #[test]
    fn a_judged_period_writes_every_field_the_dashboards_may_query() {
        use ems_energy::indicators::CarrierFigure;
        use ems_energy::limits::{Figure, Judgement, WaterJudgement};
        use ems_energy::model::Role;
        let unit = Unit {
            id: "bf1".into(),
            name: "BF".into(),
            kind: "blast_furnace".into(),
            function: Default::default(),
            enterprise: None,
            site: None,
            workshop: Some("ironmaking".into()),
            status: Default::default(),
            flows: Vec::new(),
            limits: Vec::new(),
            water_quota: None,
            corrections: Default::default(),
            cells: None,
        };
        let ind = Indicator {
            start: String::new(),
            end: String::new(),
            energy_kgce: 37_300.0,
            consumed_kgce: 40_000.0,
            recovered_kgce: 2_700.0,
            product_t: 100.0,
            kgce_per_t: Some(373.0),
            electricity_kwh: 5_000.0,
            kwh_per_t: Some(50.0),
            electricity_generated_kwh: 0.0,
            dc_kwh: 0.0,
            dc_kwh_per_t: None,
            line_kah: 0.0,
            current_efficiency_pct: None,
            water_m3: 120.0,
            water_m3_per_t: Some(1.2),
            fuel_kgce: 33_900.0,
            fuel_kgce_per_t: Some(339.0),
            fuel_unknown: Vec::new(),
            completeness: 1.0,
            reportable: true,
            estimated_share: 0.0,
            carriers: vec![CarrierFigure {
                device: "bf1-coke".into(),
                carrier: "coke".into(),
                role: Role::Consumed,
                quantity: 35.0,
                unit: "t".into(),
                kgce: 33_900.0,
                own_use: false,
                kgce_per_unit: Some(968.57),
                measured_lhv_share: None,
            }],
            bases: Default::default(),
            level: Some(2),
            within_limit: Some(true),
            limits: vec![Judgement {
                code: "GB 21256-2025".into(),
                standard: "GB 21256-2025".into(),
                edition: "2025".into(),
                indicator: Figure::KgcePerT,
                value: 373.0,
                thresholds: [361.0, 370.0, 385.0],
                level: Some(3),
                limit_level: 3,
                within_limit: true,
                note: None,
            }],
            indicative: false,
            limit_errors: Vec::new(),
            water_quota: Some(WaterJudgement {
                code: "GB/T 18916.1".into(),
                standard: "GB/T 18916.1-2021".into(),
                value: 1.2,
                general: 2.4,
                advanced: 1.5,
                grade: "advanced",
            }),
            corrections: Default::default(),
        };
        let mut written = fields_of(&unit_lines(&unit, 0, &ind));
        written.extend(fields_of(&sample_lines(&Telemetry {
            v: 1,
            site: "s".into(),
            edge: "e".into(),
            device: "d".into(),
            seq: 1,
            ts_ms: 0,
            points: vec![PointValue {
                id: "p".into(),
                v: Some(1.0),
                q: Quality::Good,
            }],
            signed: None,
        })));
        written.sort();
        written.dedup();
        let mut declared: Vec<(String, String)> = WRITTEN
            .iter()
            .flat_map(|(m, fields)| fields.iter().map(|f| (m.to_string(), f.to_string())))
            .collect();
        declared.sort();
        assert_eq!(written, declared);
    }

    #[test]
    fn a_slot_is_ready_only_after_it_stopped_changing_for_the_settle_time() {
        let mut s = Settling {
            settle: Duration::from_secs(30),
            seen: HashMap::new(),
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!s.ready(900_000, 1, at(0)));
        assert!(!s.ready(900_000, 1, at(29)));
        // Touched again at 29 s: the wait starts over.
        assert!(!s.ready(900_000, 2, at(29)));
        assert!(!s.ready(900_000, 2, at(58)));
        assert!(s.ready(900_000, 2, at(59)));
        // Another slot has its own clock.
        assert!(!s.ready(1_800_000, 1, at(59)));
    }

    #[test]
    fn samples_become_one_line_per_point_with_tags_escaped() {
        let t = Telemetry {
            v: 1,
            site: "plant a".into(),
            edge: "e".into(),
            device: "m,1".into(),
            seq: 7,
            ts_ms: 1_767_196_800_123,
            points: vec![
                PointValue {
                    id: "total".into(),
                    v: Some(12.5),
                    q: Quality::Good,
                },
                PointValue {
                    id: "flow".into(),
                    v: None,
                    q: Quality::Timeout,
                },
            ],
            signed: None,
        };
        assert_eq!(
            sample_lines(&t),
            "ems_sample,site=plant\\ a,device=m\\,1,point=total,quality=good value=12.5,good=true 1767196800123\n\
             ems_sample,site=plant\\ a,device=m\\,1,point=flow,quality=timeout good=false 1767196800123\n"
        );
    }
}
