//! A report's figures as one long CSV table: one row per figure, with the section, subject
//! and period it belongs to and its unit. The same figures as the JSON, in a shape a
//! spreadsheet or the authority's import can filter without knowing the report's structure.

use serde::Serialize;

use super::annual::AnnualReport;
use ems_energy::indicators::Indicator;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    pub section: &'static str,
    pub subject: String,
    /// Start of the period (local RFC 3339), or the report's start for the whole period.
    pub period: String,
    pub figure: &'static str,
    /// Empty when the figure is not defined (no product, not judged, month not begun).
    pub value: String,
    pub unit: String,
}

fn num(v: f64) -> String {
    v.to_string()
}

fn opt(v: Option<f64>) -> String {
    v.map(num).unwrap_or_default()
}

fn push_indicator(out: &mut Vec<Figure>, section: &'static str, subject: &str, i: &Indicator) {
    let mut f = |figure: &'static str, value: String, unit: &'static str| {
        out.push(Figure {
            section,
            subject: subject.to_owned(),
            period: i.start.clone(),
            figure,
            value,
            unit: unit.to_owned(),
        })
    };
    f("comprehensive_energy", num(i.energy_kgce), "kgce");
    f("consumed_energy", num(i.consumed_kgce), "kgce");
    f("recovered_energy", num(i.recovered_kgce), "kgce");
    f("output", num(i.product_t), "t");
    f("unit_energy", opt(i.kgce_per_t), "kgce/t");
    f("electricity", num(i.electricity_kwh), "kWh");
    f("unit_electricity", opt(i.kwh_per_t), "kWh/t");
    f("water", num(i.water_m3), "m3");
    f("unit_water", opt(i.water_m3_per_t), "m3/t");
    f("completeness", num(i.completeness), "1");
    f("reportable", (i.reportable as u8).to_string(), "bool");
    f("estimated_share", num(i.estimated_share), "1");
    f(
        "level",
        i.level.map(|l| l.to_string()).unwrap_or_default(),
        "level",
    );
    f(
        "within_limit",
        i.within_limit
            .map(|w| (w as u8).to_string())
            .unwrap_or_default(),
        "bool",
    );
    for j in &i.limits {
        // Thresholds are in the limit's own figure (kgce/t, or kWh/t for the potline).
        let (u, [l1, l2, l3]) = (j.indicator.unit_label(), j.thresholds);
        f("limit_value", num(j.value), u);
        // A level the standard does not give is left empty.
        let given = |v: f64| if v.is_finite() { num(v) } else { String::new() };
        f("limit_level1", given(l1), u);
        f("limit_level2", given(l2), u);
        f("limit_level3", given(l3), u);
    }
    if let Some(w) = &i.water_quota {
        f("water_quota_general", num(w.general), "m3/t");
        f("water_quota_advanced", num(w.advanced), "m3/t");
    }
    // A potline's DC energy and current efficiency, where it meters them.
    if let Some(dc) = i.dc_kwh_per_t {
        f("unit_dc_electricity", num(dc), "kWh/t");
    }
    if let Some(ce) = i.current_efficiency_pct {
        f("current_efficiency", num(ce), "%");
    }
}

