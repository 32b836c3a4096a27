//! House rules the compiler does not check, checked on the source itself so they cannot
//! drift: every function in the service's crates reads at once.
//!
//! The limit counts a function's lines from its signature to its closing brace, tests included:
//! a function that does not fit on a screen hides its steps, whatever it does.

use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The most lines a function may span.
const MAX_FUNCTION_LINES: usize = 70;

/// The crates whose source the rule covers, relative to the workspace root.
const SOURCE_DIRS: &[&str] = &[
    "host/src",
    "guest/src",
    "wire/src",
    "message/src",
    "tests/src",
];

/// One function longer than the limit.
struct Long {
    file: PathBuf,
    name: String,
    first_line: usize,
    lines: usize,
}

/// Collects the functions of one file that are longer than the limit.
struct Functions<'a> {
    file: &'a Path,
    long: Vec<Long>,
}

impl Functions<'_> {
    fn measure(&mut self, name: &syn::Ident, span: proc_macro2::Span) {
        let first_line = span.start().line;
        let lines = span.end().line - first_line + 1;
        if lines > MAX_FUNCTION_LINES {
            self.long.push(Long {
                file: self.file.to_path_buf(),
                name: name.to_string(),
                first_line,
                lines,
            });
        }
    }
}

/// A function's span starts at its attributes and doc comment: measure from its `fn` keyword.
fn signature_to_end(signature: &syn::Signature, block: &syn::Block) -> proc_macro2::Span {
    let start = signature.fn_token.span;
    start.join(block.brace_token.span.close()).unwrap_or(start)
}

impl<'ast> Visit<'ast> for Functions<'_> {
    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        self.measure(&item.sig.ident, signature_to_end(&item.sig, &item.block));
        syn::visit::visit_item_fn(self, item);
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        self.measure(&item.sig.ident, signature_to_end(&item.sig, &item.block));
        syn::visit::visit_impl_item_fn(self, item);
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        if let Some(block) = &item.default {
            self.measure(&item.sig.ident, signature_to_end(&item.sig, block));
        }
        syn::visit::visit_trait_item_fn(self, item);
    }
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

fn long_functions(root: &Path) -> Vec<Long> {
    let mut files = Vec::new();
    for dir in SOURCE_DIRS {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(
        files.len() > 20,
        "found only {} source files under {root:?}",
        files.len()
    );
    let mut long = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let syntax =
            syn::parse_file(&source).unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()));
        let mut functions = Functions {
            file: file.strip_prefix(root).unwrap_or(file),
            long: Vec::new(),
        };
        functions.visit_file(&syntax);
        long.extend(functions.long);
    }
    long
}

#[test]
fn no_function_is_longer_than_the_limit() {
    // Cargo names the package's folder when it runs the test; the compile-time value can name
    // another checkout whose build this one reused.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let root = Path::new(&manifest_dir).join("..");
    let long = long_functions(&root);
    let report: Vec<String> = long
        .iter()
        .map(|f| {
            format!(
                "{}:{} {} spans {} lines",
                f.file.display(),
                f.first_line,
                f.name,
                f.lines
            )
        })
        .collect();
    assert!(
        report.is_empty(),
        "functions longer than {MAX_FUNCTION_LINES} lines:\n{}",
        report.join("\n")
    );
}

/// The rule's own measure: a function of exactly the limit passes and one line more does not.
#[test]
fn the_measure_counts_from_signature_to_closing_brace() {
    let body = "    let x = 1;\n".repeat(MAX_FUNCTION_LINES - 2);
    let source = format!(
        "/// doc\n#[inline]\nfn fits() {{\n{body}}}\nfn too_long() {{\n{body}    let y = 2;\n}}\n"
    );
    let syntax = syn::parse_file(&source).expect("the sample parses");
    let mut functions = Functions {
        file: Path::new("sample.rs"),
        long: Vec::new(),
    };
    functions.visit_file(&syntax);
    let names: Vec<(&str, usize)> = functions
        .long
        .iter()
        .map(|f| (f.name.as_str(), f.lines))
        .collect();
    assert_eq!(names, [("too_long", MAX_FUNCTION_LINES + 1)]);
}
