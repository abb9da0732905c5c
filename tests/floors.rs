//! The floors written at the top of `src/lib.rs` hold: a module names only modules on floors below
//! its own, and the files of one module form no cycle. Read from the sources as text: every
//! `crate::name` and `super::name` / `self::name` path in code (comments, `mod` declarations and
//! `pub use` re-exports aside, and `#[cfg(test)]` modules aside, which may reach anywhere).
//!
//! Run it alone with `cargo test --test floors`; it fails with the offending file and path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `//! N. a, b — what` lines of `src/lib.rs`: module name → floor number.
fn floors(lib: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.strip_prefix("//! ") else {
            continue;
        };
        let Some((n, rest)) = rest.split_once(". ") else {
            continue;
        };
        let Ok(n) = n.trim().parse::<u32>() else {
            continue;
        };
        let names = rest.split(" — ").next().unwrap_or_default();
        for name in names.split(',') {
            let name = name.trim().trim_matches('`');
            if !name.is_empty() {
                out.insert(name.to_string(), n);
            }
        }
    }
    out
}

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

/// The code of a file without comments, test modules, `mod` lines and `pub use` re-exports.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::new();
    let mut in_reexport = false;
    for line in text.lines() {
        let t = line.trim_start();
        if in_reexport {
            in_reexport = !t.contains(';');
            continue;
        }
        if t.starts_with("//") || t.starts_with("mod ") || t.starts_with("pub mod ") {
            continue;
        }
        if t.starts_with("pub use ") || t.starts_with("pub(crate) use ") {
            in_reexport = !t.contains(';');
            continue;
        }
        let code = match t.find("//") {
            Some(i) => &t[..i],
            None => t,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Identifiers that follow `prefix` in `code` (`crate::x`, `super::x`, and `crate::{x, y::z}`).
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The module path of a file: `src/deployment/call.rs` → `["deployment", "call"]`,
/// `src/deployment/mod.rs` → `["deployment"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

#[test]
fn no_module_names_a_higher_floor_and_no_files_form_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let floors = floors(&lib);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();

    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_string())
        .collect();
    let floored: BTreeSet<String> = floors.keys().cloned().collect();
    assert_eq!(
        declared, floored,
        "every module of src/lib.rs stands on exactly one floor of its doc comment"
    );

    let mut problems = Vec::new();
    // File → files of the same top-level module it names.
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    // The module a path names: the longest known module that prefixes it.
    let resolve = |path: Vec<String>| -> Option<Vec<String>> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|m| modules.contains(m))
    };
    for file in &files {
        let module = module_of(&src, file);
        let Some(top) = module.first().cloned() else {
            continue;
        };
        if top == "lib" || top == "main" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let Some(&own) = floors.get(&top) else {
            continue;
        };
        for name in names_after(&code, "crate::") {
            if name == top {
                continue;
            }
            match floors.get(&name) {
                Some(&floor) if floor < own => {}
                Some(&floor) => problems.push(format!(
                    "{}: names crate::{name} (floor {floor}) from floor {own}",
                    file.display()
                )),
                None => problems.push(format!(
                    "{}: names crate::{name}, which stands on no floor",
                    file.display()
                )),
            }
        }
        // Paths within the same top-level module, for the file-cycle check.
        let mut within = BTreeSet::new();
        // `super` is the module one up (for `a/b.rs` and `a/b/mod.rs` alike: `a`); what it names
        // is a sibling module by that name, or an item of the parent's own file.
        let parent = module[..module.len() - 1].to_vec();
        for name in names_after(&code, "super::") {
            let mut p = parent.clone();
            p.push(name);
            if let Some(m) = resolve(p) {
                within.insert(m);
            }
        }
        for name in names_after(&code, "self::") {
            let mut p = module.clone();
            p.push(name);
            if let Some(m) = resolve(p) {
                within.insert(m);
            }
        }
        for name in names_after(&code, &format!("crate::{top}::")) {
            if let Some(m) = resolve(vec![top.clone(), name]) {
                within.insert(m);
            }
        }
        within.remove(&module);
        edges.insert(module, within);
    }

    // A cycle among the files of one module: depth-first search with colours.
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
        cycles: &mut Vec<String>,
    ) {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                0 => visit(next, edges, state, stack, cycles),
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap_or(0);
                    let names: Vec<String> = stack[from..]
                        .iter()
                        .chain(std::iter::once(next))
                        .map(|m| m.join("::"))
                        .collect();
                    cycles.push(names.join(" → "));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for node in edges.keys() {
        if state.get(node).copied().unwrap_or(0) == 0 {
            visit(node, &edges, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    for c in cycles {
        problems.push(format!("files in a cycle: {c}"));
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}
