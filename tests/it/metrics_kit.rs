//! The operations kit against the code: every metric the Grafana dashboard
//! (`deploy/grafana/citypark.json`) and the alert rules (`deploy/citypark-alerts.yml`)
//! read is one `citypark::metrics` exports, every alert has a firing and a quiet unit
//! test, and what /metrics serves passes `promtool check metrics`.
//!
//! The promtool checks need promtool on PATH (Debian's prometheus package); without it
//! they print why and skip, unless `CITYPARK_REQUIRE_TOOLS=1`, which CI sets.

use std::{
    collections::BTreeSet,
    env,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use citypark::{metrics, pb};
use serde_json::Value;
use tonic::Code;

use crate::{
    redis_support::{RedisServer, key_prefix},
    support::*,
};

/// Set to "1" (CI does) to turn a missing promtool into a failure.
const REQUIRE_VAR: &str = "CITYPARK_REQUIRE_TOOLS";

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// ---------------------------------------------------------------------------------
// PromQL: which metrics an expression reads

/// One vector selector of an expression: the metric's name and its label matchers as
/// written (empty without braces).
#[derive(Debug, PartialEq)]
struct Selector {
    name: String,
    matchers: String,
}

/// Aggregation operators: followed by `by (...)` or `(`, never a metric.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Other words that are not metrics.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];

/// Index of the byte after the one closing the bracket opened at `open`, skipping
/// quoted strings.
fn closing(bytes: &[u8], open: usize) -> usize {
    let (left, right) = (
        bytes[open],
        match bytes[open] {
            b'(' => b')',
            b'[' => b']',
            b'{' => b'}',
            other => panic!("no bracket: {}", other as char),
        },
    );
    let (mut depth, mut i) = (0, open);
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'\'' | b'`' => i = after_string(bytes, i) - 1,
            b if b == left => depth += 1,
            b if b == right => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!("unclosed {}", left as char);
}

/// Index of the byte after the string literal opened at `open`.
fn after_string(bytes: &[u8], open: usize) -> usize {
    let quote = bytes[open];
    let mut i = open + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quote != b'`' => i += 1,
            b if b == quote => return i + 1,
            _ => {}
        }
        i += 1;
    }
    panic!("unclosed string");
}

fn skip_space(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The vector selectors of a PromQL expression (Grafana's `$variables` allowed), in
/// order. Functions, aggregations, keywords, label lists, numbers, durations, strings
/// and ranges are not selectors; a selector without a name (`{__name__=~"..."}`)
/// cannot be checked, so it fails the test.
fn selectors(expr: &str) -> Vec<Selector> {
    let bytes = expr.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'\'' | b'`' => i = after_string(bytes, i),
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            // A range or a subquery: a duration or a Grafana interval variable.
            b'[' => i = closing(bytes, i),
            b'{' => panic!("a selector without a metric name in {expr:?}"),
            // A Grafana variable: `$name` or `${name}`.
            b'$' => {
                i += 1;
                if bytes.get(i) == Some(&b'{') {
                    i = closing(bytes, i);
                } else {
                    while i < bytes.len() && word(bytes[i]) {
                        i += 1;
                    }
                }
            }
            // A number or a duration (`0.99`, `1e3`, `5m`).
            b if b.is_ascii_digit()
                || (b == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                while i < bytes.len() && (word(bytes[i]) || bytes[i] == b'.') {
                    i += 1;
                }
            }
            b if word(b) => {
                let start = i;
                while i < bytes.len() && word(bytes[i]) {
                    i += 1;
                }
                let name = &expr[start..i];
                let next = skip_space(bytes, i);
                if LABEL_LISTS.contains(&name) {
                    if bytes.get(next) == Some(&b'(') {
                        i = closing(bytes, next);
                    }
                } else if AGGREGATIONS.contains(&name)
                    || KEYWORDS.contains(&name)
                    || bytes.get(next) == Some(&b'(')
                {
                    // Not a metric: an aggregation, a keyword or a function call.
                } else if bytes.get(next) == Some(&b'{') {
                    let end = closing(bytes, next);
                    found.push(Selector {
                        name: name.to_owned(),
                        matchers: expr[next + 1..end - 1].to_owned(),
                    });
                    i = end;
                } else {
                    found.push(Selector {
                        name: name.to_owned(),
                        matchers: String::new(),
                    });
                }
            }
            _ => i += 1,
        }
    }
    found
}

