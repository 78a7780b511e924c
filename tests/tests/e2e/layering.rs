//! The architecture's layering rules, checked from the manifests (normal, dev and build
//! dependencies alike): the broker core depends on no IO crate, services never depend on other
//! services, and shared crates never depend on services (only the `hermes` command, which runs
//! them all in one process, and the end-to-end tests may).

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
            in_deps = matches!(line, "[dependencies]" | "[dev-dependencies]" | "[build-dependencies]");
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

#[test]
fn shared_crates_do_not_depend_on_services() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let services: Vec<String> = std::fs::read_dir(root.join("services"))
        .expect("services dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let crates: Vec<String> = std::fs::read_dir(root.join("crates"))
        .expect("crates dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|c| c != "hermes")
        .collect();
    assert!(crates.iter().any(|c| c == "broker"), "{crates:?}");
    for c in &crates {
        let deps = dependency_names(&manifest(&format!("crates/{c}/Cargo.toml")));
        for s in &services {
            assert!(!deps.contains(s), "crates/{c} depends on service {s}");
        }
    }
}

#[test]
fn dependency_sections_are_all_read() {
    let text = "[dependencies]\na.workspace = true\n[dev-dependencies]\nb = \"1\"\n[features]\nc = []\n";
    assert_eq!(dependency_names(text), ["a", "b"]);
}
