//! The auditor console over real HTTP: roles, denied requests in the audit
//! log, signed documents with their verification state, metrics parsed
//! strictly, and an end-to-end run in headless Chromium over WebDriver.

mod common;

use custos::audit::{AuditLog, Outcome};
use custos::console::ConsoleConfig;
use custos::state::StateDir;
use custos::users::{Role, Users};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------
// A small HTTP/1.1 client (Connection: close) for the console and WebDriver
// ---------------------------------------------------------------------------

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let b = body.unwrap_or("");
    if body.is_some() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(b);
    s.write_all(req.as_bytes()).unwrap();
    // Read the head, then exactly Content-Length bytes (some servers keep
    // the connection open despite `Connection: close`), or to the end.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before the response head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(raw[..head_end].to_vec()).expect("a UTF-8 head");
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let hv = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut rest = raw[head_end + 4..].to_vec();
    if let Some(len) = hv("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed before the body's end");
            rest.extend_from_slice(&buf[..n]);
        }
        rest.truncate(len);
    } else {
        s.read_to_end(&mut rest).unwrap();
    }
    let rest = String::from_utf8(rest).expect("a UTF-8 body");
    let chunked = hv("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let body = if chunked { dechunk(&rest) } else { rest };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("a chunk size");
        let n = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

// ---------------------------------------------------------------------------
// Fixture: keys, a policy, users, signed reports and certificates
// ---------------------------------------------------------------------------

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
    policies: PathBuf,
    tokens: BTreeMap<&'static str, String>,
    latest_report: String,
    certificate: String,
    tampered_certificate: String,
}

fn policy_text(root: &Path, extra: &str) -> String {
    format!(
        "[policy]\nname = \"crm\"\n\n[store]\nkind = \"sqlite\"\npath = \"{db}\"\n\n[keys]\nidentity = \"{id}\"\nrecipients = []\nvault = [\"{vault}\"]\n\n[[targets]]\nname = \"primary\"\nurl = \"{t}\"\n\n[drill]\nrto = \"30m\"\n{extra}",
        db = root.join("crm.db").display(),
        id = root.join("keys/service.age").display(),
        vault = common::file_url(&root.join("vault")),
        t = common::file_url(&root.join("primary")),
    )
}

fn write_doc(state: &Path, sub: &str, id: &str, text: &str) {
    let d = state.join(sub).join("crm");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(format!("{id}.json")), text).unwrap();
}

fn report_body(id: &str, created: &str, verdict: &str, rto: u64) -> Value {
    json!({
        "id": id, "policy": "crm", "created": created, "custos_version": custos::VERSION,
        "verdict": verdict, "rto_seconds": rto, "rto_target_seconds": 1800,
        "tables": [{"name": "customers", "expected_rows": 100, "restored_rows": 100, "ok": true}],
        "snapshot": "s-1",
    })
}

