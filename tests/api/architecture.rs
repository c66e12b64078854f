//! The layers of `src` hold: every import points down, the domain stays pure, and no
//! modules import each other in a circle. Read from the source text (comments,
//! strings and `#[cfg(test)]` items left out), so an arrow pointing up fails here
//! rather than in review.
//!
//! The layers, from the top (README, "Architecture"):
//!
//! ```text
//! cli       main.rs, import.rs        arguments and printing
//! startup   startup.rs                builds the hub: the one place that wires it all
//! api       api/                      gRPC wire only
//! app       app/                      use cases
//! feed      feed/                     events and who sees them
//! outbound  outbound/                 webhook and email workers
//! infra     config/, telemetry, metrics, tls
//! store     store/                    SQL only
//! domain    domain/                   pure types and rules
//! contract  lib.rs                    the generated protobuf types (`crate::pb`)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Which layers each layer may import, besides itself.
const MAY_IMPORT: &[(&str, &[&str])] = &[
    (
        "cli",
        &[
            "startup", "api", "app", "feed", "outbound", "infra", "store", "domain", "contract",
        ],
    ),
    (
        "startup",
        &[
            "api", "app", "feed", "outbound", "infra", "store", "domain", "contract",
        ],
    ),
    (
        "api",
        &[
            "app", "feed", "outbound", "infra", "store", "domain", "contract",
        ],
    ),
    ("app", &["feed", "outbound", "infra", "store", "domain"]),
    ("feed", &["store", "domain", "contract"]),
    (
        "outbound",
        &["feed", "infra", "store", "domain", "contract"],
    ),
    ("infra", &["store", "domain", "contract"]),
    ("store", &["domain"]),
    ("domain", &[]),
    ("contract", &[]),
];

/// Crates and modules the pure layers must not name: the domain knows nothing of
/// databases, wire formats, HTTP clients, the runtime or the file system; use cases
/// know nothing of protobuf.
const FORBIDDEN_NAMES: &[(&str, &[&str])] = &[
    (
        "domain",
        &[
            "sqlx",
            "tonic",
            "tonic_types",
            "prost",
            "prost_types",
            "prost_reflect",
            "reqwest",
            "hyper",
            "lettre",
            "tokio",
            "tokio_stream",
            "tokio_util",
            "std::fs",
        ],
    ),
    ("app", &["tonic", "tonic_types", "prost", "prost_types"]),
];

/// Arrows allowed to point up, with the reason; the list must be exact (an arrow
/// that is gone must leave it), and it is empty: keep it so.
const KNOWN_UPWARD: &[(&str, &str)] = &[];

/// Circles allowed, each as its sorted files; exact and empty, like [`KNOWN_UPWARD`].
const KNOWN_CIRCLES: &[&[&str]] = &[];

fn layer_of(file: &str) -> &'static str {
    let top = file.split('/').next().unwrap_or_default();
    match top {
        "main.rs" | "import.rs" | "cli" => "cli",
        "startup.rs" => "startup",
        "api" => "api",
        "app" => "app",
        "feed" => "feed",
        "outbound" => "outbound",
        "config" | "config.rs" | "telemetry.rs" | "metrics.rs" | "tls.rs" => "infra",
        "store" => "store",
        "domain" => "domain",
        "lib.rs" => "contract",
        _ => "unplaced",
    }
}

