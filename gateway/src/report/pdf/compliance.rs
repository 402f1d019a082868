//! The monthly compliance report, laid out: each unit's days against its limits, the
//! exceedances, and the month's data quality.

use krilla::text::Font;

use crate::report::seal::Sealed;

use super::{finish, format_num, level_text, opt, pct, Layout, BODY};
use crate::report::compliance::ComplianceReport;
use ems_energy::indicators::Indicator;
use ems_energy::limits::Figure;

/// The compliance report as PDF bytes.
pub fn compliance(
    r: &ComplianceReport,
    font: &Font,
    sealed: Option<&Sealed>,
) -> anyhow::Result<Vec<u8>> {
    let title = format!("{} 月度能耗限额符合性报告", r.month);
    let mut l = Layout::new(format!(
        "{} {title} · 数据版本 {}",
        r.enterprise.clone().unwrap_or_default(),
        r.version
    ));
    l.paragraph(18.0, title.clone());
    l.paragraph(
        11.0,
        format!(
            "重点用能单位：{}",
            r.enterprise.clone().unwrap_or_else(|| "（未配置）".into())
        ),
    );
    l.paragraph(
        BODY,
        "限额按月、年判定（各单元本月结论见下）；逐日等级仅供参考：日数值超过所适用限额（现有单元 3 级，新建单元 2 级）或取水定额的日期单列。",
    );
    if let Some(e) = &r.enterprise_energy {
        l.paragraph(
            11.0,
            format!(
                "企业综合能源消费量（按边界计量：购入+库存减少-外销）{} tce，当量值 {} / 等价值 {} tce，边界计量完整率 {}",
                format_num(e.energy.energy_kgce / 1000.0, 3),
                format_num(e.energy.equivalent_kgce / 1000.0, 3),
                format_num(e.energy.equal_value_kgce / 1000.0, 3),
                pct(e.completeness)
            ),
        );
    }
    for w in &r.sites_water {
        let judged = match (&w.quota, &w.not_judged) {
            (Some(q), _) => format!(
                "定额 {:.3}/{:.3}（通用/先进），{}",
                q.general,
                q.advanced,
                match q.grade {
                    "advanced" => "先进",
                    "general" => "通用",
                    _ => "超定额",
                }
            ),
            (None, Some(why)) => format!("未评价：{why}"),
            (None, None) => "无定额".to_owned(),
        };
        l.paragraph(
            11.0,
            format!(
                "厂区取水（GB/T 18916）{}：取水量 {} m³，产量 {} t，单位产品取水量 {} m³/t，{judged}，计量完整率 {}",
                w.name,
                format_num(w.intake_m3, 1),
                format_num(w.product_t, 1),
                opt(w.m3_per_t, 3),
                pct(w.completeness)
            ),
        );
    }
    for u in &r.units {
        l.heading(&format!("{}（{}）", u.name, u.id));
        // The unit's headline figure: kWh/t where its first limit judges electricity.
        let kwh = u
            .month
            .limits
            .first()
            .is_some_and(|j| j.indicator == Figure::KwhPerT);
        let (label, figure): (&str, fn(&Indicator) -> Option<f64>) = if kwh {
            ("kWh/t", |i| i.kwh_per_t)
        } else {
            ("kgce/t", |i| i.kgce_per_t)
        };
        l.paragraph(
            BODY,
            format!(
                "本月 {} {label}，{}；评价 {} 天，其中达标 {} 天，超限 {} 次。",
                opt(figure(&u.month), 2),
                level_text(&u.month).trim_start_matches('!'),
                u.days_judged,
                u.days_within_limits,
                u.exceedances.len()
            ),
        );
        let rows: Vec<Vec<String>> = u
            .days
            .iter()
            .map(|d| {
                vec![
                    d.start.get(5..10).unwrap_or_default().to_owned(),
                    format_num(d.product_t, 1),
                    opt(figure(d), 2),
                    level_text(d),
                    pct(d.completeness),
                    pct(d.estimated_share),
                ]
            })
            .collect();
        l.table(
            &[70.0, 90.0, 90.0, 70.0, 80.0, 80.0],
            &["日期", "产量（t）", label, "等级", "完整率", "估算占比"],
            &rows,
        );
        let lines: Vec<(String, f64)> = u
            .month
            .limits
            .first()
            .map(super::limit_lines)
            .unwrap_or_default();
        l.bar_chart(
            &format!("{} 逐日单位产品能耗", u.name),
            label,
            &u.days
                .iter()
                .map(|d| d.start.get(8..10).unwrap_or_default().to_owned())
                .collect::<Vec<_>>(),
            &u.days.iter().map(figure).collect::<Vec<_>>(),
            &lines,
        );
        if !u.exceedances.is_empty() {
            l.paragraph(BODY, "超限记录（逐日，仅供参考）");
            let rows: Vec<Vec<String>> = u
                .exceedances
                .iter()
                .map(|e| {
                    vec![
                        e.day.clone(),
                        e.code.clone(),
                        e.standard.clone(),
                        format!("!{}", format_num(e.value, 2)),
                        format_num(e.threshold, 2),
                        e.unit.to_owned(),
                    ]
                })
                .collect();
            l.table(
                &[70.0, 130.0, 100.0, 70.0, 60.0, 50.0],
                &["日期", "限额/定额", "标准", "实际值", "限值", "单位"],
                &rows,
            );
        }
        for d in &u.unjudged_days {
            l.paragraph(BODY, format!("{} 未评价：{}", d.day, d.reasons.join("；")));
        }
    }
    l.heading("数据质量");
    let rows: Vec<Vec<String>> = r
        .data_quality
        .meters
        .iter()
        .map(|m| {
            let c = m.months.first().and_then(|mm| mm.completeness);
            let text = match c {
                Some(c) if c < r.data_quality.min_completeness => format!("!{}", pct(c)),
                Some(c) => pct(c),
                None => "—".into(),
            };
            vec![format!("{}/{}", m.device, m.point), text]
        })
        .collect();
    l.table(&[220.0, 100.0], &["计量点", "本月完整率"], &rows);
    l.sequence_table(&r.data_quality.sequence);
    for d in &r.data_quality.daily_vs_monthly {
        l.paragraph(
            BODY,
            format!(
                "{}：日数据累计与月数据偏差 {}（限值 5%）",
                d.unit,
                d.deviation_pct.map_or("—".into(), |p| format!("{p:.4}%"))
            ),
        );
    }
    finish(l, title, font, sealed)
}