fn fixture() -> Fixture {
    let dir = common::tempdir();
    let root = dir.path().to_path_buf();
    let keys = custos::keys::init_keys(&root.join("keys")).unwrap();
    let sk = custos::keys::load_signing_key(&keys.signing_key_path).unwrap();
    let policies = root.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("crm.toml"), policy_text(&root, "")).unwrap();
    let state = root.join("state");
    std::fs::create_dir_all(&state).unwrap();

    let older = "drill-20260301T040000Z-0a0b0c0d";
    let latest = "drill-20260308T040000Z-1a2b3c4d";
    for (id, created, verdict, rto) in [
        (older, "2026-03-01T04:00:00Z", "FAIL", 2400),
        (latest, "2026-03-08T04:00:00Z", "PASS", 610),
    ] {
        let text = custos::signed::sign(
            &sk,
            "custos.drill-report",
            &report_body(id, created, verdict, rto),
        )
        .unwrap();
        write_doc(&state, "reports", id, &text);
    }
    let cert = "cert-20260305T120000Z-aabbccdd";
    let body = json!({
        "id": cert, "policy": "crm", "created": "2026-03-05T12:00:00Z", "custos_version": custos::VERSION,
        "unit": "consumption/2025-09", "class": "consumption", "method": "cryptographic erase (purge)",
        "verification": {"result": "key unrecoverable at every vault location"},
        "residual": "none",
    });
    write_doc(
        &state,
        "certificates",
        cert,
        &custos::signed::sign(&sk, "custos.certificate", &body).unwrap(),
    );
    let bad = "cert-20260306T120000Z-deadbeef";
    let mut body2 = body.clone();
    body2["id"] = json!(bad);
    body2["created"] = json!("2026-03-06T12:00:00Z");
    let text = custos::signed::sign(&sk, "custos.certificate", &body2).unwrap();
    // One byte changed after signing.
    write_doc(
        &state,
        "certificates",
        bad,
        &text.replacen("2025-09", "2025-08", 1),
    );

    let users = Users::at(policies.join("users.json"), &state);
    let mut tokens = BTreeMap::new();
    for (name, role) in [
        ("ann", Role::Auditor),
        ("otto", Role::Operator),
        ("rita", Role::Retention),
        ("adam", Role::Admin),
    ] {
        tokens.insert(name, users.add(name, role).unwrap().0);
    }
    Fixture {
        _dir: dir,
        root,
        state,
        policies,
        tokens,
        latest_report: latest.into(),
        certificate: cert.into(),
        tampered_certificate: bad.into(),
    }
}

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(f: &Fixture) -> Server {
    let pk = custos::keys::load_public_key(&f.root.join("keys/signing.pub")).unwrap();
    let cfg = ConsoleConfig {
        policies: f.policies.clone(),
        state: StateDir::at(&f.state).unwrap(),
        users_file: custos::users::default_path(Some(&f.policies), &f.state),
        audit_public_key: Some(pk),
        audit_signing_key: None,
        background_every: None,
        replicate_audit: false,
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (atx, arx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            atx.send(l.local_addr().unwrap()).unwrap();
            custos::console::serve(cfg, l, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
    });
    let addr = arx.recv().unwrap();
    Server {
        addr,
        stop: Some(tx),
        thread: Some(thread),
    }
}

fn audit_entries(f: &Fixture) -> Vec<custos::audit::Entry> {
    AuditLog::open(&f.state.join("audit"))
        .unwrap()
        .entries()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn auditor_reads_reports_and_certificates_with_their_verification_state() {
    let f = fixture();
    let s = start(&f);
    let ann = f.tokens["ann"].as_str();

    assert_eq!(http(s.addr, "GET", "/healthz", None, None).status, 200);
    assert_eq!(http(s.addr, "GET", "/readyz", None, None).status, 200);
    assert_eq!(
        http(s.addr, "GET", "/api/v1/policies", None, None).status,
        401
    );
    let r = http(s.addr, "GET", "/", None, None);
    assert_eq!(
        r.status, 303,
        "pages send an unauthenticated browser to the login page"
    );
    assert_eq!(r.header("location"), Some("/login"));

    let r = http(s.addr, "POST", "/api/v1/login", Some(ann), None);
    assert_eq!(r.json()["role"], "auditor");

    let ps = http(s.addr, "GET", "/api/v1/policies", Some(ann), None).json();
    assert_eq!(ps[0]["name"], "crm");

    let reports = http(
        s.addr,
        "GET",
        "/api/v1/policies/crm/reports",
        Some(ann),
        None,
    )
    .json();
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["id"], f.latest_report.as_str(), "newest first");
    assert_eq!(reports[0]["verdict"], "PASS");
    assert_eq!(reports[0]["verification"]["state"], "valid");
    assert_eq!(reports[1]["verdict"], "FAIL");

    let one = http(
        s.addr,
        "GET",
        &format!("/api/v1/policies/crm/reports/{}", f.latest_report),
        Some(ann),
        None,
    )
    .json();
    assert_eq!(one["body"]["rto_seconds"], 610);
    let text = one["document"].as_str().unwrap().to_string();
    let dl = http(
        s.addr,
        "GET",
        &format!("/api/v1/policies/crm/reports/{}/download", f.latest_report),
        Some(ann),
        None,
    );
    assert_eq!(dl.status, 200);
    assert_eq!(dl.body, text, "the download is the exact signed text");
    let pk = custos::keys::load_public_key(&f.root.join("keys/signing.pub")).unwrap();
    custos::signed::verify(&dl.body, &pk, Some("custos.drill-report")).unwrap();

    let certs = http(
        s.addr,
        "GET",
        "/api/v1/policies/crm/certificates",
        Some(ann),
        None,
    )
    .json();
    let by_id: BTreeMap<String, String> = certs
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["verification"]["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(by_id[&f.certificate], "valid");
    assert_eq!(by_id[&f.tampered_certificate], "invalid");

    // The HTML pages show the same, with the cookie the login page sets.
    let page = |path: &str| {
        let mut st = TcpStream::connect(s.addr).unwrap();
        write!(
            st,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: custos_token={ann}\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        st.read_to_string(&mut out).unwrap();
        out
    };
    let html = page(&format!("/policies/crm/reports/{}", f.latest_report));
    assert!(
        html.contains("id=\"verdict\" class=\"PASS\">PASS<"),
        "{html}"
    );
    let html = page(&format!(
        "/policies/crm/certificates/{}",
        f.tampered_certificate
    ));
    assert!(html.contains("class=\"invalid\""), "{html}");
    // Path traversal in a document id is refused.
    let r = http(
        s.addr,
        "GET",
        "/api/v1/policies/crm/reports/..%2F..%2Fusers",
        Some(ann),
        None,
    );
    assert!(r.status == 400 || r.status == 404, "{}", r.status);
}

#[test]
fn auditor_is_denied_restore_shred_and_policy_change_and_each_is_audited() {
    let f = fixture();
    let s = start(&f);
    let ann = f.tokens["ann"].as_str();
    let policy_before = std::fs::read_to_string(f.policies.join("crm.toml")).unwrap();

    let restore_body = json!({"to": f.root.join("restored.db")}).to_string();
    let r = http(
        s.addr,
        "POST",
        "/api/v1/policies/crm/restore",
        Some(ann),
        Some(&restore_body),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = http(
        s.addr,
        "POST",
        "/api/v1/policies/crm/shred",
        Some(ann),
        Some(r#"{"unit": "consumption/2025-09"}"#),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let new_text = policy_text(&f.root, "\n[shred]\ngrace = \"1d\"\n");
    let r = http(
        s.addr,
        "PUT",
        "/api/v1/policies/crm",
        Some(ann),
        Some(&new_text),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = http(
        s.addr,
        "POST",
        "/api/v1/policies/crm/jobs/backup",
        Some(ann),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(!f.root.join("restored.db").exists());
    assert_eq!(
        std::fs::read_to_string(f.policies.join("crm.toml")).unwrap(),
        policy_before
    );

    let denied: Vec<(String, String)> = audit_entries(&f)
        .into_iter()
        .filter(|e| e.outcome == Outcome::Denied)
        .map(|e| {
            assert_eq!(e.actor, "ann");
            assert_eq!(e.role, "auditor");
            assert_eq!(e.policy.as_deref(), Some("crm"));
            (e.op, e.flags.join(","))
        })
        .collect();
    let ops: Vec<&str> = denied.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(ops, ["restore", "shred.request", "policy.change", "backup"]);
    // The third denial by one actor in the window is flagged.
    assert!(denied[2].1.contains("repeated-denied"), "{denied:?}");

    // The roles that may: admin changes the policy; an operator may not
    // shred (retention may: see the next test, which has a real vault).
    let r = http(
        s.addr,
        "POST",
        "/api/v1/policies/crm/shred",
        Some(&f.tokens["otto"]),
        Some(r#"{"unit": "consumption:2025-09"}"#),
    );
    assert_eq!(r.status, 403);
    let r = http(
        s.addr,
        "PUT",
        "/api/v1/policies/crm",
        Some(&f.tokens["adam"]),
        Some(&new_text),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        std::fs::read_to_string(f.policies.join("crm.toml")).unwrap(),
        new_text
    );
    let r = http(
        s.addr,
        "PUT",
        "/api/v1/policies/crm",
        Some(&f.tokens["adam"]),
        Some("[policy]\nname = 1\n"),
    );
    assert_eq!(r.status, 422, "a broken policy is refused: {}", r.body);
    assert_eq!(
        std::fs::read_to_string(f.policies.join("crm.toml")).unwrap(),
        new_text
    );

    // An unknown token is refused and audited too.
    assert_eq!(
        http(s.addr, "GET", "/api/v1/policies", Some("cst_nope"), None).status,
        401
    );
    let es = audit_entries(&f);
    assert!(es
        .iter()
        .any(|e| e.actor == "unknown-token" && e.outcome == Outcome::Denied));
    assert!(es
        .iter()
        .any(|e| e.op == "policy.change" && e.actor == "adam" && e.outcome == Outcome::Ok));

    // The auditor reads the trail and the access review through the API.
    let a = http(s.addr, "GET", "/api/v1/audit?op=policy", Some(ann), None).json();
    assert_eq!(a["ok"], true);
    assert!(a["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["op"] == "policy.change"));
    let review = http(s.addr, "GET", "/api/v1/access-review", Some(ann), None).json();
    let users = review["users"].as_array().unwrap();
    assert_eq!(users.len(), 4);
    let ann_line = users.iter().find(|u| u["name"] == "ann").unwrap();
    assert!(ann_line["last_used"].is_string());
    assert_eq!(
        http(
            s.addr,
            "GET",
            "/api/v1/access-review",
            Some(&f.tokens["otto"]),
            None
        )
        .status,
        403
    );
}

/// A strict parser of the Prometheus text format (0.0.4): every family has
/// HELP and TYPE before its samples, every sample line is
/// `name{label="value",...} number`, and label values are properly escaped.
fn parse_prometheus(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for (i, line) in text.lines().enumerate() {
        let ctx = format!("line {}: {line}", i + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (n, _) = rest.split_once(' ').expect(&ctx);
            assert!(name_ok(n), "{ctx}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (n, t) = rest.split_once(' ').expect(&ctx);
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                "{ctx}"
            );
            assert!(
                typed.insert(n.to_string(), t.to_string()).is_none(),
                "TYPE twice: {ctx}"
            );
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{ctx}");
        let (name, rest) = match line.find('{') {
            Some(p) => (&line[..p], &line[p..]),
            None => line.split_at(line.find(' ').expect(&ctx)),
        };
        assert!(name_ok(name), "{ctx}");
        assert!(typed.contains_key(name), "sample before its TYPE: {ctx}");
        let mut labels = BTreeMap::new();
        let value_part = if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end;
            loop {
                let (start, c) = chars.next().expect(&ctx);
                if c == '}' {
                    end = start;
                    break;
                }
                let mut key = String::from(c);
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                assert!(name_ok(&key), "label name: {ctx}");
                assert_eq!(chars.next().map(|x| x.1), Some('"'), "{ctx}");
                let mut val = String::new();
                loop {
                    let (_, c) = chars.next().expect(&ctx);
                    match c {
                        '\\' => match chars.next().expect(&ctx).1 {
                            'n' => val.push('\n'),
                            '\\' => val.push('\\'),
                            '"' => val.push('"'),
                            other => panic!("bad escape \\{other}: {ctx}"),
                        },
                        '"' => break,
                        '\n' => panic!("{ctx}"),
                        c => val.push(c),
                    }
                }
                labels.insert(key, val);
                match chars.peek().map(|x| x.1) {
                    Some(',') => {
                        chars.next();
                    }
                    Some('}') => {}
                    _ => panic!("{ctx}"),
                }
            }
            &body[end + 1..]
        } else {
            rest
        };
        let v = value_part.strip_prefix(' ').expect(&ctx);
        let v: f64 = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("value: {ctx}")),
        };
        out.push((name.to_string(), labels, v));
    }
    out
}

#[test]
fn metrics_parse_and_carry_drills_documents_audit_and_jobs() {
    let f = fixture();
    // A job recorded in the audit log, as the CLI and the daemon write it.
    let log = AuditLog::open(&f.state.join("audit")).unwrap();
    log.append(
        &custos::audit::Event::new("backup", "job")
            .policy("crm")
            .object("s-1")
            .measure("duration_s", 2.5)
            .measure("bytes", 4096.0),
    )
    .unwrap();
    log.append(
        &custos::audit::Event::new("backup", "job")
            .policy("crm")
            .outcome(Outcome::Failed),
    )
    .unwrap();
    let s = start(&f);
    let r = http(s.addr, "GET", "/metrics", None, None);
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let samples = parse_prometheus(&r.body);
    let get = |name: &str, want: &[(&str, &str)]| -> Option<f64> {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|x| x.2)
    };
    assert_eq!(
        get(
            "custos_drill_last_verdict",
            &[
                ("policy", "crm"),
                ("verdict", "PASS"),
                ("signature", "valid")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        get("custos_drill_last_rto_seconds", &[("policy", "crm")]),
        Some(610.0)
    );
    assert_eq!(
        get(
            "custos_documents",
            &[("kind", "certificate"), ("signature", "invalid")]
        ),
        Some(1.0)
    );
    assert_eq!(get("custos_audit_chain_ok", &[]), Some(1.0));
    assert_eq!(get("custos_audit_entries", &[]), Some(2.0));
    assert_eq!(
        get(
            "custos_job_last_duration_seconds",
            &[("policy", "crm"), ("job", "backup")]
        ),
        Some(2.5)
    );
    assert_eq!(
        get(
            "custos_job_last_bytes",
            &[("policy", "crm"), ("job", "backup")]
        ),
        Some(4096.0)
    );
    assert_eq!(
        get(
            "custos_job_failures_total",
            &[("policy", "crm"), ("job", "backup")]
        ),
        Some(1.0)
    );
    assert!(
        get(
            "custos_job_last_success_timestamp_seconds",
            &[("job", "backup")]
        )
        .unwrap()
            > 1.7e9
    );
    assert_eq!(
        get("custos_shred_requests_pending", &[("policy", "crm")]),
        Some(0.0)
    );

    // A broken chain shows in the metrics.
    let text = std::fs::read_to_string(log.path()).unwrap();
    std::fs::write(log.path(), text.replacen("\"s-1\"", "\"s-2\"", 1)).unwrap();
    let samples2 = parse_prometheus(&http(s.addr, "GET", "/metrics", None, None).body);
    let ok = samples2
        .iter()
        .find(|x| x.0 == "custos_audit_chain_ok")
        .unwrap()
        .2;
    assert_eq!(ok, 0.0);
}

#[test]
fn the_strict_prometheus_parser_refuses_bad_text() {
    for bad in [
        "custos_x 1\n",                                   // no TYPE
        "# TYPE custos_x gauge\ncustos_x{a=\"b} 1\n",     // unterminated
        "# TYPE custos_x gauge\ncustos_x one\n",          // not a number
        "# TYPE custos_x gauge\ncustos_x{a=\"\\q\"} 1\n", // bad escape
    ] {
        let r = std::panic::catch_unwind(|| parse_prometheus(bad));
        assert!(r.is_err(), "accepted: {bad:?}");
    }
}

// ---------------------------------------------------------------------------
// End to end in headless Chromium
// ---------------------------------------------------------------------------

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    addr: SocketAddr,
    session: String,
    child: std::process::Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = http(
            self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
            None,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

impl Driver {
    fn start(profile: &Path) -> Option<Driver> {
        let chromium = find_program("chromium").or_else(|| find_program("chromium-browser"))?;
        let driver = find_program("chromedriver")?;
        // chromedriver buffers its stdout when it is a pipe, so its "started
        // on port N" line cannot be waited for: take a free port and poll
        // /status instead.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut ready = false;
        for _ in 0..100 {
            if TcpStream::connect(addr).is_ok()
                && http(addr, "GET", "/status", None, None).json()["value"]["ready"] == true
            {
                ready = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(ready, "chromedriver did not become ready on port {port}");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let r = http(addr, "POST", "/session", None, Some(&caps.to_string()));
        assert_eq!(r.status, 200, "new session: {}", r.body);
        let session = r.json()["value"]["sessionId"].as_str().unwrap().to_string();
        Some(Driver {
            addr,
            session,
            child,
        })
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let b = body.map(|b| b.to_string());
        let r = http(
            self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            None,
            b.as_deref(),
        );
        assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
        r.json()["value"].clone()
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url})));
    }

    /// Waits (bounded by attempts, not time assertions) for an element.
    fn find(&self, css: &str) -> String {
        for _ in 0..100 {
            let r = http(
                self.addr,
                "POST",
                &format!("/session/{}/element", self.session),
                None,
                Some(&json!({"using": "css selector", "value": css}).to_string()),
            );
            if r.status == 200 {
                if let Some(e) = r.json()["value"][ELEMENT].as_str() {
                    return e.to_string();
                }
                panic!("unexpected WebDriver answer: {}", r.body);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let src = self.cmd("GET", "/source", None);
        panic!("no element {css} on the page:\n{src}");
    }

    fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.cmd("GET", &format!("/element/{e}/text"), None)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        );
    }
}

#[test]
fn browser_auditor_logs_in_and_sees_verdict_and_verification() {
    let f = fixture();
    let profile = f.root.join("chromium-profile");
    let Some(d) = Driver::start(&profile) else {
        eprintln!(
            "SKIPPED: browser end-to-end test: chromium and chromedriver are not installed \
             (Debian packages chromium, chromium-driver; scripts/test.sh installs them)"
        );
        return;
    };
    let s = start(&f);
    let base = format!("http://{}", s.addr);
    d.go(&format!("{base}/policies/crm"));
    d.find("#login-form"); // not logged in: sent to the login page
    d.type_into("#token", &f.tokens["ann"]);
    d.click("#login");
    assert!(d.text("#whoami").contains("ann (auditor)"));
    d.go(&format!("{base}/policies/crm"));
    d.click("#reports a.report-link"); // the first row is the latest report
    assert!(d.text("h1").contains(&f.latest_report));
    assert_eq!(d.text("#verdict"), "PASS");
    assert_eq!(d.text("#verification"), "valid");
    d.go(&format!("{base}/policies/crm"));
    let links = d.cmd(
        "POST",
        "/elements",
        Some(json!({"using": "css selector", "value": "#certificates a.certificate-link"})),
    );
    assert_eq!(links.as_array().unwrap().len(), 2);
    d.go(&format!(
        "{base}/policies/crm/certificates/{}",
        f.certificate
    ));
    assert_eq!(d.text("#verification"), "valid");
    assert!(d.text("#result").contains("unrecoverable"));
    d.go(&format!(
        "{base}/policies/crm/certificates/{}",
        f.tampered_certificate
    ));
    assert_eq!(d.text("#verification"), "invalid");
    d.go(&format!("{base}/audit"));
    assert_eq!(d.text("#audit-verification"), "intact");
    // The login is in the trail.
    assert!(audit_entries(&f)
        .iter()
        .any(|e| e.op == "login" && e.actor == "ann"));
}

/// With a real store, vault and repository: an operator runs jobs from the
/// console (the daemon's own jobs), and the retention role's shred request
/// lands in the shred ledger as a pending destruction with the policy's
/// grace; a second request for the same unit is a conflict.
#[test]
fn operator_runs_jobs_and_retention_requests_a_real_shred() {
    let f = fixture();
    let db = f.root.join("crm.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE cdrs (id INTEGER PRIMARY KEY, customer_id INTEGER, started_at TEXT);
         INSERT INTO customers VALUES (1, 'a'), (2, 'b');
         INSERT INTO cdrs VALUES (1, 1, '2025-09-03T10:00:00Z'), (2, 2, '2025-10-01T08:00:00Z');",
    )
    .unwrap();
    drop(c);
    let tables = "\n[[store.tables]]\nname = \"customers\"\nclass = \"identity\"\nsubject = \"id\"\n\
                  [[store.tables]]\nname = \"cdrs\"\nclass = \"consumption\"\nsubject = \"customer_id\"\n\
                  period = { column = \"started_at\", every = \"month\" }\n";
    std::fs::write(f.policies.join("crm.toml"), policy_text(&f.root, tables)).unwrap();
    common::run(
        common::custos()
            .arg("--state-dir")
            .arg(&f.state)
            .args(["init", "--policy"])
            .arg(f.policies.join("crm.toml")),
    );
    let s = start(&f);
    let otto = f.tokens["otto"].as_str();
    for job in ["backup", "drill"] {
        let r = http(
            s.addr,
            "POST",
            &format!("/api/v1/policies/crm/jobs/{job}"),
            Some(otto),
            Some(""),
        );
        assert_eq!(r.status, 200, "{job}: {}", r.body);
        assert_eq!(r.json()["outcome"], "ok", "{job}: {}", r.body);
    }

    // An operator restores one customer's rows: those alone, and the
    // audit entry names the customer by pseudonym.
    let restore_one = |to: &std::path::Path, subject: &str| {
        let body = json!({"to": to, "subject": subject}).to_string();
        http(
            s.addr,
            "POST",
            "/api/v1/policies/crm/restore",
            Some(otto),
            Some(&body),
        )
    };
    let one = f.root.join("customer-2.db");
    let r = restore_one(&one, "2");
    assert_eq!(r.status, 200, "{}", r.body);
    let rep = r.json();
    assert_eq!(rep["partial"], true, "{rep}");
    let pseudonym = rep["subject"].as_str().unwrap().to_string();
    assert_eq!(pseudonym.len(), 32, "{rep}");
    let c = rusqlite::Connection::open(&one).unwrap();
    let rows = |sql: &str| -> Vec<String> {
        let mut st = c.prepare(sql).unwrap();
        st.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(rows("SELECT id || ':' || name FROM customers"), ["2:b"]);
    assert_eq!(rows("SELECT id || ':' || customer_id FROM cdrs"), ["2:2"]);
    drop(c);
    let detail = audit_entries(&f)
        .into_iter()
        .filter(|e| e.op == "restore" && e.actor == "otto")
        .filter_map(|e| e.detail)
        .collect::<Vec<_>>();
    assert_eq!(
        detail,
        [format!(
            "partial: tables customers, cdrs; subject {pseudonym}"
        )]
    );

    // A customer the vault has no key of is the request's fault (400, not
    // a server error), says why, and makes no file.
    let none = f.root.join("customer-none.db");
    let r = restore_one(&none, "no-such-customer-4711");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body
            .contains("the shredding ledger records no shred of it")
            && !r.body.contains("no-such-customer-4711"),
        "{}",
        r.body
    );
    assert!(!none.exists());
    // A file in the way, without `force`: a conflict, the file untouched.
    let before = std::fs::read(&one).unwrap();
    let r = restore_one(&one, "2");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("already exists"), "{}", r.body);
    assert_eq!(std::fs::read(&one).unwrap(), before);

    // A job another agent is running (its lease is held) is refused, not
    // run beside it; once the lease is given back, it runs and is recorded
    // in the lease like the daemon's runs.
    use custos::schedule::lease::{lease_path, read, Claim, Lease};
    use custos::schedule::JobKind;
    let policy = custos::policy::Policy::load(&f.policies.join("crm.toml")).unwrap();
    let target = custos::ops::open_target(&policy, policy.primary(), false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let ttl = std::time::Duration::from_secs(60);
    let lease = match rt
        .block_on(Lease::claim(&target, "crm", JobKind::Backup, later, ttl))
        .unwrap()
    {
        Claim::Claimed(l) => l,
        other => panic!("{other:?}"),
    };
    let backup = |token: &str| {
        http(
            s.addr,
            "POST",
            "/api/v1/policies/crm/jobs/backup",
            Some(token),
            Some(""),
        )
    };
    let r = backup(otto);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("is being run by"), "{}", r.body);
    rt.block_on(lease.finish(false, "given back")).unwrap();
    // (A run records its second as done: the next one must start in a
    // later second.)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = backup(otto);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["outcome"], "ok", "{}", r.body);
    let (rec, _) = rt
        .block_on(read(&target, "crm", &lease_path(JobKind::Backup)))
        .unwrap()
        .unwrap();
    assert_eq!(rec.last_outcome.as_deref(), Some("ok"), "{rec:?}");
    assert!(rec.holder.is_none(), "{rec:?}");
    let r = http(
        s.addr,
        "POST",
        "/api/v1/policies/crm/jobs/nonsense",
        Some(otto),
        Some(""),
    );
    assert_eq!(r.status, 400, "{}", r.body);

    let rita = f.tokens["rita"].as_str();
    let r = http(
        s.addr,
        "POST",
        "/api/v1/policies/crm/shred",
        Some(rita),
        Some(r#"{"unit": "consumption:2025-09", "reason": "retention ended"}"#),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let p = r.json();
    assert_eq!(p["unit"]["name"], "consumption:2025-09", "{p}");
    assert_eq!(p["requester"], "rita");
    let again = http(
        s.addr,
        "POST",
        "/api/v1/policies/crm/shred",
        Some(rita),
        Some(r#"{"unit": "consumption:2025-09"}"#),
    );
    assert_eq!(again.status, 409, "{}", again.body);
    let unknown = http(
        s.addr,
        "POST",
        "/api/v1/policies/crm/shred",
        Some(rita),
        Some(r#"{"unit": "consumption:1999-01"}"#),
    );
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    // The ledger in the vault holds it, pending.
    let out = common::run(
        common::custos()
            .arg("--state-dir")
            .arg(&f.state)
            .args(["shred", "--list", "--policy"])
            .arg(f.policies.join("crm.toml")),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("consumption:2025-09"), "{text}");
    let es = audit_entries(&f);
    // One entry per request, hers with her role: the accepted one, the
    // refused repeat and the unknown unit (not the server's user's).
    let requests: Vec<_> = es.iter().filter(|e| e.op == "shred.request").collect();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(
        requests
            .iter()
            .all(|e| e.actor == "rita" && e.role == "retention"),
        "{requests:?}"
    );
    assert_eq!(
        requests
            .iter()
            .filter(|e| e.outcome == Outcome::Failed)
            .count(),
        2,
        "{requests:?}"
    );
    assert!(es
        .iter()
        .any(|e| e.actor == "job:crm/drill" && e.outcome == Outcome::Ok));
}

// ---------------------------------------------------------------------------
// TLS (`custos serve --tls-cert --tls-key`)
// ---------------------------------------------------------------------------

/// Kills the child process it holds when dropped (a test that panics must
/// not leave a server running).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary; `CUSTOS_TEST_BIN` runs another build of it (for a target
/// directory shared by several checkouts).
/// `custos serve` of the fixture's policies over TLS with `cert` and
/// `key`, on a free port, without background refresh.
fn tls_serve(f: &Fixture, cert: &std::path::Path, key: &std::path::Path) -> std::process::Command {
    let mut c = serve_cmd();
    c.arg("--state-dir")
        .arg(&f.state)
        .args(["serve", "--policies"])
        .arg(&f.policies)
        .args(["--listen", "127.0.0.1:0", "--background-secs", "0"])
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key);
    c
}

fn serve_cmd() -> std::process::Command {
    let mut c = common::custos();
    if let Some(b) = std::env::var_os("CUSTOS_TEST_BIN") {
        let mut own = std::process::Command::new(b);
        for (k, v) in c.get_envs() {
            if let Some(v) = v {
                own.env(k, v);
            }
        }
        c = own;
    }
    c
}

fn tls_client(trusted: Option<&rcgen::Certificate>) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(c) = trusted {
        roots.add(c.der().clone()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
}

/// One HTTPS request (Connection: close); the whole response as text.
async fn https_get(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A peer that closes without close_notify: keep what came.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_speaks_tls_with_the_given_certificate_and_only_tls() {
    let f = fixture();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = f.root.join("console.crt");
    let key = f.root.join("console.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();

    // A key that is not PEM is refused before listening, naming the file.
    let bad = f.root.join("bad.key");
    std::fs::write(&bad, "not a key").unwrap();
    let out = tls_serve(&f, &cert, &bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.key") && err.contains("private key"),
        "{err}"
    );

    let mut child = tls_serve(&f, &cert, &key);
    child.stdout(std::process::Stdio::piped());
    let mut child = Child(child.spawn().unwrap());
    // Keep reading its stdout (a closed pipe would end the server).
    let mut stdout = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let url = first
        .trim()
        .strip_prefix("custos console listening on https://")
        .unwrap_or_else(|| panic!("first line: {first}"));
    let addr: SocketAddr = url.trim_end_matches('/').parse().unwrap();

    // A client that trusts the certificate gets answers, with roles checked.
    let trusting = tls_client(Some(&ck.cert));
    let health = https_get(&trusting, addr, "/healthz", None).await.unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok\n"), "{health}");
    let who = https_get(&trusting, addr, "/api/v1/whoami", Some(&f.tokens["ann"]))
        .await
        .unwrap();
    assert!(who.starts_with("HTTP/1.1 200"), "{who}");
    assert!(who.contains("\"ann\"") && who.contains("auditor"), "{who}");
    let denied = https_get(&trusting, addr, "/api/v1/whoami", Some("cst_0"))
        .await
        .unwrap();
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");

    // A client that does not trust it fails the handshake.
    let wary = tls_client(None);
    let e = https_get(&wary, addr, "/healthz", None).await.unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");

    // Plain HTTP gets no HTTP answer on the TLS port; the server keeps
    // serving TLS clients afterwards.
    let plain = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    })
    .await
    .unwrap();
    assert!(
        !plain.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&plain)
    );
    let again = https_get(&trusting, addr, "/healthz", None).await.unwrap();
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    drop(child);
}
