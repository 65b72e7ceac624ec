//! The crate's module tree read from source, and the file-to-file import graph it implies.
//!
//! Every `use` and every `a::b::c` path in code is resolved the way rustc would (crate,
//! super, self, child modules, `use` bindings, re-exports and glob imports) to the file that
//! *defines* the named item, so a re-export in a `mod.rs` does not hide where a name lives.

use crate::lex::{tokenize, Tok};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

pub type ModId = usize;

/// One module: a file's root or an inline `mod x { … }` inside it.
pub struct Module {
    pub parent: Option<ModId>,
    pub file: usize,
    pub children: HashMap<String, ModId>,
    pub items: HashSet<String>,
    pub uses: Vec<UseEntry>,
}

/// One leaf of a `use` tree: `a::b::C as D` → path `[a, b, C]`, name `D`.
#[derive(Clone, Debug)]
pub struct UseEntry {
    pub path: Vec<String>,
    pub name: Option<String>,
    pub glob: bool,
    pub line: usize,
}

/// A path written in code (`crate::agent::dns::undo_plan`, `super::Engine::new`).
pub struct Reference {
    pub module: ModId,
    pub path: Vec<String>,
    pub line: usize,
    pub test: bool,
    pub glob: bool,
}

/// One source file, relative to the crate directory (`src/agent/dns/mod.rs`).
pub struct SrcFile {
    pub rel: String,
    pub toks: Vec<Tok>,
    /// Token index ranges (inclusive) under `#[cfg(test)]` or `#[test]`.
    pub test_ranges: Vec<(usize, usize)>,
    /// The whole file is a `#[cfg(test)] mod x;`.
    pub test: bool,
}

pub struct Crate {
    pub root: PathBuf,
    pub files: Vec<SrcFile>,
    pub modules: Vec<Module>,
    pub refs: Vec<Reference>,
}

/// What a path names: a module, an item defined in a file, or something outside the crate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Module(ModId),
    Item(usize),
}

const KEYWORDS: &[&str] = &[
    "as", "async", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern", "false",
    "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref",
    "return", "self", "Self", "static", "struct", "super", "trait", "true", "type", "unsafe",
    "use", "where", "while", "union",
];

fn is_name(t: &Tok) -> bool {
    t.is_ident() && !KEYWORDS.contains(&t.text.as_str())
}

impl Crate {
    /// Reads the crate rooted at `dir/lib_rel` (e.g. `src/lib.rs`) and every module file it declares.
    pub fn load(dir: &Path, lib_rel: &str) -> Crate {
        let mut krate = Crate {
            root: dir.to_path_buf(),
            files: vec![],
            modules: vec![],
            refs: vec![],
        };
        let root = krate.new_module(None, 0);
        krate.parse_file(dir.join(lib_rel), root, false);
        krate
    }

    fn new_module(&mut self, parent: Option<ModId>, file: usize) -> ModId {
        self.modules.push(Module {
            parent,
            file,
            children: HashMap::new(),
            items: HashSet::new(),
            uses: vec![],
        });
        self.modules.len() - 1
    }

    fn parse_file(&mut self, path: PathBuf, module: ModId, test: bool) {
        let src = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let rel = path
            .strip_prefix(&self.root)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        let file = self.files.len();
        self.files.push(SrcFile {
            rel,
            toks: tokenize(&src),
            test_ranges: vec![],
            test,
        });
        self.modules[module].file = file;
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let dir = path.parent().unwrap().to_path_buf();
        let child_dir = if stem == "mod" || stem == "lib" || stem == "main" {
            dir
        } else {
            dir.join(stem)
        };
        Walker {
            krate: self,
            file,
            test_end: None,
            pending_test: false,
        }
        .walk(module, child_dir, test);
    }

    /// Resolves a path as written in module `m`; `None` for anything outside the crate.
    fn resolve(&self, m: ModId, path: &[String], depth: usize) -> Option<Target> {
        if depth > 32 || path.is_empty() {
            return None;
        }
        let mut rest = path;
        let mut cur = match path[0].as_str() {
            "crate" => 0,
            "self" => m,
            "super" => self.modules[m].parent?,
            first => match self.lookup(m, first, depth)? {
                Target::Module(c) => c,
                item => return Some(item),
            },
        };
        rest = &rest[1..];
        while rest.first().is_some_and(|s| s == "super") {
            cur = self.modules[cur].parent?;
            rest = &rest[1..];
        }
        for seg in rest {
            match self.lookup(cur, seg, depth) {
                Some(Target::Module(c)) => cur = c,
                Some(item) => return Some(item),
                // A variant, associated item or macro-made name: it lives in this module's file.
                None => return Some(Target::Item(self.modules[cur].file)),
            }
        }
        Some(Target::Module(cur))
    }