/// The exported metric `name` is, histograms' series (`_bucket`, `_sum`, `_count`)
/// counted as their histogram; None if citypark exports no such series.
fn exported(name: &str) -> Option<&'static str> {
    if let Some(known) = metrics::ALL.iter().find(|n| **n == name) {
        return Some(known);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        metrics::HISTOGRAMS.iter().find(|h| **h == base).copied()
    })
}

#[test]
fn promql_selectors_are_found_and_the_rest_is_not() {
    let names =
        |expr: &str| -> Vec<String> { selectors(expr).into_iter().map(|s| s.name).collect() };
    let found = selectors(
        r#"histogram_quantile(0.99, sum by (method, le) (rate(citypark_grpc_request_duration_seconds_bucket{instance=~"$instance", method="a/b"}[$__rate_interval])))"#,
    );
    assert_eq!(
        found,
        [Selector {
            name: "citypark_grpc_request_duration_seconds_bucket".into(),
            matchers: r#"instance=~"$instance", method="a/b""#.into(),
        }]
    );
    assert_eq!(
        names("a / on (instance) group_left(region) b offset 5m > bool 1e-3 and c unless d"),
        ["a", "b", "c", "d"]
    );
    assert_eq!(
        names(r#"count_values("code", x) or sum(y) by (le)"#),
        ["x", "y"]
    );
    assert_eq!(
        names("max by (region) (sum without(instance) (x{s=\"}{\"}) / sum(y))\n# z"),
        ["x", "y"]
    );
    assert_eq!(names("rate(x[5m:1m]) * ${factor} / $scale"), ["x"]);

    assert_eq!(
        exported("citypark_grpc_requests_total"),
        Some("citypark_grpc_requests_total")
    );
    assert_eq!(
        exported("citypark_ingest_report_age_seconds_count"),
        Some("citypark_ingest_report_age_seconds")
    );
    // A typo, and a gauge read as if it were a histogram, are caught.
    assert_eq!(exported("citypark_grpc_requests"), None);
    assert_eq!(exported("citypark_sessions_count"), None);
}

// ---------------------------------------------------------------------------------
// The dashboard

fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/grafana/citypark.json")).expect("the dashboard is JSON")
}

/// Every panel, those inside collapsed rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            all.extend(inner);
        }
    }
    all
}

/// The selectors of a template variable's query: `label_values(selector, label)`.
fn variable_selectors(query: &str) -> Vec<Selector> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not label_values(selector, label): {query:?}"));
    let (selector, _label) = inner.rsplit_once(',').expect("a label");
    selectors(selector)
}

