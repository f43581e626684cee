//! The folders are the architecture (docs/ARCHITECTURE.md): in every crate no two files
//! import each other, directly or round a circle, and in the trainer every import between
//! folders points down their floors (`cli` → `train` → {`loss`, `eval`} → `data` →
//! {`distributed`, `optim`, `io`}). Read from the `use` lines and the `crate::`/`super::`
//! paths of the sources, so a change that breaks the layering fails here, naming the files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a source file (`src/train/run.rs` → `["train", "run"]`; `mod.rs`,
/// `lib.rs` and `main.rs` name their folder).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The text of a file without comments and string literals, where paths are only code.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            // A char literal like '{' must not open a brace group.
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The paths a `use` tree names, expanded (`a::{b, c::d}` → `a::b`, `a::c::d`).
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim_end_matches("::").trim();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let base = join(prefix, head);
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &base, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &base, out);
    } else if !tree.is_empty() {
        let path = tree.split(" as ").next().unwrap().trim();
        out.push(join(prefix, path));
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}::{b}"),
    }
}

/// Every path a file's code names, from its `use` lines and inline `crate::`/`super::`.
fn named_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let stmt_end = rest[at..].find(';').map_or(rest.len(), |e| at + e);
        if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) {
            expand(&rest[at + 4..stmt_end], "", &mut out);
        }
        rest = &rest[(at + 4).min(rest.len())..];
    }
    for root in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(root) {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            out.push(tail[..end].trim_end_matches(':').to_string());
            rest = &rest[at + root.len()..];
        }
    }
    out
}

/// The file a path names, resolving `crate::` and `super::` from `module`.
fn resolve(
    path: &str,
    module: &[String],
    files: &BTreeMap<Vec<String>, PathBuf>,
) -> Option<Vec<String>> {
    let mut parts: Vec<&str> = path.split("::").collect();
    let mut base: Vec<String> = match parts.first() {
        Some(&"crate") => {
            parts.remove(0);
            Vec::new()
        }
        Some(&"super") => {
            let mut m = module.to_vec();
            while parts.first() == Some(&"super") {
                parts.remove(0);
                m.pop();
            }
            m
        }
        Some(&"self") => {
            parts.remove(0);
            module.to_vec()
        }
        _ => return None,
    };
    let mut found = None;
    for p in parts {
        base.push(p.to_string());
        if files.contains_key(&base) {
            found = Some(base.clone());
        } else {
            break;
        }
    }
    found
}

/// File → the files it imports, for the crate rooted at `src`.
fn graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut list = Vec::new();
    sources(src, &mut list);
    let files: BTreeMap<Vec<String>, PathBuf> = list
        .iter()
        .map(|f| (module_of(src, f), f.clone()))
        .collect();
    let mut edges = BTreeMap::new();
    for (module, file) in &files {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        // A `mod.rs` or `lib.rs` declares its children: containment, not an import.
        let mut to = BTreeSet::new();
        for path in named_paths(&code) {
            let path = if path.starts_with("crate")
                || path.starts_with("super")
                || path.starts_with("self")
            {
                path
            } else if files.contains_key(
                &[
                    module.clone(),
                    vec![path.split("::").next().unwrap().to_string()],
                ]
                .concat(),
            ) {
                // `use child::Item` in a `mod.rs` re-exports from a child.
                format!("self::{path}")
            } else {
                continue;
            };
            if let Some(target) = resolve(&path, module, &files)
                && &target != module
            {
                to.insert(target);
            }
        }
        edges.insert(module.clone(), to);
    }
    edges
}

/// A circle of files, if there is one.
fn find_circle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next) {
                Some(1) => {
                    let at = stack.iter().position(|n| n == next).unwrap();
                    let mut circle: Vec<String> = stack[at..].iter().map(|m| m.join("/")).collect();
                    circle.push(next.join("/"));
                    return Some(circle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if !state.contains_key(node)
            && let Some(c) = visit(node, edges, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn crate_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src")
}

#[test]
fn no_crate_has_an_import_circle() {
    for name in ["model", "trainer", "viewer"] {
        let edges = graph(&crate_src(name));
        assert!(edges.len() > 5, "{name}: only {} files read", edges.len());
        if let Some(circle) = find_circle(&edges) {
            panic!("{name}/src has an import circle: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn the_trainer_folders_import_only_downwards() {
    let floor = |folder: &str| -> Option<u8> {
        Some(match folder {
            "cli" => 5,
            "train" => 4,
            "loss" | "eval" => 3,
            "data" => 2,
            "distributed" | "optim" | "io" => 1,
            _ => return None,
        })
    };
    let edges = graph(&crate_src("trainer"));
    let mut up = Vec::new();
    for (from, targets) in &edges {
        let Some(f) = from.first().and_then(|x| floor(x)) else {
            continue;
        };
        for to in targets {
            if let Some(t) = to.first().and_then(|x| floor(x))
                && from[0] != to[0]
                && t >= f
            {
                up.push(format!("{} -> {}", from.join("/"), to.join("/")));
            }
        }
    }
    assert!(up.is_empty(), "imports that do not point down: {up:#?}");
    // The check reads what it should: the loop imports the step, the CLI the loop.
    let has = |a: &str, b: &str| {
        let key = |s: &str| s.split('/').map(String::from).collect::<Vec<_>>();
        edges[&key(a)].contains(&key(b))
    };
    assert!(has("train/run", "train/step") && has("cli/commands", "train/run"));
}