    /// What `name` means inside module `m`: a child module, an item, a `use` binding, or a
    /// name a glob import brings in.
    fn lookup(&self, m: ModId, name: &str, depth: usize) -> Option<Target> {
        let module = &self.modules[m];
        if let Some(&c) = module.children.get(name) {
            return Some(Target::Module(c));
        }
        if module.items.contains(name) {
            return Some(Target::Item(module.file));
        }
        for u in &module.uses {
            if !u.glob && u.name.as_deref() == Some(name) {
                return self.resolve(m, &u.path, depth + 1);
            }
        }
        for u in module.uses.iter().filter(|u| u.glob) {
            if let Some(Target::Module(g)) = self.resolve(m, &u.path, depth + 1) {
                if g != m {
                    if let Some(t) = self.lookup(g, name, depth + 1) {
                        return Some(t);
                    }
                }
            }
        }
        None
    }

    /// File-to-file edges: `(from, to) → (line, path as written)`, first occurrence kept.
    pub fn edges(&self, include_tests: bool) -> BTreeMap<(usize, usize), (usize, String)> {
        let mut edges = BTreeMap::new();
        for r in &self.refs {
            if r.test && !include_tests {
                continue;
            }
            let from = self.modules[r.module].file;
            let to = match self.resolve(r.module, &r.path, 0) {
                Some(Target::Item(f)) => f,
                Some(Target::Module(m)) if r.glob => self.modules[m].file,
                _ => continue,
            };
            if from != to {
                let shown = r.path.join("::") + if r.glob { "::*" } else { "" };
                edges.entry((from, to)).or_insert((r.line, shown));
            }
        }
        edges
    }
}

/// One pass over a file's tokens, keeping a stack of `{` frames to know which module each
/// token is in and whether it sits under `#[cfg(test)]`.
struct Walker<'a> {
    krate: &'a mut Crate,
    file: usize,
    test_end: Option<usize>,
    pending_test: bool,
}

struct Frame {
    module: ModId,
    is_module: bool,
    child_dir: PathBuf,
}

impl Walker<'_> {
    fn toks(&self) -> &[Tok] {
        &self.krate.files[self.file].toks
    }

    fn tok(&self, i: usize) -> Option<&Tok> {
        self.toks().get(i)
    }

    fn is(&self, i: usize, text: &str) -> bool {
        self.tok(i).is_some_and(|t| t.is(text))
    }

    fn gated(&self, i: usize, file_test: bool) -> bool {
        file_test || self.test_end.is_some_and(|end| i <= end)
    }

    fn walk(&mut self, root: ModId, child_dir: PathBuf, file_test: bool) {
        let mut stack = vec![Frame {
            module: root,
            is_module: true,
            child_dir,
        }];
        let mut pending_files = vec![];
        let mut i = 0;
        let n = self.toks().len();
        while i < n {
            let top = stack.last().unwrap();
            let (module, is_module) = (top.module, top.is_module);
            let t = self.toks()[i].clone();
            if t.is("#") {
                i = self.attribute(i);
                continue;
            }
            if self.pending_test {
                self.pending_test = false;
                let end = item_end(self.toks(), i);
                self.krate.files[self.file].test_ranges.push((i, end));
                self.test_end = Some(self.test_end.map_or(end, |e| e.max(end)));
            }
            let test = self.gated(i, file_test);
            if t.is("mod") && self.tok(i + 1).is_some_and(is_name) {
                let name = self.toks()[i + 1].text.clone();
                let child = self.krate.new_module(Some(module), self.file);
                self.krate.modules[module]
                    .children
                    .insert(name.clone(), child);
                let dir = stack.last().unwrap().child_dir.clone();
                if self.is(i + 2, ";") {
                    let file = [
                        dir.join(format!("{name}.rs")),
                        dir.join(&name).join("mod.rs"),
                    ]
                    .into_iter()
                    .find(|p| p.exists())
                    .unwrap_or_else(|| {
                        panic!("module file for `mod {name};` in {}", dir.display())
                    });
                    pending_files.push((file, child, test));
                    i += 3;
                } else {
                    stack.push(Frame {
                        module: child,
                        is_module: true,
                        child_dir: dir.join(&name),
                    });
                    i += 3;
                }
                continue;
            }
            match t.text.as_str() {
                "{" => {
                    let dir = stack.last().unwrap().child_dir.clone();
                    stack.push(Frame {
                        module,
                        is_module: false,
                        child_dir: dir,
                    });
                    i += 1;
                }
                "}" => {
                    stack.pop();
                    if stack.is_empty() {
                        panic!("unbalanced braces in {}", self.krate.files[self.file].rel);
                    }
                    i += 1;
                }
                "use" => i = self.use_decl(i + 1, module, test),
                "pub" if self.is(i + 1, "(") => i = skip_group(self.toks(), i + 1),
                "fn" | "struct" | "enum" | "trait" | "type" | "const" | "static" | "union" => {
                    if is_module && self.tok(i + 1).is_some_and(is_name) {
                        let name = self.toks()[i + 1].text.clone();
                        self.krate.modules[module].items.insert(name);
                    }
                    i += 1;
                }
                "macro_rules" if self.is(i + 1, "!") => {
                    if let Some(name) = self.tok(i + 2).map(|t| t.text.clone()) {
                        self.krate.modules[module].items.insert(name);
                    }
                    i += 3;
                }
                _ if t.is_ident() && self.is(i + 1, "::") && !(i > 0 && self.is(i - 1, "::")) => {
                    i = self.code_path(i, module, test);
                }
                _ => i += 1,
            }
        }
        for (path, child, test) in pending_files {
            self.krate.parse_file(path, child, test);
        }
    }

    /// Skips `#[…]` / `#![…]`, noting `#[cfg(test)]` and `#[test]` for the next item.
    fn attribute(&mut self, i: usize) -> usize {
        let open = if self.is(i + 1, "!") { i + 2 } else { i + 1 };
        if !self.is(open, "[") {
            return i + 1;
        }
        let end = skip_group(self.toks(), open);
        let inner: Vec<&str> = self.toks()[open + 1..end - 1]
            .iter()
            .map(|t| t.text.as_str())
            .collect();
        let cfg_test =
            inner.first() == Some(&"cfg") && inner.contains(&"test") && !inner.contains(&"not");
        if (cfg_test || inner == ["test"]) && open == i + 1 {
            self.pending_test = true;
        }
        end
    }

    /// `a::b::c` in code, stopping at `::<` or `::{`.
    fn code_path(&mut self, mut i: usize, module: ModId, test: bool) -> usize {
        let line = self.toks()[i].line;
        let mut path = vec![self.toks()[i].text.clone()];
        while self.is(i + 1, "::") && self.tok(i + 2).is_some_and(|t| t.is_ident()) {
            path.push(self.toks()[i + 2].text.clone());
            i += 2;
        }
        self.krate.refs.push(Reference {
            module,
            path,
            line,
            test,
            glob: false,
        });
        i + 1
    }

    fn use_decl(&mut self, i: usize, module: ModId, test: bool) -> usize {
        let mut entries = vec![];
        let end = parse_use_tree(self.toks(), i, &[], &mut entries);
        for e in entries {
            if e.path.first().is_some_and(|s| s.is_empty()) {
                continue; // `::std::…`
            }
            self.krate.refs.push(Reference {
                module,
                path: e.path.clone(),
                line: e.line,
                test,
                glob: e.glob,
            });
            self.krate.modules[module].uses.push(e);
        }
        end
    }
}