#[test]
fn every_import_points_down_and_none_go_round_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = Findings::of(&src);
    assert!(
        found.files > 50,
        "read {} files under {}",
        found.files,
        src.display()
    );
    assert!(
        found.arrows > 200,
        "only {} arrows: is the reader broken?",
        found.arrows
    );
    assert_eq!(found.unplaced, Vec::<String>::new(), "files in no layer");
    assert_eq!(found.impure, Vec::<String>::new(), "forbidden names");

    let known_up: BTreeSet<(String, String)> = KNOWN_UPWARD
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let new_up: Vec<_> = found.upward.difference(&known_up).collect();
    let gone_up: Vec<_> = known_up.difference(&found.upward).collect();
    assert!(
        new_up.is_empty(),
        "imports that point up (file -> file it imports): {new_up:#?}"
    );
    assert!(
        gone_up.is_empty(),
        "arrows fixed: take them off KNOWN_UPWARD: {gone_up:#?}"
    );

    let known_circles: BTreeSet<Vec<String>> = KNOWN_CIRCLES
        .iter()
        .map(|c| c.iter().map(|f| f.to_string()).collect())
        .collect();
    let new_circles: Vec<_> = found.circles.difference(&known_circles).collect();
    let gone_circles: Vec<_> = known_circles.difference(&found.circles).collect();
    assert!(
        new_circles.is_empty(),
        "modules that import each other in a circle: {new_circles:#?}"
    );
    assert!(
        gone_circles.is_empty(),
        "circles taken apart: take them off KNOWN_CIRCLES: {gone_circles:#?}"
    );
}

/// The checker itself finds what it should, on a small tree made for it.
#[test]
fn the_layer_check_sees_upward_arrows_circles_and_impure_domain_code() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "pub mod api;\npub mod domain;\npub mod store;\n");
    write("api/mod.rs", "pub mod orders;\n");
    write("api/orders.rs", "use crate::domain::Order;\n");
    write(
        "domain/mod.rs",
        "mod order;\npub use order::Order;\npub fn now() {}\n",
    );
    // An upward arrow in a path written inline, an impure name behind a comment
    // that mentions `crate::api` (a comment is not an import), and a test module that
    // may use anything.
    write(
        "domain/order.rs",
        "// see crate::api::orders\nuse tokio::sync::Mutex;\n\
         pub struct Order;\n\
         fn f() -> crate::api::orders::X { let s = \"crate::store::orders\"; s.into() }\n\
         #[cfg(test)]\nmod tests { use crate::store::orders::Orders; }\n",
    );
    write("store/mod.rs", "pub mod orders;\npub mod lines;\n");
    write(
        "store/orders.rs",
        "use super::lines::Lines;\nuse crate::domain::now;\npub struct Orders;\n",
    );
    write(
        "store/lines.rs",
        "use crate::store::orders::Orders;\npub struct Lines;\n",
    );
    let found = Findings::of(dir.path());
    assert_eq!(
        found.upward,
        BTreeSet::from([("domain/order.rs".to_owned(), "api/orders.rs".to_owned())])
    );
    assert_eq!(
        found.circles,
        BTreeSet::from([
            vec!["api/orders.rs".to_owned(), "domain/order.rs".to_owned()],
            vec!["store/lines.rs".to_owned(), "store/orders.rs".to_owned()]
        ])
    );
    assert_eq!(found.impure, ["domain/order.rs names tokio"]);
    // The re-export `pub use order::Order` is followed to the file that defines it.
    assert!(
        found
            .edges
            .contains(&("api/orders.rs".to_owned(), "domain/order.rs".to_owned())),
        "{:#?}",
        found.edges
    );
}

/// A pure layer's tests are held to its purity too: a domain test that reads files
/// is reported, while its imports across layers still count as no arrow.
#[test]
fn the_purity_check_reads_test_code_too() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "pub mod domain;\npub mod store;\n");
    write("store/mod.rs", "pub struct Rows;\n");
    write("domain/mod.rs", "pub mod rules;\n");
    write(
        "domain/rules.rs",
        "pub fn rule() {}\n\
         #[cfg(test)]\nmod tests {\n use crate::store::Rows;\n\
         fn read() { let _ = std::fs::read_to_string(\"t.toml\"); }\n}\n",
    );
    let found = Findings::of(dir.path());
    assert_eq!(found.impure, ["domain/rules.rs names std::fs"]);
    assert!(found.upward.is_empty(), "{:?}", found.upward);
}