/// Every figure of the annual report.
pub fn annual_figures(r: &AnnualReport) -> Vec<Figure> {
    let mut out = Vec::new();
    let whole = |figure, value: f64, unit: &str| Figure {
        section: "totals",
        subject: r.enterprise.clone().unwrap_or_default(),
        period: r.start.clone(),
        figure,
        value: num(value),
        unit: unit.to_owned(),
    };
    out.push(whole("consumed_energy", r.totals.consumed_tce, "tce"));
    out.push(whole("recovered_energy", r.totals.recovered_tce, "tce"));
    out.push(whole(
        "comprehensive_energy",
        r.totals.comprehensive_tce,
        "tce",
    ));
    out.push(whole(
        "comprehensive_energy_equivalent",
        r.totals.comprehensive_equivalent_tce,
        "tce",
    ));
    out.push(whole(
        "comprehensive_energy_equal_value",
        r.totals.comprehensive_equal_value_tce,
        "tce",
    ));
    out.push(whole("units_sum_energy", r.totals.units_sum_tce, "tce"));
    out.push(whole("water", r.totals.water_m3, "m3"));
    if let Some(y) = &r.intensity {
        let mut per = |figure, value: Option<f64>, unit: &str| {
            out.push(Figure {
                value: opt(value),
                ..whole(figure, 0.0, unit)
            })
        };
        let (now, before) = (&y.this_year, &y.previous_year);
        per("output_value", now.output_value, "10k_yuan");
        per("value_added", now.value_added, "10k_yuan");
        per(
            "energy_per_output_value",
            now.tce_per_10k_yuan_output,
            "tce/10k_yuan",
        );
        per(
            "energy_per_value_added",
            now.tce_per_10k_yuan_value_added,
            "tce/10k_yuan",
        );
        per(
            "previous_energy_per_output_value",
            before.tce_per_10k_yuan_output,
            "tce/10k_yuan",
        );
        per(
            "previous_energy_per_value_added",
            before.tce_per_10k_yuan_value_added,
            "tce/10k_yuan",
        );
        per("intensity_change", y.change_pct, "%");
        per("intensity_target_reduction", y.target_reduction_pct, "%");
        per(
            "intensity_target_met",
            y.target_met.map(|m| f64::from(u8::from(m))),
            "bool",
        );
    }
    for c in r.balance.iter().flat_map(|b| &b.carriers) {
        let generated: f64 = c.generated.iter().map(|n| n.quantity).sum();
        let consumed: f64 = c.consumed.iter().map(|n| n.quantity).sum();
        for (figure, value) in [
            ("purchase", c.purchase),
            ("stock_change", c.stock_change),
            ("generated", generated),
            ("consumed", consumed),
            ("export", c.export),
            ("flared", c.flared),
            ("remainder", c.remainder),
        ] {
            out.push(Figure {
                section: "balance",
                subject: c.carrier.clone(),
                period: r.start.clone(),
                figure,
                value: num(value),
                unit: c.unit.clone(),
            });
        }
    }
    for p in r.balance.iter().flat_map(|b| &b.captive_power) {
        for (figure, value, unit) in [
            ("generation", Some(p.generation), p.measure.as_str()),
            ("own_use", Some(p.own_use), p.measure.as_str()),
            ("supply", Some(p.supply), p.measure.as_str()),
            ("own_use_rate", p.own_use_pct, "%"),
        ] {
            out.push(Figure {
                section: "captive_power",
                subject: p.unit.clone(),
                period: r.start.clone(),
                figure,
                value: value.map_or_else(String::new, num),
                unit: unit.into(),
            });
        }
    }
    push_site_water(&mut out, &r.start, &r.sites_water);
    for c in &r.totals.by_carrier {
        let role = match c.role {
            ems_energy::model::Role::Recovered => "recovered",
            _ => "consumed",
        };
        let subject = format!("{}/{role}", c.carrier);
        out.push(Figure {
            section: "carriers",
            subject: subject.clone(),
            period: r.start.clone(),
            figure: "quantity",
            value: num(c.quantity),
            unit: c.unit.clone(),
        });
        out.push(Figure {
            section: "carriers",
            subject: subject.clone(),
            period: r.start.clone(),
            figure: "energy",
            value: num(c.kgce),
            unit: "kgce".into(),
        });
        if let Some(k) = c.kgce_per_unit {
            out.push(Figure {
                section: "carriers",
                subject,
                period: r.start.clone(),
                figure: "coefficient",
                value: num(k),
                unit: format!("kgce/{}", c.unit),
            });
        }
    }
    for m in &r.months {
        for (figure, value, unit) in [
            ("consumed_energy", m.consumed_tce, "tce"),
            ("recovered_energy", m.recovered_tce, "tce"),
            ("comprehensive_energy", m.comprehensive_tce, "tce"),
            ("water", m.water_m3, "m3"),
        ] {
            out.push(Figure {
                section: "months",
                subject: r.enterprise.clone().unwrap_or_default(),
                period: m.start.clone(),
                figure,
                value: num(value),
                unit: unit.into(),
            });
        }
    }
    for u in &r.units {
        push_indicator(&mut out, "unit_year", &u.id, &u.year);
        for m in &u.months {
            push_indicator(&mut out, "unit_months", &u.id, m);
        }
    }
    for m in &r.data_quality.meters {
        for month in &m.months {
            out.push(Figure {
                section: "meter_completeness",
                subject: format!("{}/{}", m.device, m.point),
                period: month.start.clone(),
                figure: "completeness",
                value: opt(month.completeness),
                unit: "1".into(),
            });
        }
    }
    for s in &r.data_quality.sequence {
        for (figure, value) in [
            ("messages", s.messages),
            ("duplicates", s.duplicates),
            ("missing", s.missing),
            ("lost", s.lost),
        ] {
            out.push(Figure {
                section: "sequence",
                subject: s.device.clone(),
                period: r.start.clone(),
                figure,
                value: value.to_string(),
                unit: "messages".into(),
            });
        }
    }
    for d in &r.data_quality.daily_vs_monthly {
        out.push(Figure {
            section: "daily_vs_monthly",
            subject: d.unit.clone(),
            period: d.start.clone(),
            figure: "deviation",
            value: opt(d.deviation_pct),
            unit: "%".into(),
        });
    }
    out
}

/// Writes figures as CSV with a header row.
pub fn write_csv(figures: &[Figure], out: impl std::io::Write) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    for f in figures {
        w.serialize(f)?;
    }
    w.flush()?;
    Ok(())
}

