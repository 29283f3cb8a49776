//! The crate graph in docs/ARCHITECTURE.md is the one the `Cargo.toml` files declare: a
//! dependency added against the data flow fails here until the documented graph says so.
use std::collections::{BTreeMap, BTreeSet};

/// The iotmon crates each `Cargo.toml` lists under `[dependencies]`, by short name.
fn declared(manifest: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).expect("manifest readable");
    let value: toml::Value = toml::from_str(&text).expect("manifest parses");
    value
        .get("dependencies")
        .and_then(toml::Value::as_table)
        .map(|deps| {
            deps.keys()
                .filter_map(|name| match name.as_str() {
                    "iotmon" => Some(name.as_str()),
                    _ => name.strip_prefix("iotmon-"),
                })
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The table under "## The crate graph": crate → the crates it depends on.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let text = include_str!("../docs/ARCHITECTURE.md");
    let section = text
        .split("## The crate graph")
        .nth(1)
        .expect("the crate graph section")
        .split("\n## ")
        .next()
        .expect("its text");
    let names = |cell: &str| -> BTreeSet<String> {
        cell.split(',')
            .map(|name| name.trim().trim_matches('`').to_string())
            .filter(|name| !name.is_empty() && name != "none")
            .collect()
    };
    section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').collect();
            let krate = cells[0].split_whitespace().next().expect("a name");
            (krate.trim_matches('`').to_string(), names(cells[1]))
        })
        .collect()
}

#[test]
fn the_documented_crate_graph_is_the_declared_one() {
    let root = env!("CARGO_MANIFEST_DIR");
    let workspace: toml::Value = toml::from_str(
        &std::fs::read_to_string(format!("{root}/Cargo.toml")).expect("root manifest"),
    )
    .expect("root manifest parses");
    let members = workspace["workspace"]["members"]
        .as_array()
        .expect("workspace members")
        .iter()
        .map(|member| member.as_str().expect("a path").to_string());
    let mut actual = BTreeMap::new();
    for member in members {
        actual.insert(
            member.to_string(),
            declared(&format!("{root}/{member}/Cargo.toml")),
        );
    }
    actual.insert(
        "iotmon".to_string(),
        declared(&format!("{root}/Cargo.toml")),
    );
    assert_eq!(documented(), actual);
}
