//! A small Rust tokenizer: enough to find items, `use` trees, paths and braces, with every
//! comment, string and character literal dropped so none of them can look like code.

/// One token with the 1-based line it starts on.
#[derive(Clone, Debug)]
pub struct Tok {
    pub text: String,
    pub line: usize,
}

impl Tok {
    /// An identifier or keyword (raw identifiers lose their `r#`).
    pub fn is_ident(&self) -> bool {
        self.text
            .chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
    }

    pub fn is(&self, text: &str) -> bool {
        self.text == text
    }
}

/// Splits Rust source into identifiers and punctuation (`::`, `->`, `=>` as one token).
/// Literals become a single `"lit"` token so brace and path scanning never see inside them.
pub fn tokenize(src: &str) -> Vec<Tok> {
    let chars: Vec<char> = src.chars().collect();
    let mut toks = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start_line = line;
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i = skip_block_comment(&chars, i, &mut line);
        } else if let Some(end) = raw_string_end(&chars, i) {
            line += chars[i..end].iter().filter(|&&c| c == '\n').count();
            i = end;
            toks.push(lit(start_line));
        } else if c == '"' || (c == 'b' && chars.get(i + 1) == Some(&'"')) {
            i = skip_quoted(&chars, if c == 'b' { i + 2 } else { i + 1 }, '"', &mut line);
            toks.push(lit(start_line));
        } else if c == '\'' || (c == 'b' && chars.get(i + 1) == Some(&'\'')) {
            let open = if c == 'b' { i + 1 } else { i };
            if let Some(end) = char_literal_end(&chars, open) {
                i = end;
                toks.push(lit(start_line));
            } else {
                // A lifetime or label: `'a`.
                i = open + 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_alphabetic() || c == '_' {
            let mut j = i;
            if c == 'r' && chars.get(i + 1) == Some(&'#') {
                j += 2;
                i += 2;
            }
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            toks.push(Tok {
                text: chars[i..j].iter().collect(),
                line,
            });
            i = j;
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            toks.push(lit(start_line));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if two == "::" || two == "->" || two == "=>" {
                toks.push(Tok { text: two, line });
                i += 2;
            } else {
                toks.push(Tok {
                    text: c.to_string(),
                    line,
                });
                i += 1;
            }
        }
    }
    toks
}

fn lit(line: usize) -> Tok {
    Tok {
        text: "\"lit\"".to_string(),
        line,
    }
}

fn skip_block_comment(chars: &[char], mut i: usize, line: &mut usize) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
            depth += 1;
            i += 2;
        } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            if chars[i] == '\n' {
                *line += 1;
            }
            i += 1;
        }
    }
    i
}

/// `r"…"`, `r#"…"#`, `br"…"`: the index just past the closing quote and hashes.
fn raw_string_end(chars: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if chars.get(j) != Some(&'"') {
        return None;
    }
    // A preceding identifier character means this `r` ends a longer identifier.
    if i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_') {
        return None;
    }
    j += 1;
    while j < chars.len() {
        if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(chars.len())
}

fn skip_quoted(chars: &[char], mut i: usize, close: char, line: &mut usize) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            c if c == close => return i + 1,
            '\n' => {
                *line += 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    i
}

/// `'x'`, `'\n'`, `'\u{1F600}'`: the index past the closing quote, or None for a lifetime.
fn char_literal_end(chars: &[char], open: usize) -> Option<usize> {
    let first = *chars.get(open + 1)?;
    if first == '\\' {
        let mut j = open + 2;
        while j < chars.len() && chars[j] != '\'' {
            j += 1;
        }
        return Some(j + 1);
    }
    (chars.get(open + 2) == Some(&'\'')).then_some(open + 3)
}
