//! The architecture's layering rules, checked from the manifests: the broker core depends on no
//! IO crate, and services never depend on other services.

use std::path::Path;

fn manifest(rel: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn dependency_names(toml_text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_deps = false;
    for line in toml_text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && let Some((name, _)) = line.split_once('=') {
            names.push(name.trim().trim_end_matches(".workspace").to_string());
        }
    }
    names
}

#[test]
fn broker_core_is_sans_io() {
    let deps = dependency_names(&manifest("crates/broker/Cargo.toml"));
    for io in ["tokio", "ntex", "ntex-mqtt", "redis", "async-nats", "sqlx", "tonic", "axum", "mio", "socket2"] {
        assert!(!deps.iter().any(|d| d == io), "crates/broker must not depend on {io}: {deps:?}");
    }
}

#[test]
fn services_do_not_depend_on_services() {
    let services = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../services")).expect("services dir");
    let names: Vec<String> =
        services.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.is_empty());
    for s in &names {
        let deps = dependency_names(&manifest(&format!("services/{s}/Cargo.toml")));
        for other in &names {
            assert!(other == s || !deps.contains(other), "service {s} depends on service {other}");
        }
    }
}
