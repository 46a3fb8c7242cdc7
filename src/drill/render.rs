//! Renderings of a drill report: a text summary for terminals and a
//! self-contained HTML page for auditors (no scripts, no external assets).

use super::report::{DrillReport, Verdict};
use std::fmt::Write;

fn ms(v: Option<u64>) -> String {
    match v {
        Some(m) => format!("{}.{:03} s", m / 1000, m % 1000),
        None => "-".into(),
    }
}

/// The RTO line: measured vs objective.
pub fn rto_line(r: &DrillReport) -> String {
    let objective = match r.rto.target_ms {
        Some(_) => ms(r.rto.target_ms),
        None => "none set".into(),
    };
    let met = match r.rto.met {
        Some(true) => " (met)",
        Some(false) => " (MISSED)",
        None => "",
    };
    format!("{} (objective {objective}){met}", ms(r.rto.measured_ms))
}

fn checksum_cell(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "match",
        Some(false) => "MISMATCH",
        None => "n/a (shredded rows)",
    }
}

fn pragma(c: &Option<super::report::PragmaCheck>) -> String {
    match c {
        Some(c) if c.ok => "ok".into(),
        Some(c) => format!("{} problem(s)", c.problems),
        None => "not run".into(),
    }
}

/// A text summary (several lines, ending with a newline).
pub fn text(r: &DrillReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "drill {}: {}", r.id, r.verdict.as_str());
    let _ = writeln!(s, "  policy     {} ({} store)", r.policy, r.store);
    match &r.snapshot {
        Some(sn) => {
            let _ = writeln!(s, "  snapshot   {} ({}, {})", sn.id, sn.time, sn.selection);
        }
        None => {
            let _ = writeln!(s, "  snapshot   none restored");
        }
    }
    let _ = writeln!(
        s,
        "  target     {}{}",
        r.target.name,
        if r.target.offsite { " (off-site)" } else { "" }
    );
    let _ = writeln!(s, "  time       {} .. {}", r.started, r.finished);
    let _ = writeln!(s, "  RTO        {}", rto_line(r));
    let _ = writeln!(
        s,
        "  restored   {} items, {} ({} fetched), {}/s, {} items/s",
        r.restored.items,
        crate::ops::human_bytes(r.restored.bytes),
        crate::ops::human_bytes(r.restored.bytes_fetched),
        crate::ops::human_bytes(r.restored.bytes_per_s),
        r.restored.items_per_s
    );
    if !r.tables.is_empty() {
        let _ = writeln!(
            s,
            "  {:<24} {:>10} {:>10} {:>10}  checksum",
            "table", "expected", "restored", "shredded"
        );
        for t in &r.tables {
            let _ = writeln!(
                s,
                "  {:<24} {:>10} {:>10} {:>10}  {}",
                t.name,
                t.rows_expected,
                t.rows_restored,
                t.rows_shredded,
                checksum_cell(t.checksum_ok)
            );
        }
        let _ = writeln!(
            s,
            "  integrity_check {}, foreign_key_check {}",
            pragma(&r.integrity_check),
            pragma(&r.foreign_key_check)
        );
    }
    for a in &r.assertions {
        let _ = writeln!(
            s,
            "  assert {}: {}",
            if a.passed { "ok  " } else { "FAIL" },
            a.sql
        );
    }
    for t in &r.shredded {
        let _ = writeln!(
            s,
            "  shredded   {}: {} rows in {} groups omitted (not a loss)",
            t.table, t.rows, t.groups
        );
    }
    for o in &r.corrupt_objects {
        let _ = writeln!(s, "  damaged    {o}");
    }
    if let Some(rp) = &r.repair {
        let _ = writeln!(s, "  repair     {rp}");
    }
    if let Some(f) = &r.redrill_of {
        let _ = writeln!(s, "  re-drill   after repair; the failed drill was {f}");
    }
    for reason in &r.reasons {
        let _ = writeln!(s, "  reason     {reason}");
    }
    s
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A complete HTML page. Elements tests and tools can find: `#verdict`,
/// `#rto`, `#tables` (the per-table table), `#reasons`.
pub fn html(r: &DrillReport) -> String {
    let mut h = String::new();
    let pass = r.verdict == Verdict::Pass;
    let target = format!(
        "{} <code>{}</code>{}",
        esc(&r.target.name),
        esc(&r.target.url),
        if r.target.offsite { " (off-site)" } else { "" }
    );
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>custos drill {id}: {v}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
#verdict {{ font-size: 2em; font-weight: bold; padding: .2em .6em; display: inline-block; color: #fff; }}
.pass {{ background: #2e7d32; }} .fail {{ background: #c62828; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #aaa; padding: .3em .6em; text-align: left; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.bad {{ color: #c62828; font-weight: bold; }}
code {{ font-size: .9em; }}
</style>
</head>
<body>
<h1>Restore drill <code>{id}</code></h1>
<p id="verdict" class="{cls}">{v}</p>
<table id="summary">
<tr><th>Policy</th><td>{policy}</td></tr>
<tr><th>Store</th><td>{store}</td></tr>
<tr><th>Snapshot</th><td>{snap}</td></tr>
<tr><th>Restored from</th><td>{target}</td></tr>
<tr><th>Started</th><td>{started}</td></tr>
<tr><th>Finished</th><td>{finished}</td></tr>
<tr><th>Recovery time (RTO)</th><td id="rto">{rto}</td></tr>
<tr><th>Restored</th><td>{items} items, {bytes} ({fetched} fetched), {bps}/s</td></tr>
<tr><th>custos</th><td>{ver}</td></tr>
</table>
"#,
        id = esc(&r.id),
        v = r.verdict.as_str(),
        cls = if pass { "pass" } else { "fail" },
        policy = esc(&r.policy),
        store = esc(&r.store),
        snap = match &r.snapshot {
            Some(s) => format!(
                "<code>{}</code> ({}, {})",
                esc(&s.id),
                esc(&s.time),
                esc(&s.selection)
            ),
            None => "none restored".into(),
        },
        target = target,
        started = esc(&r.started),
        finished = esc(&r.finished),
        rto = esc(&rto_line(r)),
        items = r.restored.items,
        bytes = crate::ops::human_bytes(r.restored.bytes),
        fetched = crate::ops::human_bytes(r.restored.bytes_fetched),
        bps = crate::ops::human_bytes(r.restored.bytes_per_s),
        ver = esc(&r.custos_version),
    );
    if !r.reasons.is_empty() {
        h.push_str("<h2>Reasons for FAIL</h2>\n<ul id=\"reasons\">\n");
        for reason in &r.reasons {
            let _ = writeln!(h, "<li>{}</li>", esc(reason));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("<h2>Tables</h2>\n<table id=\"tables\">\n<thead><tr><th>Table</th><th>Class</th><th>Rows expected</th><th>Rows restored</th><th>Rows shredded</th><th>Checksum expected</th><th>Checksum restored</th><th>Result</th></tr></thead>\n<tbody>\n");
    for t in &r.tables {
        let ok = t.count_ok && t.checksum_ok != Some(false);
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td><code>{}</code></td><td><code>{}</code></td><td{}>{}</td></tr>",
            esc(&t.name),
            esc(&t.class),
            t.rows_expected,
            t.rows_restored,
            t.rows_shredded,
            esc(&t.checksum_expected),
            esc(t.checksum_restored.as_deref().unwrap_or("-")),
            if ok { "" } else { " class=\"bad\"" },
            if ok {
                format!("ok, checksum {}", checksum_cell(t.checksum_ok))
            } else {
                format!("FAIL, checksum {}", checksum_cell(t.checksum_ok))
            }
        );
    }
    h.push_str("</tbody>\n</table>\n");
    let _ = writeln!(
        h,
        "<p>PRAGMA integrity_check: {}; PRAGMA foreign_key_check: {}</p>",
        esc(&pragma(&r.integrity_check)),
        esc(&pragma(&r.foreign_key_check))
    );
    if !r.assertions.is_empty() {
        h.push_str("<h2>Assertions</h2>\n<table id=\"assertions\">\n<thead><tr><th>Query</th><th>Expected</th><th>Actual</th><th>Result</th></tr></thead>\n<tbody>\n");
        for a in &r.assertions {
            let show = |v: &Option<serde_json::Value>| {
                v.as_ref()
                    .map(|v| esc(&v.to_string()))
                    .unwrap_or_else(|| "(not shown)".into())
            };
            let _ = writeln!(
                h,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td{}>{}</td></tr>",
                esc(&a.sql),
                show(&a.expected),
                show(&a.actual),
                if a.passed { "" } else { " class=\"bad\"" },
                if a.passed { "holds" } else { "FAILS" }
            );
        }
        h.push_str("</tbody>\n</table>\n");
    }
    if !r.shredded.is_empty() {
        h.push_str("<h2>Shredded groups omitted (not a loss)</h2>\n<ul id=\"shredded\">\n");
        for t in &r.shredded {
            let _ = writeln!(
                h,
                "<li>{}: {} rows in {} groups</li>",
                esc(&t.table),
                t.rows,
                t.groups
            );
        }
        h.push_str("</ul>\n");
    }
    if !r.corrupt_objects.is_empty() {
        h.push_str("<h2>Damaged objects</h2>\n<ul id=\"damaged\">\n");
        for o in &r.corrupt_objects {
            let _ = writeln!(h, "<li><code>{}</code></li>", esc(o));
        }
        h.push_str("</ul>\n");
        if let Some(rp) = &r.repair {
            let _ = writeln!(h, "<p>Repair: {}</p>", esc(rp));
        }
    }
    if let Some(f) = &r.redrill_of {
        let _ = writeln!(
            h,
            "<p id=\"redrill\">Re-drill after repair; the failed drill was <code>{}</code>.</p>",
            esc(f)
        );
    }
    h.push_str("<p>This page is a rendering of a signed report; check the signature with <code>custos reports verify</code>.</p>\n</body>\n</html>\n");
    h
}
