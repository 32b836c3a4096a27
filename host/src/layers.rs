//! The layer rule of `docs/architecture.md`, checked: a module of the host imports only
//! modules of the layers below its own, and the files of one module import each other in one
//! direction only. A test rather than a convention, so that an import that points up, sideways
//! or round in a circle fails where it is written, naming the file and the import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The host's top-level modules, from the top layer down. A module may name (in a `use` or a
/// path) only modules of the rows below its own; `docs/architecture.md` shows this table, and
/// the test checks that it does. `server` (the process wiring) may not exist yet: a row names
/// where a module belongs, whether or not it is written.
const LAYERS: &[&[&str]] = &[
    &["main"],
    &["server"],
    &["http"],
    // The probes and gauges ask settlement (its lag, its quarantine) and the stores: an
    // observer of the layers below, so it sits above them rather than beside settlement.
    &["health"],
    &["auth", "guest", "settlement"],
    &["capabilities"],
    &["stores"],
    &[
        "bindings",
        "admin_client",
        "crash",
        "metrics",
        "metrics_relay",
        "otel",
        "shutdown",
        "trace",
    ],
    // Every setting's name and range: the leaves name the settings they read (otel its endpoint).
    &["config"],
];

/// Imports between two modules of one row, each with why it makes no circle: (importer,
/// imported, why).
const SIBLING_IMPORTS: &[(&str, &str, &str)] = &[(
    "otel",
    "trace",
    "span export reads the trace context that trace mints; trace knows nothing of export",
)];

/// The layer table as `docs/architecture.md` shows it: one row a line, top first.
fn rendered() -> String {
    LAYERS
        .iter()
        .map(|row| row.join(", "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One module's reference to another: where it is written and what it names.
#[derive(Debug)]
struct Reference {
    file: String,
    line: usize,
    module: String,
    imported: String,
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|row| row.contains(&module))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).expect("the source directory is readable");
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The top-level module a file belongs to (`None` for the crate root and for this file,
/// which names every module in its table).
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let module = first.strip_suffix(".rs").unwrap_or(first);
    (module != "lib" && module != "layers").then(|| module.to_string())
}

/// `source` with every comment and every string or character literal blanked (newlines
/// kept), so what is left is code: a path in a doc comment or a message is no import.
fn code_of(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut code = String::with_capacity(source.len());
    let mut at = 0;
    while at < chars.len() {
        let end = literal_or_comment_end(&chars, at);
        if end == at {
            code.push(chars[at]);
            at += 1;
        } else {
            code.extend(
                chars[at..end]
                    .iter()
                    .map(|&c| if c == '\n' { '\n' } else { ' ' }),
            );
            at = end;
        }
    }
    code
}

/// Where the comment or literal starting at `at` ends, or `at` when none starts there.
fn literal_or_comment_end(chars: &[char], at: usize) -> usize {
    let next = |offset: usize| chars.get(at + offset).copied();
    match (chars[at], next(1)) {
        ('/', Some('/')) => find_from(chars, at, &['\n']).unwrap_or(chars.len()),
        ('/', Some('*')) => block_comment_end(chars, at),
        ('"', _) => quoted_end(chars, at + 1, '"'),
        ('b', Some('"')) => quoted_end(chars, at + 2, '"'),
        ('r', Some('"' | '#')) | ('b', Some('r')) => raw_string_end(chars, at),
        ('\'', Some('\\')) => quoted_end(chars, at + 1, '\''),
        ('\'', Some(_)) if next(2) == Some('\'') => at + 3,
        _ => at,
    }
}

fn find_from(chars: &[char], at: usize, wanted: &[char]) -> Option<usize> {
    chars[at..]
        .iter()
        .position(|c| wanted.contains(c))
        .map(|offset| at + offset)
}

fn block_comment_end(chars: &[char], at: usize) -> usize {
    let mut depth = 0;
    let mut index = at;
    while index + 1 < chars.len() {
        match (chars[index], chars[index + 1]) {
            ('/', '*') => (depth, index) = (depth + 1, index + 2),
            ('*', '/') if depth == 1 => return index + 2,
            ('*', '/') => (depth, index) = (depth - 1, index + 2),
            _ => index += 1,
        }
    }
    chars.len()
}

/// The end of a literal whose contents begin at `from` and which closes with `close`,
/// backslash escapes skipped.
fn quoted_end(chars: &[char], from: usize, close: char) -> usize {
    let mut index = from;
    while index < chars.len() {
        match chars[index] {
            '\\' => index += 2,
            c if c == close => return index + 1,
            _ => index += 1,
        }
    }
    chars.len()
}

/// `r"…"`, `r#"…"#`, `br#"…"#`: no escapes; closes with a quote and as many `#`. An
/// identifier starting with `r` or `br` (`r#type` included) is no literal.
fn raw_string_end(chars: &[char], at: usize) -> usize {
    if at > 0 && (chars[at - 1].is_alphanumeric() || chars[at - 1] == '_') {
        return at;
    }
    let start = if chars[at] == 'b' { at + 2 } else { at + 1 };
    let hashes = chars[start..].iter().take_while(|&&c| c == '#').count();
    if chars.get(start + hashes) != Some(&'"') {
        return at;
    }
    let closing: Vec<char> = std::iter::once('"')
        .chain(std::iter::repeat_n('#', hashes))
        .collect();
    let body = start + hashes + 1;
    (body..chars.len())
        .find(|&index| chars[index..].starts_with(&closing))
        .map_or(chars.len(), |index| index + closing.len())
}

/// The modules named after each `prefix` in `code` (`crate::` in the library, the crate's
/// name in `main.rs`), with their line: `prefix::a::…` names `a`, `prefix::{a, b::c}` names
/// `a` and `b`.
fn named_modules(code: &str, prefix: &str) -> Vec<(usize, String)> {
    let mut named = Vec::new();
    for (index, _) in code.match_indices(prefix) {
        let before = code[..index].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let line = code[..index].matches('\n').count() + 1;
        let rest = &code[index + prefix.len()..];
        for module in heads(rest) {
            named.push((line, module));
        }
    }
    named
}

/// The first segment of the path at the start of `rest`, or of each path of a `{…}` group.
fn heads(rest: &str) -> Vec<String> {
    let identifier = |text: &str| -> String {
        text.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = rest.trim_start().strip_prefix('{') else {
        return vec![identifier(rest)];
    };
    let mut depth = 0;
    let mut items = vec![String::new()];
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => items.push(String::new()),
            _ => {}
        }
        if let Some(item) = items.last_mut() {
            item.push(c);
        }
    }
    items
        .iter()
        .map(|item| identifier(item.trim_start_matches(',')))
        .filter(|name| !name.is_empty() && name != "self")
        .collect()
}

/// One file of `host/src`: its path below it, its module path (`stores/kafka.rs` is
/// `["stores", "kafka"]`, a `mod.rs` is its directory's), and its code (see [`code_of`]).
struct Source {
    relative: PathBuf,
    path: Vec<String>,
    code: String,
}

/// Every file of `host/src` but the crate root and this one, in path order.
fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&root).expect("under src").to_path_buf();
        if module_of(&relative).is_none() {
            continue;
        }
        let mut path: Vec<String> = relative
            .with_extension("")
            .components()
            .map(|part| part.as_os_str().to_string_lossy().into_owned())
            .collect();
        if path.len() > 1 && path.last().is_some_and(|last| last == "mod") {
            path.pop();
        }
        let code = code_of(&std::fs::read_to_string(&file).expect("a readable source file"));
        found.push(Source {
            relative,
            path,
            code,
        });
    }
    found
}