/// Parses one use tree starting at `i`; returns the index after it (past the `;` at top level).
fn parse_use_tree(toks: &[Tok], mut i: usize, prefix: &[String], out: &mut Vec<UseEntry>) -> usize {
    let mut path = prefix.to_vec();
    if toks[i].is("::") {
        path.push(String::new());
        i += 1;
    }
    loop {
        let t = &toks[i];
        if t.is("{") {
            i += 1;
            while !toks[i].is("}") {
                i = parse_use_tree(toks, i, &path, out);
                if toks[i].is(",") {
                    i += 1;
                }
            }
            i += 1;
            break;
        } else if t.is("*") {
            out.push(UseEntry {
                path: path.clone(),
                name: None,
                glob: true,
                line: t.line,
            });
            i += 1;
            break;
        } else if t.is_ident() {
            path.push(t.text.clone());
            i += 1;
            if toks[i].is("::") {
                i += 1;
                continue;
            }
            let mut name = path.last().cloned();
            if path.last().is_some_and(|s| s == "self") {
                path.pop();
                name = path.last().cloned();
            }
            if toks[i].is("as") {
                name = Some(toks[i + 1].text.clone()).filter(|n| n != "_");
                i += 2;
            }
            out.push(UseEntry {
                path: path.clone(),
                name,
                glob: false,
                line: t.line,
            });
            break;
        } else {
            break;
        }
    }
    if prefix.is_empty() && toks.get(i).is_some_and(|t| t.is(";")) {
        i += 1;
    }
    i
}

/// Index just past the group opened at `open` (`(`, `[` or `{`).
pub fn skip_group(toks: &[Tok], open: usize) -> usize {
    let mut depth = 0i32;
    let mut i = open;
    while i < toks.len() {
        match toks[i].text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    toks.len()
}

/// Last token index of the item starting at `i`: its `;` or the `}` closing its body.
pub fn item_end(toks: &[Tok], i: usize) -> usize {
    let mut j = i;
    while j < toks.len() {
        match toks[j].text.as_str() {
            ";" => return j,
            "{" => return skip_group(toks, j) - 1,
            "(" | "[" => j = skip_group(toks, j),
            _ => j += 1,
        }
    }
    toks.len() - 1
}