#[derive(Debug, Default)]
struct Findings {
    files: usize,
    arrows: usize,
    edges: BTreeSet<(String, String)>,
    upward: BTreeSet<(String, String)>,
    circles: BTreeSet<Vec<String>>,
    impure: Vec<String>,
    unplaced: Vec<String>,
}

impl Findings {
    fn of(src: &Path) -> Findings {
        let tree = Tree::read(src);
        let mut found = Findings {
            files: tree.code.len(),
            ..Default::default()
        };
        for file in tree.code.keys() {
            let layer = layer_of(file);
            if layer == "unplaced" {
                found.unplaced.push(file.clone());
            }
            for (pure, names) in FORBIDDEN_NAMES {
                if *pure != layer {
                    continue;
                }
                for name in *names {
                    if names_path(&tree.full[file], name) {
                        found.impure.push(format!("{file} names {name}"));
                    }
                }
            }
            for target in tree.imports_of(file) {
                if &target == file {
                    continue;
                }
                found.arrows += 1;
                found.edges.insert((file.clone(), target));
            }
        }
        for (from, to) in &found.edges {
            let (a, b) = (layer_of(from), layer_of(to));
            let allowed = a == b
                || MAY_IMPORT
                    .iter()
                    .any(|(l, may)| *l == a && may.contains(&b));
            if !allowed {
                found.upward.insert((from.clone(), to.clone()));
            }
        }
        found.circles = circles(&found.edges);
        found
    }
}

/// Whether `code` names `name` as the start of a path (`tokio::…`, `use tokio`).
fn names_path(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = &code[i + name.len()..];
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            && (after.starts_with("::") || after.starts_with(';') || after.starts_with(" as "))
    })
}