/// Every reference from one top-level module to another in `host/src`.
fn references() -> Vec<Reference> {
    let mut found = Vec::new();
    for source in sources() {
        let module = &source.path[0];
        let prefix = if module == "main" {
            "transferd::"
        } else {
            "crate::"
        };
        for (line, imported) in named_modules(&source.code, prefix) {
            if &imported != module {
                found.push(Reference {
                    file: format!("host/src/{}", source.relative.display()),
                    line,
                    module: module.clone(),
                    imported,
                });
            }
        }
    }
    found
}

/// The names a file gives to parts of its own top-level module: `crate::<module>::<name>`, and
/// `super::…::<name>` where the `super`s climb to the module. A `mod tests` at the end of the
/// file is left out: its `super` is the file itself.
fn names_in_own_module(source: &Source) -> Vec<String> {
    let code = source
        .code
        .split("\nmod tests {")
        .next()
        .unwrap_or_default();
    let module = &source.path[0];
    let mut named: Vec<String> = named_modules(code, &format!("crate::{module}::"))
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    for (index, _) in code.match_indices("super::") {
        let before = code[..index].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[index..];
        let climbs = rest.len() - rest.trim_start_matches("super::").len();
        let climbs = climbs / "super::".len();
        if source.path.len().checked_sub(climbs) == Some(1) {
            named.extend(heads(&rest[climbs * "super::".len()..]));
        }
    }
    named
}

/// The files (submodules) of each top-level module and which of their siblings each names.
fn submodule_graphs() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let sources = sources();
    let mut graphs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for source in sources.iter().filter(|source| source.path.len() > 1) {
        let graph = graphs.entry(source.path[0].clone()).or_default();
        graph.entry(source.path[1].clone()).or_default();
    }
    for source in sources.iter().filter(|source| source.path.len() > 1) {
        let graph = graphs.get_mut(&source.path[0]).expect("entered above");
        let own = &source.path[1];
        let siblings: BTreeSet<String> = names_in_own_module(source)
            .into_iter()
            .filter(|name| name != own && graph.contains_key(name))
            .collect();
        graph.entry(own.clone()).or_default().extend(siblings);
    }
    graphs
}

