//! The server's modules point one way: this test reads `server/src` and fails on any
//! cycle between top-level modules (`crate::a` using `crate::b` using `crate::a`), and on
//! any domain module reaching up into the layers that wire it (`api`, `app`, `cli`).
//!
//! It works on the source text: every `crate::<module>` path outside comments counts as an
//! edge from the file's top-level module, including grouped imports
//! (`use crate::{a::X, b}`).

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that wire the others together; nothing below them may depend on them.
const WIRING: &[&str] = &["api", "app", "cli"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`tasks/request.rs` → `tasks`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Top-level modules named by `crate::` paths in `text` (comments skipped).
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.insert(name);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let from = module_of(&src, &f);
        if from == "main" || from == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let deps = g.entry(from.clone()).or_default();
        deps.extend(crate_refs(&text).into_iter().filter(|m| *m != from));
    }
    g
}

/// A cycle through `g`, if there is one.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in g.get(node).into_iter().flatten() {
            if let Some(c) = visit(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(g, n, &mut Vec::new(), &mut done))
}

#[test]
fn server_modules_have_no_import_cycle() {
    let g = graph();
    assert!(g.contains_key("tasks") && g.contains_key("api"), "{g:?}");
    if let Some(cycle) = find_cycle(&g) {
        panic!(
            "import cycle between server modules: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn domain_modules_do_not_reach_into_the_wiring() {
    let g = graph();
    for (from, deps) in &g {
        if WIRING.contains(&from.as_str()) {
            continue;
        }
        for w in WIRING {
            assert!(
                !deps.contains(*w),
                "{from} depends on {w}: domain modules must not know the API, the wiring or the CLI"
            );
        }
    }
}

#[test]
fn the_checker_sees_cycles_and_grouped_imports() {
    let refs = crate_refs("use crate::{a::X, b}; // crate::c\nlet x = crate::d::f();");
    assert_eq!(
        refs,
        ["a", "b", "d"].iter().map(|s| (*s).to_owned()).collect()
    );
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g).unwrap(),
        ["a", "b", "c", "a"].map(String::from).to_vec()
    );
}