/// Sets of files that reach each other through imports (strongly connected, more
/// than one file), each sorted.
fn circles(edges: &BTreeSet<(String, String)>) -> BTreeSet<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(f) = todo.pop() {
            for n in next.get(f.as_str()).into_iter().flatten() {
                if seen.insert(n.to_string()) {
                    todo.push(n.to_string());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&str, BTreeSet<String>> = next.keys().map(|f| (*f, reach(f))).collect();
    let mut out = BTreeSet::new();
    for (f, r) in &reached {
        let mut group: Vec<String> = r
            .iter()
            .filter(|g| {
                reached
                    .get(g.as_str())
                    .is_some_and(|back| back.contains(*f))
            })
            .cloned()
            .collect();
        if !group.is_empty() {
            if !group.iter().any(|g| g == f) {
                group.push(f.to_string());
            }
            group.sort();
            out.insert(group);
        }
    }
    out
}

/// The source files under `src`, by path relative to it, as code only.
struct Tree {
    /// Without `#[cfg(test)]` items: what the arrows are read from (a test may reach
    /// across layers to set things up).
    code: BTreeMap<String, String>,
    /// With them: what the purity check reads (a pure layer's tests stay pure too).
    full: BTreeMap<String, String>,
}

impl Tree {
    fn read(src: &Path) -> Tree {
        let (mut code, mut full) = (BTreeMap::new(), BTreeMap::new());
        let mut todo = vec![src.to_path_buf()];
        while let Some(dir) = todo.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path: PathBuf = entry.unwrap().path();
                if path.is_dir() {
                    todo.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let rel = path
                        .strip_prefix(src)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/");
                    let text = code_only(&std::fs::read_to_string(&path).unwrap());
                    code.insert(rel.clone(), without_tests(&text));
                    full.insert(rel, text);
                }
            }
        }
        Tree { code, full }
    }

    /// The module path of a file: `api/cases/mod.rs` → `api::cases`.
    fn module_of(file: &str) -> Vec<String> {
        if file == "lib.rs" || file == "main.rs" {
            return vec![];
        }
        let trimmed = file
            .strip_suffix("/mod.rs")
            .or_else(|| file.strip_suffix(".rs"))
            .unwrap_or(file);
        trimmed.split('/').map(str::to_owned).collect()
    }

    fn file_of(&self, module: &[String]) -> Option<String> {
        if module.is_empty() {
            return Some("lib.rs".to_owned());
        }
        let base = module.join("/");
        [format!("{base}.rs"), format!("{base}/mod.rs")]
            .into_iter()
            .find(|f| self.code.contains_key(f))
    }

    /// The files `file` imports, each path followed through re-exports to the file
    /// that holds the item.
    ///
    /// A re-export (`pub use child::Item`) is a passage, not an arrow: whoever names
    /// the item through it gets the arrow to the file that holds the item.
    fn imports_of(&self, file: &str) -> BTreeSet<String> {
        let module = Self::module_of(file);
        let code = &without_reexports(&self.code[file]);
        let mut targets = BTreeSet::new();
        for path in paths_in(code) {
            if let Some(absolute) = self.absolute(&module, &path, file == "main.rs")
                && let Some(target) = self.resolve(&absolute, 0)
            {
                targets.insert(target);
            }
        }
        targets
    }

    /// `path` (as written in `module`) from the crate root; `None` for other crates.
    fn absolute(&self, module: &[String], path: &[String], in_bin: bool) -> Option<Vec<String>> {
        let first = path.first()?.as_str();
        let mut out: Vec<String> = match first {
            "crate" if in_bin => return None,
            "crate" | "liaison" => vec![],
            "self" => module.to_vec(),
            "super" => {
                let mut m = module.to_vec();
                let mut rest = path;
                while rest.first().is_some_and(|s| s == "super") {
                    m.pop();
                    rest = &rest[1..];
                }
                m.extend(rest.iter().cloned());
                return Some(m);
            }
            // A path that starts with a child module of this one (`use names::x`).
            child => {
                let mut m = module.to_vec();
                m.push(child.to_owned());
                if !in_bin && self.file_of(&m).is_some() {
                    m.extend(path[1..].iter().cloned());
                    return Some(m);
                }
                return None;
            }
        };
        out.extend(path[1..].iter().cloned());
        Some(out)
    }

    /// The file that holds what `path` names: the deepest module file on it, then
    /// through a `pub use` of that module to where the name comes from.
    fn resolve(&self, path: &[String], depth: usize) -> Option<String> {
        let (mut at, mut file) = (0, self.file_of(&[])?);
        for i in 1..=path.len() {
            if let Some(f) = self.file_of(&path[..i]) {
                (at, file) = (i, f);
            }
        }
        if depth < 8
            && let Some(name) = path.get(at)
        {
            let module = Self::module_of(&file);
            for export in reexports(&self.code[&file]) {
                if export.last() == Some(name)
                    && let Some(abs) = self.absolute(&module, &export, false)
                    && abs != path
                    && let Some(f) = self.resolve(&abs, depth + 1)
                {
                    return Some(f);
                }
            }
        }
        Some(file)
    }
}

/// Every path written in `code` that starts in this crate or a module of it: from
/// `use` trees (expanded) and inline (`crate::store::Tx`).
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let mut out = vec![];
    for tree in use_trees(code) {
        expand(&tree, &mut vec![], &mut out);
    }
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::", "liaison::"] {
        for (i, _) in code.match_indices(start) {
            if i > 0
                && (bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == b'_'
                    || bytes[i - 1] == b':')
            {
                continue;
            }
            let rest = &code[i..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let path: Vec<String> = rest[..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            out.push(path);
        }
    }
    out
}

/// The text of each `use` declaration (`pub use a::{b, c}` → `a::{b, c}`).
fn use_trees(code: &str) -> Vec<String> {
    let mut out = vec![];
    for (i, _) in code.match_indices("use ") {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(end) = code[i..].find(';') {
            out.push(one_line(&code[i + 4..i + end]));
        }
    }
    out
}

