//! A PDF report's last page: the evidence its sealed JSON carries (report/seal.rs), printed for
//! a reader, and how to check it. The sealed JSON itself goes into the PDF as the attachment
//! `report.json`: it is what the gateway signed and what `ems-gateway verify` checks; this page
//! only shows it.

use serde_json::Value;
use sha2::Digest as _;

use super::{Layout, BODY, GREY};
use crate::report::seal::Sealed;

/// The attachment's name.
pub const ATTACHMENT: &str = "report.json";

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "—".into(),
        v => v.to_string(),
    }
}

fn request_text(r: &Value) -> String {
    match r["kind"].as_str() {
        Some("annual") => format!("年度报告 {}", text(&r["year"])),
        Some("compliance") => format!("月度符合性报告 {}", text(&r["month"])),
        Some("savings") => format!(
            "节能量审核报告 {}，基期 {}，报告期 {}",
            text(&r["unit"]),
            text(&r["baseline"]),
            text(&r["reporting"])
        ),
        _ => r.to_string(),
    }
}

/// Lays out the evidence page of `sealed`.
pub(super) fn page(l: &mut Layout, sealed: &Sealed) {
    let e = &sealed.evidence;
    l.room(f32::MAX);
    l.heading("数据证据与签名");
    l.paragraph(
        BODY,
        format!(
            "报告请求：{}；企业：{}；生成时间：{}",
            request_text(&e["request"]),
            text(&e["request"]["enterprise"]),
            text(&e["made"])
        ),
    );
    l.paragraph(
        BODY,
        format!("本报告的签名原件是所附 {ATTACHMENT}（PDF 附件）：报告的全部数字与本页证据由网关私钥签名。"),
    );
    l.paragraph(
        BODY,
        "核验：取出附件（例如 pdfdetach -saveall 本文件），然后运行",
    );
    l.paragraph(
        BODY,
        format!(
            "　　ems-gateway verify --config 网关配置 --report {ATTACHMENT} --gateway-key 网关公钥"
        ),
    );

    l.paragraph(11.0, "所用配置与数据文件（SHA-256）");
    let files: Vec<Vec<String>> = e["files_sha256"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| vec![k.clone(), text(v)]).collect())
        .unwrap_or_default();
    l.table(&[90.0, 405.0], &["文件", "SHA-256"], &files);

    l.paragraph(11.0, "计量设备的序列号台账与签名链");
    let none = Vec::new();
    let meters = e["meters"].as_array().unwrap_or(&none);
    let rows: Vec<Vec<String>> = meters
        .iter()
        .map(|m| {
            let chain = &m["chain"];
            let missing = m["missing"].as_i64().unwrap_or(0);
            vec![
                text(&m["device"]),
                text(&m["edge"]),
                text(&m["last_seq"]),
                if missing > 0 {
                    format!("!{missing}")
                } else {
                    "0".into()
                },
                m["lost_ranges"].as_array().map_or(0, Vec::len).to_string(),
                if chain.is_null() {
                    "未签名".into()
                } else {
                    text(&chain["verified_through"])
                },
                text(&chain["restarts"]),
                text(&chain["refused"]),
            ]
        })
        .collect();
    l.table(
        &[110.0, 70.0, 60.0, 45.0, 55.0, 65.0, 45.0, 45.0],
        &[
            "设备",
            "边缘",
            "最后序号",
            "缺失",
            "声明丢失段",
            "签名验证至",
            "链重启",
            "拒收",
        ],
        &rows,
    );
    let lost: Vec<Vec<String>> = meters
        .iter()
        .flat_map(|m| {
            let device = text(&m["device"]);
            m["lost_ranges"]
                .as_array()
                .unwrap_or(&none)
                .iter()
                .map(move |r| {
                    vec![
                        device.clone(),
                        format!("{}–{}", text(&r["from_seq"]), text(&r["to_seq"])),
                        text(&r["declared"]),
                        text(&r["declared_by"]),
                        text(&r["reason"]),
                    ]
                })
        })
        .collect();
    if !lost.is_empty() {
        l.paragraph(11.0, "声明丢失的序列号（谁、何时、为何）");
        l.table(
            &[100.0, 80.0, 110.0, 60.0, 145.0],
            &["设备", "序号", "声明时间", "声明人", "原因"],
            &lost,
        );
    }

    l.paragraph(11.0, "网关签名（Ed25519）");
    let key = text(&e["gateway_key"]);
    let signature = text(&e["signature"]);
    if e["signature"].is_null() {
        l.paragraph(BODY, "未签名：网关未配置 [evidence] report_key_file。");
    }
    l.paragraph(BODY, format!("网关公钥：{key}"));
    for (i, part) in signature.as_bytes().chunks(64).enumerate() {
        let label = if i == 0 { "签名：" } else { "　　　" };
        l.paragraph(BODY, format!("{label}{}", String::from_utf8_lossy(part)));
    }
    let digest = crate::storage::hex(&sha2::Sha256::digest(&sealed.json));
    l.paragraph(BODY, format!("附件 {ATTACHMENT} 的 SHA-256：{digest}"));
    let y = l.y + BODY * 1.4;
    l.text_at(
        super::MARGIN,
        y,
        7.0,
        "本页由签名原件生成，仅供阅读；以附件核验结果为准。",
        GREY,
    );
    l.y = y;
}