#[test]
fn dashboard_queries_read_only_exported_metrics_and_show_them_all() {
    let dashboard = dashboard();
    let mut used = BTreeSet::new();
    let mut queries = 0;
    for panel in panels(&dashboard) {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().expect("a title");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: a target without expr"));
            let found = selectors(expr);
            assert!(!found.is_empty(), "{title}: no metric in {expr:?}");
            for selector in found {
                let name = exported(&selector.name).unwrap_or_else(|| {
                    panic!(
                        "{title}: {} is not a metric citypark exports",
                        selector.name
                    )
                });
                // The instance picker applies to every panel.
                assert!(
                    selector.matchers.contains(r#"instance=~"$instance""#),
                    "{title}: {} is not filtered by $instance",
                    selector.name
                );
                used.insert(name);
            }
            queries += 1;
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if variable["type"] == "query" {
            let query = variable["query"]["query"]
                .as_str()
                .or(variable["query"].as_str())
                .expect("a query");
            for selector in variable_selectors(query) {
                assert!(
                    exported(&selector.name).is_some(),
                    "variable {}: {} is not exported",
                    variable["name"],
                    selector.name
                );
            }
        }
    }
    assert!(queries > 40, "only {queries} queries found");
    let missing: Vec<&&str> = metrics::ALL.iter().filter(|n| !used.contains(*n)).collect();
    assert!(missing.is_empty(), "exported but on no panel: {missing:?}");
}

#[test]
fn dashboard_imports_with_a_datasource_and_an_instance_variable() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "citypark");
    assert!(
        dashboard["schemaVersion"].as_u64().unwrap() >= 36,
        "Grafana 10 or later"
    );
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    assert_eq!(variable("instance")["type"], "query");
    assert_eq!(variable("instance")["includeAll"], true);
    assert_eq!(variable("instance")["allValue"], ".*");

    // Every query goes to the chosen data source, so the dashboard imports and
    // provisions anywhere without editing.
    let source = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "{title}: id reused"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24, "{title}: wider than the dashboard");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"], source, "{title}");
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"], source, "{title}");
        }
    }
    for name in ["instance", "region"] {
        assert_eq!(variable(name)["datasource"], source, "variable {name}");
    }
}

// ---------------------------------------------------------------------------------
// The alert rules

/// A rule of the rules file: its name (alert or record) and its expression.
#[derive(Debug)]
struct Rule {
    name: String,
    alert: bool,
    expr: String,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The rules of a Prometheus rules file. Reads the YAML shapes a rules file uses: a
/// rule starts at `- alert:` or `- record:`, and its `expr` is a scalar on the key's
/// line, or a block (`>`, `|`) or plain scalar on the lines indented below it. It
/// fails on quoted scalars it cannot read rather than skip them.
fn rules(text: &str) -> Vec<Rule> {
    let lines: Vec<&str> = text.lines().collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let item = line.trim_start().trim_start_matches("- ");
        if let Some((key, name)) = item.split_once(':')
            && (key == "alert" || key == "record")
            && line.trim_start().starts_with("- ")
        {
            rules.push(Rule {
                name: name.trim().to_owned(),
                alert: key == "alert",
                expr: String::new(),
            });
        } else if let Some(value) = line.trim_start().strip_prefix("expr:") {
            let rule = rules.last_mut().expect("an expr inside a rule");
            assert!(rule.expr.is_empty(), "{}: two exprs", rule.name);
            let value = value.trim();
            let mut expr = match value {
                ">" | ">-" | "|" | "|-" | "" => String::new(),
                quoted if quoted.starts_with('"') || quoted.starts_with('\'') => {
                    let quote = &quoted[..1];
                    let inner = quoted[1..]
                        .strip_suffix(quote)
                        .unwrap_or_else(|| panic!("{}: a quoted expr over lines", rule.name));
                    assert!(!inner.contains('\\'), "{}: escapes in expr", rule.name);
                    inner.to_owned()
                }
                plain => plain.to_owned(),
            };
            let key_indent = indent(line);
            while let Some(next) = lines.get(i + 1) {
                if !next.trim().is_empty() && indent(next) <= key_indent {
                    break;
                }
                expr.push('\n');
                expr.push_str(next.trim());
                i += 1;
            }
            rule.expr = expr.trim().to_owned();
        }
        i += 1;
    }
    for rule in &rules {
        assert!(!rule.expr.is_empty(), "{}: no expr", rule.name);
    }
    rules
}