/// Each site's water over a period: intake, product, m3/t, its quota and grade (section
/// `site_water`).
fn push_site_water(out: &mut Vec<Figure>, period: &str, sites: &[ems_energy::balance::SiteWater]) {
    for w in sites {
        let quota = w.quota.as_ref();
        for (figure, value, unit) in [
            ("water_intake", Some(w.intake_m3), "m3"),
            ("product", Some(w.product_t), "t"),
            ("water_per_product", w.m3_per_t, "m3/t"),
            ("quota_general", quota.map(|q| q.general), "m3/t"),
            ("quota_advanced", quota.map(|q| q.advanced), "m3/t"),
            ("completeness", Some(w.completeness), "share"),
        ] {
            out.push(Figure {
                section: "site_water",
                subject: w.site.clone(),
                period: period.to_owned(),
                figure,
                value: opt(value),
                unit: unit.into(),
            });
        }
        out.push(Figure {
            section: "site_water",
            subject: w.site.clone(),
            period: period.to_owned(),
            figure: "quota_grade",
            value: quota.map(|q| q.grade.to_owned()).unwrap_or_default(),
            unit: String::new(),
        });
    }
}

/// Every figure of a monthly compliance report.
pub fn compliance_figures(r: &super::compliance::ComplianceReport) -> Vec<Figure> {
    let mut out = Vec::new();
    if let Some(e) = &r.enterprise_energy {
        for (figure, value, unit) in [
            ("comprehensive_energy", e.energy.energy_kgce / 1000.0, "tce"),
            (
                "comprehensive_energy_equivalent",
                e.energy.equivalent_kgce / 1000.0,
                "tce",
            ),
            (
                "comprehensive_energy_equal_value",
                e.energy.equal_value_kgce / 1000.0,
                "tce",
            ),
            ("units_sum_energy", e.energy.units_sum_kgce / 1000.0, "tce"),
            ("boundary_completeness", e.completeness, "1"),
        ] {
            out.push(Figure {
                section: "enterprise_month",
                subject: r.enterprise.clone().unwrap_or_default(),
                period: r.month.clone(),
                figure,
                value: num(value),
                unit: unit.into(),
            });
        }
    }
    push_site_water(&mut out, &r.month, &r.sites_water);
    for u in &r.units {
        push_indicator(&mut out, "unit_month", &u.id, &u.month);
        for d in &u.days {
            push_indicator(&mut out, "unit_days", &u.id, d);
        }
        for e in &u.exceedances {
            for (figure, value) in [
                ("exceedance_value", e.value),
                ("exceedance_threshold", e.threshold),
            ] {
                out.push(Figure {
                    section: "exceedances",
                    subject: format!("{}/{}", u.id, e.code),
                    period: e.day.clone(),
                    figure,
                    value: num(value),
                    unit: e.unit.into(),
                });
            }
        }
    }
    out
}

/// Every figure of a savings verification.
pub fn savings_figures(r: &super::savings::SavingsReport) -> Vec<Figure> {
    let v = &r.verification;
    let m = &v.model;
    let mut out = Vec::new();
    let mut whole = |section: &'static str, figure: &'static str, value: String, unit: &str| {
        out.push(Figure {
            section,
            subject: r.unit.clone(),
            period: String::new(),
            figure,
            value,
            unit: unit.to_owned(),
        })
    };
    whole("model", "intercept", num(m.coefficients[0]), "kgce");
    whole("model", "slope_output", num(m.coefficients[1]), "kgce/t");
    whole(
        "model",
        "observations",
        m.observations.to_string(),
        "months",
    );
    whole("model", "r2", num(m.r2), "1");
    whole("model", "cv_rmse", num(m.cv_rmse_pct), "%");
    whole("model", "nmbe", num(m.nmbe_pct), "%");
    whole("model", "accepted", (m.accepted as u8).to_string(), "bool");
    whole("savings", "avoided_energy", num(v.avoided_tce), "tce");
    whole(
        "savings",
        "baseline_unit_energy",
        opt(v.baseline_kgce_per_t),
        "kgce/t",
    );
    whole(
        "savings",
        "reporting_unit_energy",
        opt(v.reporting_kgce_per_t),
        "kgce/t",
    );
    whole(
        "savings",
        "reporting_output",
        num(v.reporting_output_t),
        "t",
    );
    whole(
        "savings",
        "product_method_savings",
        opt(v.product_method_savings_tce),
        "tce",
    );
    for p in &v.periods {
        for (figure, value) in [
            ("actual_energy", p.actual_kgce),
            ("adjusted_baseline", p.adjusted_baseline_kgce),
            ("avoided_energy", p.avoided_kgce),
            ("cusum", p.cusum_kgce),
        ] {
            out.push(Figure {
                section: "reporting_months",
                subject: r.unit.clone(),
                period: p.label.clone(),
                figure,
                value: num(value),
                unit: "kgce".into(),
            });
        }
    }
    out
}