/// A circle in `graph` as the names along it (the first again at the end), if there is one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        graph: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        trail: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = trail.iter().position(|seen| seen == node) {
            let mut found = trail[at..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        trail.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(graph, next, trail, done) {
                return Some(found);
            }
        }
        trail.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut Vec::new(), &mut done))
}

/// Why `reference` breaks the rule, or `None` when it points down (or is a listed sibling).
fn breach(reference: &Reference) -> Option<String> {
    let Reference {
        file,
        line,
        module,
        imported,
    } = reference;
    let Some(own) = layer_of(module) else {
        return Some(format!(
            "{file}: module `{module}` is in no row of layers::LAYERS"
        ));
    };
    let Some(theirs) = layer_of(imported) else {
        return Some(format!(
            "{file}:{line}: imports `{imported}`, which is in no row of layers::LAYERS"
        ));
    };
    let sibling = SIBLING_IMPORTS
        .iter()
        .any(|(from, to, _)| from == module && to == imported);
    let direction = match own.cmp(&theirs) {
        std::cmp::Ordering::Less => return None,
        std::cmp::Ordering::Equal if sibling => return None,
        std::cmp::Ordering::Equal => "its own layer",
        std::cmp::Ordering::Greater => "a higher layer",
    };
    Some(format!(
        "{file}:{line}: `{module}` imports `{imported}`, of {direction}"
    ))
}

#[test]
fn every_module_imports_only_modules_of_lower_layers() {
    let breaches: Vec<String> = references().iter().filter_map(breach).collect();
    assert!(
        breaches.is_empty(),
        "imports against the layers (host/src/layers.rs, docs/architecture.md):\n{}",
        breaches.join("\n")
    );
}

#[test]
fn no_files_of_one_module_import_each_other_in_a_circle() {
    let circles: Vec<String> = submodule_graphs()
        .iter()
        .filter_map(|(module, graph)| {
            circle(graph).map(|found| format!("host/src/{module}/: {}", found.join(" → ")))
        })
        .collect();
    assert!(
        circles.is_empty(),
        "files of one module that import each other in a circle (give each one direction):\n{}",
        circles.join("\n")
    );
}

#[test]
fn every_module_of_the_crate_has_a_layer() {
    let lib = include_str!("lib.rs");
    let missing: Vec<&str> = lib
        .lines()
        .filter_map(|line| line.trim().trim_start_matches("pub ").strip_prefix("mod "))
        .map(|name| name.trim_end_matches(';'))
        .filter(|&name| name != "layers" && layer_of(name).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "modules in no row of LAYERS: {missing:?}"
    );
}

#[test]
fn the_architecture_page_shows_the_layer_table() {
    let page = include_str!("../../docs/architecture.md");
    assert!(
        page.contains(&format!("```text\n{}\n```", rendered())),
        "docs/architecture.md must show the layer table as a text block:\n{}",
        rendered()
    );
}

#[test]
fn the_scan_finds_imports_and_not_comments_or_strings() {
    let source = "use crate::{stores::Stores, config};\n// crate::http\n\
                  let _ = \"crate::auth\"; let _ = r#\"crate::guest\"#;\n\
                  metrics::counter!(crate::metrics::X);\n";
    let named = named_modules(&code_of(source), "crate::");
    let names: Vec<(usize, &str)> = named
        .iter()
        .map(|(line, name)| (*line, name.as_str()))
        .collect();
    assert_eq!(names, [(1, "stores"), (1, "config"), (4, "metrics")]);
}

#[test]
fn a_circle_is_found_through_super_and_crate_paths() {
    let file = |path: &[&str], code: &str| Source {
        relative: PathBuf::from(path.join("/")),
        path: path.iter().map(|part| part.to_string()).collect(),
        code: code.to_string(),
    };
    let kafka = file(&["stores", "kafka"], "use crate::stores::log_position;");
    let position = file(&["stores", "log_position"], "use super::kafka::LogError;");
    let deeper = file(
        &["guest", "registry", "storage"],
        "use super::checks; use super::super::runtime;",
    );
    assert_eq!(names_in_own_module(&kafka), ["log_position"]);
    assert_eq!(names_in_own_module(&position), ["kafka"]);
    assert_eq!(names_in_own_module(&deeper), ["runtime"]);
    let graph = BTreeMap::from([
        (
            "kafka".to_string(),
            BTreeSet::from(["log_position".to_string()]),
        ),
        (
            "log_position".to_string(),
            BTreeSet::from(["kafka".to_string()]),
        ),
        ("redis".to_string(), BTreeSet::new()),
    ]);
    assert_eq!(
        circle(&graph),
        Some(vec!["kafka".into(), "log_position".into(), "kafka".into()])
    );
    let one_way = BTreeMap::from([
        ("kafka".to_string(), BTreeSet::new()),
        (
            "log_position".to_string(),
            BTreeSet::from(["kafka".to_string()]),
        ),
    ]);
    assert_eq!(circle(&one_way), None);
}
