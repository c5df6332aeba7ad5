//! README.md's metrics table and the one metrics catalog (`proxy/src/metrics.rs` and
//! `proxy/src/metrics/`) name the same series, so neither can drift from the other: a series
//! added to the catalog without a table row fails here, as does a row for a series that is gone.
//!
//! The catalog is read twice: as the families the registry renders (`Metrics::new()` plus the
//! blocks other stages register into it), and as every `"tollgate_..."` string literal in the
//! catalog's source, which also covers labelled series that have no sample yet (the registry
//! leaves those out of its output) and series a stage registers only when it runs.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tollgate::{Metrics, SpendMetrics};

fn proxy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Families the registry renders once every catalog block is registered.
fn rendered_families() -> BTreeSet<String> {
    let metrics = Metrics::new();
    SpendMetrics::new(Arc::new(|_: &str| true))
        .register(metrics.registry())
        .unwrap();
    metrics
        .registry()
        .gather()
        .iter()
        .map(|f| f.name().to_owned())
        .collect()
}

/// Every `.rs` file of the catalog: metrics.rs and everything under metrics/.
fn catalog_sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = vec![proxy_dir().join("src/metrics.rs")];
    walk(&proxy_dir().join("src/metrics"), &mut files);
    files
}

/// `"tollgate_<name>"` string literals (exactly a name between the quotes).
fn declared_names(text: &str) -> BTreeSet<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("tollgate_")
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(str::to_owned)
        .collect()
}

/// The series named in the first column of README.md's metrics table.
fn table_names(readme: &str) -> BTreeSet<String> {
    let mut lines = readme.lines().skip_while(|l| !l.starts_with("| series |"));
    assert!(
        lines.next().is_some(),
        "README.md has no `| series |` table"
    );
    let mut names = BTreeSet::new();
    for row in lines.skip(1).take_while(|l| l.starts_with('|')) {
        let first = row.split('|').nth(1).unwrap_or_default();
        for name in first.split('`').skip(1).step_by(2) {
            names.insert(name.to_owned());
        }
    }
    names
}

fn readme() -> String {
    std::fs::read_to_string(proxy_dir().join("../README.md")).unwrap()
}

#[test]
fn every_series_in_the_catalog_has_a_row_in_the_readme_table() {
    let table = table_names(&readme());
    let mut catalog = rendered_families();
    for file in catalog_sources() {
        catalog.extend(declared_names(&std::fs::read_to_string(&file).unwrap()));
    }
    // The test itself must see the catalog, or it could pass on nothing.
    assert!(
        catalog.contains("tollgate_connections_total"),
        "{catalog:?}"
    );
    assert!(
        catalog.contains("tollgate_llm_overcharges_total"),
        "{catalog:?}"
    );
    let missing: Vec<&String> = catalog.difference(&table).collect();
    assert!(
        missing.is_empty(),
        "series missing from README.md's metrics table (section Observability): {missing:?}"
    );
}

#[test]
fn every_row_of_the_readme_table_names_a_series_of_the_catalog() {
    let table = table_names(&readme());
    assert!(table.len() >= 10, "{table:?}");
    let mut catalog = rendered_families();
    for file in catalog_sources() {
        catalog.extend(declared_names(&std::fs::read_to_string(&file).unwrap()));
    }
    let unknown: Vec<&String> = table.difference(&catalog).collect();
    assert!(
        unknown.is_empty(),
        "README.md's metrics table names series the catalog does not declare: {unknown:?}"
    );
}
