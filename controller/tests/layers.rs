//! The controller's modules import downwards only: no import cycle between its top-level modules,
//! and the domain modules know nothing of HTTP (no axum, no `AppState`, no route module).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The HTTP layer and the wiring above it: the only modules that may reach `AppState` and axum.
const HTTP: &[&str] = &["api", "app", "server", "state", "web", "http", "error", "main"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `crate::a…` and `crate::{a, b…}` in `text`: the top-level modules named.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident =
        |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        found.insert(ident(&group[j..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

/// Lines that are code: comments (doc comments name other modules freely) left out.
fn code(text: &str) -> String {
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

fn graph() -> BTreeMap<String, (BTreeSet<String>, Vec<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut modules: BTreeMap<String, (BTreeSet<String>, Vec<String>)> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let top = rel.components().next().expect("a component").as_os_str().to_string_lossy();
        let top = top.trim_end_matches(".rs").to_string();
        if top == "lib" || top == "bin" {
            continue;
        }
        let text = code(&std::fs::read_to_string(&file).expect("readable"));
        let entry = modules.entry(top.clone()).or_default();
        entry.0.extend(crate_refs(&text).into_iter().filter(|m| *m != top));
        for needle in [
            "axum",
            "AppState",
            "crate::state",
            "crate::api",
            "crate::http",
            "crate::server",
            "crate::web",
            "crate::app",
        ] {
            if text.contains(needle) {
                entry.1.push(format!("{} uses {needle}", rel.display()));
            }
        }
    }
    modules
}

#[test]
fn no_import_cycle_between_modules() {
    let modules = graph();
    // Depth-first search; a grey node met again closes a cycle.
    fn visit<'a>(
        m: &'a str,
        modules: &'a BTreeMap<String, (BTreeSet<String>, Vec<String>)>,
        state: &mut BTreeMap<&'a str, bool>,
        path: &mut Vec<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        match state.get(m) {
            Some(true) => {
                let from = path.iter().position(|p| *p == m).unwrap_or(0);
                cycles.push(format!("{} -> {m}", path[from..].join(" -> ")));
                return;
            }
            Some(false) => return,
            None => {}
        }
        state.insert(m, true);
        path.push(m);
        if let Some((deps, _)) = modules.get(m) {
            for d in deps {
                if modules.contains_key(d) {
                    visit(d, modules, state, path, cycles);
                }
            }
        }
        path.pop();
        state.insert(m, false);
    }
    let (mut state, mut cycles) = (BTreeMap::new(), Vec::new());
    for m in modules.keys() {
        visit(m, &modules, &mut state, &mut Vec::new(), &mut cycles);
    }
    assert!(
        modules.len() > 15 && modules["api"].0.contains("vms"),
        "the check sees the modules: {modules:?}"
    );
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn domain_modules_know_nothing_of_http() {
    let modules = graph();
    let offences: Vec<&String> =
        modules.iter().filter(|(m, _)| !HTTP.contains(&m.as_str())).flat_map(|(_, (_, o))| o).collect();
    assert!(modules.contains_key("vms") && modules.contains_key("snapshots"));
    assert!(offences.is_empty(), "HTTP in the domain:\n{offences:#?}");
}

#[test]
fn the_reference_reader_reads_groups_and_paths() {
    let refs = crate_refs("use crate::{audit, auth::{self, AuthUser}, vms};\nlet x = crate::qmp::run();");
    assert_eq!(refs.into_iter().collect::<Vec<_>>(), ["audit", "auth", "qmp", "vms"]);
}
