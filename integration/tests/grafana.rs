//! `deploy/grafana/mooncake.json` charts metrics that exist: every metric name its
//! queries use is served on `/metrics` by a running master or real client.

use std::collections::BTreeSet;
use std::path::PathBuf;

use mooncake_integration::*;

/// Metric names in a PromQL expression: identifiers of this project's families.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &expr[i..];
        if starts_word && (rest.starts_with("master_") || rest.starts_with("mooncake_client_")) {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(rest[..len].to_string());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

/// Families served at `addr`'s `/metrics` (sample names, labels stripped).
fn served(addr: &str) -> BTreeSet<String> {
    let (status, body) = http_get(addr, "/metrics").expect("metrics answer");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn every_metric_the_dashboard_queries_is_served() {
    let (_master, rpc, master_http) = start_master_with_http(&["--enable_offload=true"]);
    let paths = Paths::new("grafana");
    // With a disk tier, so its metrics are served too.
    let disk_dir = std::env::temp_dir().join(format!("mc-grafana-disk-{}", std::process::id()));
    let client = ClientBuilder::new(&paths)
        .with_master(&rpc)
        .with_size("16MB")
        .with_arg("--enable_offload=true")
        .with_arg(format!("--offload_dir={}", disk_dir.display()))
        .with_arg("--offload_size=16MB")
        .start();
    let client_http = client.ready_field("http").expect("client http address");
    let mut available = served(&master_http);
    available.extend(served(&client_http));

    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/mooncake.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(
            !targets.is_empty(),
            "panel {} queries nothing",
            panel["title"]
        );
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr} names no metric of ours");
            queried.extend(names);
        }
    }
    drop(client);
    let _ = std::fs::remove_dir_all(&disk_dir);
    let missing: Vec<&String> = queried.iter().filter(|n| !available.contains(*n)).collect();
    assert!(missing.is_empty(), "queried but not served: {missing:?}");
    assert!(
        queried.len() >= 20,
        "the dashboard covers the store: {queried:?}"
    );
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(master_x_bucket[1m]))) / mooncake_client_y"
        ),
        vec!["master_x_bucket", "mooncake_client_y"]
    );
    assert!(metric_names("sum(rate(other_master_z[1m]))").is_empty());
}