#[test]
fn alert_rules_read_only_exported_metrics() {
    let text = read("deploy/citypark-alerts.yml");
    let rules = rules(&text);
    let declared = text
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("- alert:") || l.starts_with("- record:")
        })
        .count();
    assert_eq!(rules.len(), declared, "a rule was not read");
    assert!(rules.len() >= 10, "only {} rules", rules.len());
    // Recorded series may be read by later rules.
    let recorded: BTreeSet<&str> = rules
        .iter()
        .filter(|r| !r.alert)
        .map(|r| r.name.as_str())
        .collect();
    for rule in &rules {
        let found = selectors(&rule.expr);
        assert!(
            !found.is_empty(),
            "{}: no metric in {:?}",
            rule.name,
            rule.expr
        );
        for selector in found {
            assert!(
                exported(&selector.name).is_some() || recorded.contains(selector.name.as_str()),
                "{}: {} is not a metric citypark exports",
                rule.name,
                selector.name
            );
        }
    }
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_unit_test() {
    let alerts: BTreeSet<String> = rules(&read("deploy/citypark-alerts.yml"))
        .into_iter()
        .filter(|r| r.alert)
        .map(|r| r.name)
        .collect();
    let tests = read("deploy/citypark-alerts.test.yml");
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.strip_prefix("alertname:") else {
            continue;
        };
        let name = name.trim().to_owned();
        assert!(alerts.contains(&name), "a test of {name}, which is no rule");
        let expected = lines[i + 1..]
            .iter()
            .find_map(|l| l.strip_prefix("exp_alerts:"))
            .unwrap_or_else(|| panic!("{name}: no exp_alerts"));
        if expected.trim() == "[]" {
            quiet.insert(name);
        } else {
            firing.insert(name);
        }
    }
    for alert in &alerts {
        assert!(firing.contains(alert), "{alert}: no test where it fires");
        assert!(
            quiet.contains(alert),
            "{alert}: no test where it stays quiet"
        );
    }
}

// ---------------------------------------------------------------------------------
// promtool