/// `code` without its `pub use` and `pub(…) use` declarations.
fn without_reexports(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("pub") {
        let after = &rest[at + 3..];
        let vis_end = if after.starts_with('(') {
            after.find(')').map_or(0, |i| i + 1)
        } else {
            0
        };
        let is_reexport = after[vis_end..].trim_start().starts_with("use ")
            && !rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
        match (is_reexport, rest[at..].find(';')) {
            (true, Some(end)) => {
                out.push_str(&rest[..at]);
                rest = &rest[at + end + 1..];
            }
            _ => {
                out.push_str(&rest[..at + 3]);
                rest = &rest[at + 3..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The paths of the `pub use` declarations of `code`, expanded.
fn reexports(code: &str) -> Vec<Vec<String>> {
    let mut out = vec![];
    for (i, _) in code.match_indices("pub") {
        let after = &code[i + 3..];
        let vis_end = if after.starts_with('(') {
            after.find(')').map_or(0, |j| j + 1)
        } else {
            0
        };
        let Some(tree) = after[vis_end..].trim_start().strip_prefix("use ") else {
            continue;
        };
        if let Some(end) = tree.find(';') {
            expand(&one_line(&tree[..end]), &mut vec![], &mut out);
        }
    }
    out
}

/// Expands a use tree (`a::{b::{c, d}, e as f, self}`) into its paths.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim().trim_start_matches("::");
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let depth = prefix.len();
        prefix.extend(head);
        for part in split_top_level(inner) {
            let part = part.trim();
            if part == "self" {
                out.push(prefix.clone());
            } else if !part.is_empty() {
                expand(part, prefix, out);
            }
        }
        prefix.truncate(depth);
    } else {
        let plain = tree.split(" as ").next().unwrap_or(tree).trim();
        let mut path = prefix.clone();
        path.extend(
            plain
                .split("::")
                .filter(|s| !s.is_empty() && *s != "*")
                .map(str::to_owned),
        );
        out.push(path);
    }
}

/// `text` with every run of whitespace made one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn split_top_level(inner: &str) -> Vec<String> {
    let (mut parts, mut depth, mut current) = (vec![], 0, String::new());
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
}

/// `text` with comments removed and string and character literals emptied, so what
/// is left is code only.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '/' if next == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '/' if next == Some('*') => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            'r' if (next == Some('"') || next == Some('#'))
                && !chars[..i]
                    .last()
                    .is_some_and(|p| p.is_alphanumeric() || *p == '_') =>
            {
                // A raw string: r"…", r#"…"#, …
                let mut j = i + 1;
                let mut hashes = 0;
                while chars.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if chars.get(j) != Some(&'"') {
                    out.push(c);
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= chars.len() {
                        break;
                    }
                    if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
                continue;
            }
            '"' => {
                let mut j = i + 1;
                while j < chars.len() && chars[j] != '"' {
                    if chars[j] == '\\' {
                        j += 1;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j + 1;
                continue;
            }
            '\'' => {
                // A character literal ('x', '\n', '\u{1F600}'), or a lifetime ('a).
                if next == Some('\\') {
                    let mut j = i + 2;
                    while j < chars.len() && chars[j] != '\'' {
                        j += 1;
                    }
                    out.push_str("' '");
                    i = j + 1;
                    continue;
                }
                if chars.get(i + 2) == Some(&'\'') {
                    out.push_str("' '");
                    i += 3;
                    continue;
                }
            }
            _ => {}
        }
        out.push(c);
        i += 1;
    }
    out
}

/// `code` without the items marked `#[cfg(test)]` (test modules and helpers).
fn without_tests(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let (semi, brace) = (item.find(';'), item.find('{'));
        let end = match (semi, brace) {
            (Some(s), Some(b)) if s < b => s + 1,
            (_, Some(b)) => {
                let mut depth = 0;
                let mut end = item.len();
                for (i, c) in item[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (Some(s), None) => s + 1,
            (None, None) => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}
