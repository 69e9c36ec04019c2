//! The crate's modules depend on each other one way only: no import cycle among them.
//!
//! The event path reads from the socket to the store in the module names alone (see the crate's
//! docs), and each layer can be read, tested and replaced without the ones above it: `store`,
//! `sandbox`, `event`, `metrics`, `committer` and `amounts` at the bottom; `plugins`; the
//! `pipeline`, which holds everything that writes an operator's ledger in its turn; what only
//! reads the ledger (`replay`, `shadow`); and the edges (`api`, `cluster`, `console`, `server`).
//! This test reads the sources and fails, naming the cycle, when a change closes one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The crate's top-level module that `file` (relative to `src/`) belongs to.
fn module_of(file: &Path) -> String {
    let first = file.components().next().expect("a relative path").as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// The top-level modules named by `crate::` paths in `source`'s code (comments aside).
fn modules_named(source: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for line in source.lines().map(str::trim_start).filter(|line| !line.starts_with("//")) {
        let code = line.split(" //").next().unwrap_or(line);
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                // `crate::{a, b::c}`: each group member's first segment.
                Some(group) => group.split('}').next().unwrap_or("").split(',').collect(),
                None => vec![rest],
            };
            for name in names {
                let name: String = name.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    named.insert(name);
                }
            }
        }
    }
    named
}

fn sources(dir: &Path, root: &Path, found: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, root, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let relative = path.strip_prefix(root).expect("under src/").to_owned();
            found.push((module_of(&relative), std::fs::read_to_string(&path).expect("a readable source")));
        }
    }
}

/// The dependency graph between top-level modules (the crate root and the binary excluded).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    sources(&root, &root, &mut found);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, source) in found.into_iter().filter(|(module, _)| module != "lib" && module != "main") {
        let named = modules_named(&source);
        graph.entry(module.clone()).or_default().extend(named.into_iter().filter(|name| *name != module));
    }
    graph
}

/// A cycle through `graph`, if any, as the modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|on_path| on_path == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_crates_modules_have_no_import_cycle() {
    let graph = graph();
    assert!(graph.contains_key("pipeline") && graph["pipeline"].contains("store"), "the sources were read: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("an import cycle among the crate's modules: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_pipeline_never_calls_up_into_what_reads_the_ledger() {
    let graph = graph();
    for above in ["replay", "shadow", "api", "cluster", "console", "server", "fixtures"] {
        assert!(!graph["pipeline"].contains(above), "the pipeline uses `{above}`: {:?}", graph["pipeline"]);
    }
}

#[test]
fn a_cycle_is_found_and_named() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("pipeline".to_owned(), BTreeSet::from(["restate".to_owned(), "store".to_owned()])),
        ("restate".to_owned(), BTreeSet::from(["pipeline".to_owned()])),
        ("store".to_owned(), BTreeSet::new()),
    ]
    .into();
    assert_eq!(find_cycle(&graph), Some(vec!["pipeline".into(), "restate".into(), "pipeline".into()]));
    assert_eq!(
        modules_named("use crate::{store::Store, event::now_ms};\n// crate::api"),
        BTreeSet::from(["event".to_owned(), "store".to_owned()])
    );
}