/// promtool's path, or None after printing why the test skips; panics instead when
/// `CITYPARK_REQUIRE_TOOLS=1`, so CI cannot pass by skipping.
fn promtool() -> Option<PathBuf> {
    let found = env::var_os("PATH").and_then(|path| {
        env::split_paths(&path)
            .map(|dir| dir.join("promtool"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        if env::var(REQUIRE_VAR).as_deref() == Ok("1") {
            panic!("promtool not found on PATH and {REQUIRE_VAR}=1; install Debian's prometheus");
        }
        eprintln!(
            "skipping: promtool not found on PATH; install Debian's prometheus \
             (apt-get install --no-install-recommends prometheus) or set {REQUIRE_VAR}=1 to \
             fail instead"
        );
    }
    found
}

/// Runs promtool with `args` and `stdin`; fails the test with its output unless it
/// succeeds.
fn run_promtool(promtool: &Path, args: &[&str], stdin: &str) {
    let mut child = Command::new(promtool)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let Some(promtool) = promtool() else { return };
    run_promtool(
        &promtool,
        &["check", "rules", "deploy/citypark-alerts.yml"],
        "",
    );
    run_promtool(
        &promtool,
        &["test", "rules", "deploy/citypark-alerts.test.yml"],
        "",
    );
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let Some(promtool) = promtool() else { return };
    // Each query as a recording rule, Grafana's variables given values, so that
    // promtool's parser reads every one.
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, panel) in panels(&dashboard()).into_iter().enumerate() {
        for (t, target) in panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*")
                .replace("$region", ".*");
            let expr = serde_json::to_string(&expr).unwrap();
            file.push_str(&format!(
                "      - record: panel_{n}_{t}\n        expr: {expr}\n"
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-queries.yml");
    std::fs::write(&path, file).unwrap();
    run_promtool(&promtool, &["check", "rules", path.to_str().unwrap()], "");
}

/// The body of an HTTP/1.1 response read to its end.
fn body(response: &str) -> &str {
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "a chunked body: {head}"
    );
    body
}

/// Makes the calls whose metrics a dashboard shows (a registration, a report, a query,
/// a failing query, a watch) on a car park in `region`, a region no other test uses,
/// checks the region's series, and returns the body of /metrics.
async fn exercise(server: &TestServer, region: &str) -> String {
    let car_park = pb::CarPark {
        region: region.into(),
        ..garage(&format!("{region}-1"), 36.067, 120.383)
    };
    let id = register(server, car_park).await.id;
    // A report whose numbers are 1,000 s old when applied: one in the report-age
    // histogram's (600, 1800] bucket, and a stale car park.
    let old = after(server.now(), -1000);
    report_ok(server, snapshot(&id, 1, 5, old)).await;
    let mut availability = server.availability().await;
    availability.find_nearby(near_here()).await.unwrap();
    let bad = pb::FindNearbyRequest {
        limit: 101,
        ..near_here()
    };
    expect_code(availability.find_nearby(bad).await, Code::InvalidArgument);
    let mut watch = watch_ids(server, &[&id]).await.unwrap();
    read_snapshot(&mut watch).await;

    // The car-park gauges come from the sweeper (every 50 ms in tests), which only this
    // server's sweeper sets for this region.
    let gauge =
        |status: &str| format!(r#"citypark_car_parks{{region="{region}",status="{status}"}}"#);
    let text = eventually("the region's car-park gauges", || async {
        let text = server.metrics_text().await;
        (series(&text, &gauge("stale")) == 1.0).then_some(text)
    })
    .await;
    let metrics = body(&text).to_owned();
    for status in ["open", "closed", "no_data"] {
        assert_eq!(series(&metrics, &gauge(status)), 0.0, "{status}\n{metrics}");
        assert!(
            metrics.contains(&gauge(status)),
            "{status} missing\n{metrics}"
        );
    }
    let bucket = |le: &str| {
        let name =
            format!(r#"citypark_ingest_report_age_seconds_bucket{{region="{region}",le="{le}"}}"#);
        series(&metrics, &name)
    };
    assert_eq!((bucket("600"), bucket("1800")), (0.0, 1.0), "{metrics}");
    for served in [
        r#"citypark_grpc_requests_total{method="citypark.v1.Availability/FindNearby",code="invalid_argument"}"#,
        "citypark_watchers",
    ] {
        assert!(
            series(&metrics, served) >= 1.0,
            "{served} missing\n{metrics}"
        );
    }

    // A region whose last car park goes reads zero, not its last count.
    drop(watch);
    server
        .registry()
        .await
        .delete_car_park(authed(pb::DeleteCarParkRequest { id }, OPERATOR_A.1))
        .await
        .unwrap();
    eventually("the region's gauges at zero", || async {
        let text = server.metrics_text().await;
        (text.contains(&gauge("stale")) && series(&text, &gauge("stale")) == 0.0).then_some(())
    })
    .await;
    metrics
}

#[tokio::test]
async fn served_metrics_pass_promtool_check_metrics() {
    let Some(promtool) = promtool() else { return };
    let server = TestServer::start().await;
    let metrics = exercise(&server, "metrics-kit").await;
    run_promtool(&promtool, &["check", "metrics"], &metrics);
}

/// On Redis, with the store's own metrics (round trips, reports written, store up).
#[tokio::test]
async fn served_metrics_on_redis_pass_promtool_check_metrics() {
    let Some(promtool) = promtool() else { return };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let server = TestServer::start_redis(&redis.url(), &key_prefix()).await;
    let metrics = exercise(&server, "metrics-kit-redis").await;
    for served in [
        r#"citypark_redis_round_trips_total{op="ingest"}"#,
        "citypark_redis_reports_written_total",
        "citypark_store_up",
    ] {
        assert!(
            series(&metrics, served) >= 1.0,
            "{served} missing\n{metrics}"
        );
    }
    run_promtool(&promtool, &["check", "metrics"], &metrics);
}
