//! The layout stays true: the module graph of every service crate has no cycle, and the trial
//! store's four rooms keep their one-way doors. Read from the sources (`crate::...` paths, in
//! `use` lines and in code), so that a back-import fails this test the day it is written.
//!
//! How the graph is read: one node per module file; an edge from a file to every module its
//! `crate::` paths name (to the longest module prefix). The crate root (`lib.rs`) is the
//! wiring: its own references are not edges (it declares and starts everything), and in the
//! trial store nobody may reference it. A folder's `mod.rs` is that folder's door: its
//! references to its own submodules (re-exports, field types) are not edges either.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use integration_tests::repo_root;

/// Module path (`fhir::search`, `""` for the root) of a source file under `src`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let parts: Vec<&str> = match parts.last().map(String::as_str) {
        Some("lib") | Some("mod") => parts[..parts.len() - 1]
            .iter()
            .map(String::as_str)
            .collect(),
        _ => parts.iter().map(String::as_str).collect(),
    };
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("main.rs") {
            out.push(p);
        }
    }
}

/// Every path a `crate::` reference names, with `use crate::{a, b::{c, d}}` groups expanded.
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    // Comments are not references.
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        expand("", rest, &mut out);
    }
    out
}

/// Reads one path (or brace group) at the start of `text`, prefixed by `prefix`.
fn expand(prefix: &str, text: &str, out: &mut Vec<String>) {
    let text = text.trim_start();
    if let Some(inner) = text.strip_prefix('{') {
        // Split the group at top-level commas.
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(prefix, &inner[start..i], out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(prefix, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return;
    }
    let ident: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if ident.is_empty() || ident == "self" {
        if !prefix.is_empty() {
            out.push(prefix.to_string());
        }
        return;
    }
    let path = if prefix.is_empty() {
        ident.clone()
    } else {
        format!("{prefix}::{ident}")
    };
    let after = &text[ident.len()..];
    match after.strip_prefix("::") {
        Some(more) => expand(&path, more, out),
        None => out.push(path),
    }
}

/// The module graph of a crate's `src`: module -> modules it references.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let mut g = BTreeMap::new();
    for f in &files {
        let me = module_of(src, f);
        let is_door = f.ends_with("mod.rs");
        let mut edges = BTreeSet::new();
        if !me.is_empty() {
            for p in crate_paths(&std::fs::read_to_string(f).unwrap()) {
                // The longest prefix of the path that is a module.
                let segs: Vec<&str> = p.split("::").collect();
                let target = (0..=segs.len())
                    .rev()
                    .map(|n| segs[..n].join("::"))
                    .find(|m| modules.contains(m))
                    .unwrap_or_default();
                let own_child = is_door && target.starts_with(&format!("{me}::"));
                if target != me && !own_child {
                    edges.insert(target);
                }
            }
        }
        g.insert(me, edges);
    }
    g
}

/// A cycle of the graph, if there is one.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[at..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn show(c: &[String]) -> String {
    c.iter()
        .map(|m| if m.is_empty() { "(root)" } else { m.as_str() })
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[test]
fn no_service_crate_has_a_module_cycle() {
    let services = repo_root().join("services");
    let mut checked = 0;
    for e in std::fs::read_dir(&services).unwrap() {
        let src = e.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        let g = graph(&src);
        assert!(g.len() > 1, "{}: no modules read", src.display());
        if let Some(c) = cycle(&g) {
            panic!("{}: module cycle {}", src.display(), show(&c));
        }
        checked += 1;
    }
    assert_eq!(
        checked, 4,
        "trial-store, site-gateway, warehouse-sync, trialbridge"
    );
}

/// The room of a trial-store module (its first path segment).
fn room(module: &str) -> &str {
    module.split("::").next().unwrap_or("")
}

#[test]
fn the_trial_stores_rooms_have_one_way_doors() {
    let g = graph(&repo_root().join("services/trial-store/src"));
    // Who may reference whom, by room; `error` and `config` are the shared vocabulary.
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("error", &[][..]),
        ("config", &[][..]),
        ("security", &["error", "config"][..]),
        ("fhir", &["error", "config", "security"][..]),
        ("trial", &["error", "config", "security", "fhir"][..]),
        (
            "rest",
            &["error", "config", "security", "fhir", "trial"][..],
        ),
    ]);
    let mut seen = BTreeSet::new();
    for (m, edges) in &g {
        if m.is_empty() {
            continue;
        }
        let from = room(m);
        let may = allowed
            .get(from)
            .unwrap_or_else(|| panic!("{m}: a module outside the rooms"));
        seen.insert(from.to_string());
        for t in edges {
            assert!(!t.is_empty(), "{m} references the crate root");
            let to = room(t);
            assert!(
                to == from || may.contains(&to),
                "{m} references {t}: {from}/ may not reach into {to}/"
            );
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["config", "error", "fhir", "rest", "security", "trial"]
    );
}

#[test]
fn the_reader_sees_what_a_back_import_looks_like() {
    // The reader itself, on a made-up crate with a back-import.
    let paths = crate_paths(
        "use crate::{a::{b, c::D}, e};\nfn f() { crate::g::h(); } // crate::not::this\nlet x = mycrate::no;",
    );
    assert_eq!(paths, ["a::b", "a::c::D", "e", "g::h"]);
    let mut g = BTreeMap::new();
    g.insert("fhir".to_string(), BTreeSet::from(["rest".to_string()]));
    g.insert("rest".to_string(), BTreeSet::from(["fhir".to_string()]));
    assert_eq!(show(&cycle(&g).unwrap()), "fhir -> rest -> fhir");
}
