//! Shape rules for the source tree, checked on every `cargo test` so they stay true:
//!
//! - no import circle between two files of `src/` (a file reaching another through `use` or a
//!   path in code, following re-exports to the file that defines the name);
//! - no function longer than 100 lines outside tests (`src/`, `bin/`);
//! - no `Result<_, String>` in a signature or type alias outside tests: errors are typed.
//!
//! Each test reads the source itself with a small tokenizer (`lex.rs`) and module resolver
//! (`modules.rs`), so it needs no extra crates and every message names file:line.
//! `STRUCTURE_ROOT=/path/to/checkout cargo test --test structure` checks another tree (a
//! branch about to be merged).

mod lex;
mod modules;

use lex::Tok;
use modules::{item_end, skip_group, Crate, SrcFile};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;

/// The longest function body allowed outside tests, in lines from `fn` to its closing `}`.
const MAX_FN_LINES: usize = 100;

/// The tree to check: this crate, or `STRUCTURE_ROOT` (another checkout, e.g. a branch
/// about to be merged).
fn manifest_dir() -> PathBuf {
    std::env::var_os("STRUCTURE_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The library and the binary, each read as its own crate.
fn crates() -> Vec<Crate> {
    vec![
        Crate::load(&manifest_dir(), "src/lib.rs"),
        Crate::load(&manifest_dir(), "bin/wgmesh.rs"),
    ]
}

#[test]
fn no_import_cycles_between_files_in_src() {
    let krate = Crate::load(&manifest_dir(), "src/lib.rs");
    let cycles = import_cycles(&krate);
    assert!(
        cycles.is_empty(),
        "{} import circle(s) between files in src/ (each file below reaches the next; break one \
         edge by moving the shared item down into a file both can import):\n\n{}",
        cycles.len(),
        cycles.join("\n\n")
    );
}

#[test]
fn no_function_over_100_lines_outside_tests() {
    let mut long = vec![];
    for krate in crates() {
        for file in &krate.files {
            for f in functions(file) {
                if f.lines > MAX_FN_LINES {
                    long.push(format!(
                        "{}:{} fn {} is {} lines",
                        file.rel, f.line, f.name, f.lines
                    ));
                }
            }
        }
    }
    assert!(
        long.is_empty(),
        "{} function(s) over {MAX_FN_LINES} lines outside tests (split each into named steps):\n{}",
        long.len(),
        long.join("\n")
    );
}

#[test]
fn no_result_with_string_error_in_signatures() {
    let mut found = vec![];
    for krate in crates() {
        for file in &krate.files {
            for (line, what) in string_errors(file) {
                found.push(format!("{}:{line} {what}", file.rel));
            }
        }
    }
    assert!(
        found.is_empty(),
        "{} signature(s) outside tests return Result<_, String> (give the layer a typed error \
         mapped to an exit code or HTTP status):\n{}",
        found.len(),
        found.join("\n")
    );
}

/// The checkers themselves, on small samples, so a broken parser cannot pass silently.
mod self_check {
    use super::*;

    #[test]
    fn the_real_tree_resolves_known_modules() {
        let krate = Crate::load(&manifest_dir(), "src/lib.rs");
        assert!(
            krate.files.len() > 50,
            "only {} files read",
            krate.files.len()
        );
        let edges = krate.edges(true);
        assert!(edges.len() > 100, "only {} edges found", edges.len());
    }

    #[test]
    fn a_two_file_circle_is_reported_with_its_lines() {
        let dir = sample(&[
            ("lib.rs", "pub mod a;\npub mod b;\n"),
            ("a.rs", "use crate::b::B;\npub struct A(B);\n"),
            (
                "b.rs",
                "pub struct B;\nfn f() { let _ = crate::a::A(B); }\n",
            ),
        ]);
        let cycles = import_cycles(&Crate::load(&dir.0, "src/lib.rs"));
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        assert!(
            cycles[0].contains("src/a.rs:1 uses crate::b::B"),
            "{}",
            cycles[0]
        );
        assert!(
            cycles[0].contains("src/b.rs:2 uses crate::a::A"),
            "{}",
            cycles[0]
        );
    }

    #[test]
    fn a_test_module_reaching_back_is_not_a_circle() {
        let dir = sample(&[
            ("lib.rs", "pub mod a;\npub mod b;\n"),
            (
                "a.rs",
                "pub fn a() {}\n#[cfg(test)]\nmod tests {\n    fn t() { crate::b::b(); }\n}\n",
            ),
            ("b.rs", "pub fn b() { crate::a::a(); }\n"),
        ]);
        assert!(import_cycles(&Crate::load(&dir.0, "src/lib.rs")).is_empty());
    }

    #[test]
    fn a_reexport_points_at_the_defining_file_not_the_mod_rs() {
        let dir = sample(&[
            ("lib.rs", "pub mod m;\n"),
            (
                "m/mod.rs",
                "mod x;\nmod y;\npub use x::X;\npub struct Top;\n",
            ),
            ("m/x.rs", "pub struct X;\n"),
            (
                "m/y.rs",
                "use super::X;\nuse super::Top;\npub fn f(_: X, _: Top) {}\n",
            ),
        ]);
        // y → x (through the re-export) and y → mod.rs, mod.rs → x: no circle.
        assert!(import_cycles(&Crate::load(&dir.0, "src/lib.rs")).is_empty());
    }

    #[test]
    fn long_functions_and_string_errors_are_found_outside_tests_only() {
        let body = "    let x = 1;\n".repeat(MAX_FN_LINES);
        let src = format!(
            "pub fn long() {{\n{body}}}\npub fn short() -> Result<(), String> {{ Ok(()) }}\n\
             #[cfg(test)]\nmod tests {{\n    fn long_test() {{\n{body}}}\n    \
             fn s() -> Result<u8, String> {{ Ok(1) }}\n}}\n"
        );
        let dir = sample(&[("lib.rs", &src)]);
        let krate = Crate::load(&dir.0, "src/lib.rs");
        let fns = functions(&krate.files[0]);
        let long: Vec<_> = fns
            .iter()
            .filter(|f| f.lines > MAX_FN_LINES)
            .map(|f| &f.name)
            .collect();
        assert_eq!(long, ["long"]);
        assert_eq!(string_errors(&krate.files[0]).len(), 1);
    }

    /// A crate written to a temporary folder, removed again on drop.
    struct Sample(std::path::PathBuf);

    impl Drop for Sample {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn sample(files: &[(&str, &str)]) -> Sample {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wgmesh-structure-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (rel, text) in files {
            let path = dir.join("src").join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        Sample(dir)
    }
}

/// Every strongly connected group of files, each shown as one concrete circle with the
/// line that makes each step, then the rest of the group.
///
/// Code under `#[cfg(test)]` is left out: nothing can import a test module, so a test reaching
/// back into another file (a unit test driving a fuzz harness) is a leaf, not a layer.
fn import_cycles(krate: &Crate) -> Vec<String> {
    let edges = krate.edges(false);
    let n = krate.files.len();
    let mut adj: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    for &(a, b) in edges.keys() {
        adj[a].insert(b);
    }
    let mut out = vec![];
    for group in strongly_connected(&adj) {
        if group.len() < 2 {
            continue;
        }
        let start = *group.iter().min_by_key(|&&f| &krate.files[f].rel).unwrap();
        let circle = shortest_circle(&adj, &group, start);
        let mut text = format!(
            "circle of {} files through {}:",
            group.len(),
            krate.files[start].rel
        );
        for pair in circle.windows(2) {
            let (line, path) = &edges[&(pair[0], pair[1])];
            text += &format!("\n  {}:{line} uses {path}", krate.files[pair[0]].rel);
        }
        let mut rest: Vec<&str> = group
            .iter()
            .filter(|f| !circle.contains(f))
            .map(|&f| krate.files[f].rel.as_str())
            .collect();
        rest.sort();
        if !rest.is_empty() {
            text += &format!("\n  also in this circle: {}", rest.join(", "));
        }
        text += "\n  every edge inside it:";
        for (&(a, b), (line, path)) in &edges {
            if group.contains(&a) && group.contains(&b) {
                let (from, to) = (&krate.files[a].rel, &krate.files[b].rel);
                text += &format!("\n    {from}:{line} -> {to} ({path})");
            }
        }
        out.push(text);
    }
    out
}

/// Tarjan's algorithm, iteratively.
fn strongly_connected(adj: &[BTreeSet<usize>]) -> Vec<Vec<usize>> {
    let n = adj.len();
    let (mut index, mut low, mut on_stack) = (vec![usize::MAX; n], vec![0; n], vec![false; n]);
    let (mut stack, mut groups, mut next) = (vec![], vec![], 0);
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work: Vec<(usize, Vec<usize>)> = vec![(root, adj[root].iter().copied().collect())];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some((v, todo)) = work.last_mut() {
            let v = *v;
            if let Some(w) = todo.pop() {
                if index[w] == usize::MAX {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    work.push((w, adj[w].iter().copied().collect()));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some((parent, _)) = work.last() {
                low[*parent] = low[*parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut group = vec![];
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    group.push(w);
                    if w == v {
                        break;
                    }
                }
                groups.push(group);
            }
        }
    }
    groups
}

/// The shortest path `start → … → start` inside one group (breadth first).
fn shortest_circle(adj: &[BTreeSet<usize>], group: &[usize], start: usize) -> Vec<usize> {
    let mut prev: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in &adj[v] {
            if !group.contains(&w) {
                continue;
            }
            if w == start {
                let mut path = vec![start, v];
                let mut cur = v;
                while cur != start {
                    cur = prev[&cur];
                    path.push(cur);
                }
                path.reverse();
                return path;
            }
            if let std::collections::btree_map::Entry::Vacant(e) = prev.entry(w) {
                e.insert(v);
                queue.push_back(w);
            }
        }
    }
    vec![start]
}

struct Function {
    name: String,
    line: usize,
    lines: usize,
}

fn in_tests(file: &SrcFile, i: usize) -> bool {
    file.test || file.test_ranges.iter().any(|&(a, b)| a <= i && i <= b)
}

/// Every `fn` with a body outside test code, with its length from `fn` to the closing `}`.
fn functions(file: &SrcFile) -> Vec<Function> {
    let toks = &file.toks;
    let mut out = vec![];
    for i in 0..toks.len() {
        if !toks[i].is("fn") || !toks.get(i + 1).is_some_and(Tok::is_ident) || in_tests(file, i) {
            continue;
        }
        if let Some(open) = body_start(toks, i) {
            let close = skip_group(toks, open) - 1;
            out.push(Function {
                name: toks[i + 1].text.clone(),
                line: toks[i].line,
                lines: toks[close].line - toks[i].line + 1,
            });
        }
    }
    out
}

/// The `{` opening the body of the `fn` at `i`, or None for a declaration ending in `;`.
fn body_start(toks: &[Tok], i: usize) -> Option<usize> {
    let mut j = i;
    while j < toks.len() {
        match toks[j].text.as_str() {
            "{" => return Some(j),
            ";" => return None,
            "(" | "[" => j = skip_group(toks, j),
            _ => j += 1,
        }
    }
    None
}

/// `Result<_, String>` inside a function signature or a `type` alias outside tests.
fn string_errors(file: &SrcFile) -> Vec<(usize, String)> {
    let toks = &file.toks;
    let mut out = vec![];
    for i in 0..toks.len() {
        let sig_end = if toks[i].is("fn") && toks.get(i + 1).is_some_and(Tok::is_ident) {
            body_start(toks, i).unwrap_or_else(|| item_end(toks, i))
        } else if toks[i].is("type") && toks.get(i + 2).is_some_and(|t| t.is("=")) {
            item_end(toks, i)
        } else {
            continue;
        };
        if in_tests(file, i) {
            continue;
        }
        for j in i..sig_end {
            if toks[j].is("Result") && toks[j + 1].is("<") && last_arg_is_string(toks, j + 1) {
                out.push((
                    toks[j].line,
                    format!("{} {}", toks[i].text, toks[i + 1].text),
                ));
            }
        }
    }
    out
}

/// Whether the generic list opened at `open` (`<`) has two arguments, the last `String`.
fn last_arg_is_string(toks: &[Tok], open: usize) -> bool {
    let (mut depth, mut nested) = (0, 0);
    let mut args: Vec<Vec<&str>> = vec![vec![]];
    for t in &toks[open..] {
        match t.text.as_str() {
            "(" | "[" => nested += 1,
            ")" | "]" => nested -= 1,
            "<" => depth += 1,
            ">" => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            "," if depth == 1 && nested == 0 => {
                args.push(vec![]);
                continue;
            }
            _ => {}
        }
        if depth >= 1 && !(depth == 1 && t.is("<")) {
            args.last_mut().unwrap().push(t.text.as_str());
        }
    }
    args.len() == 2 && args[1].last() == Some(&"String") && args[1].iter().all(|s| *s != "<")
}
