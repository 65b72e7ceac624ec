//! What argh leaves out of a friendly command line: `-h` (argh knows only `--help`),
//! `--version`, and a "did you mean" for a mistyped flag or subcommand.
//!
//! argh's own parser stays in charge; this only rewrites `-h` before it runs and reads its
//! error afterwards. The words a typo is compared with come from argh's own `--help` text
//! for the same subcommand, so the suggestions can never name a flag that does not exist.

use argh::FromArgs;

/// `--version`'s answer: the crate's name and version.
pub fn version() -> String {
    format!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
}

/// Whether the command line asks for the version (`wgmesh --version`, `-V`, `version`).
pub fn asks_version(rest: &[&str]) -> bool {
    matches!(rest, ["--version"] | ["-V"] | ["version"])
}

/// `rest` with `-h` turned into `--help` (before any `--`), as most tools accept it.
pub fn expand_short_help<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    let end = rest.iter().position(|a| *a == "--").unwrap_or(rest.len());
    rest.iter()
        .enumerate()
        .map(|(i, a)| if i < end && *a == "-h" { "--help" } else { *a })
        .collect()
}

/// For argh's "Unrecognized argument: X": the closest flag or subcommand that exists where
/// X was given, as a sentence to add to the error, or None when nothing is close.
pub fn suggestion<T: FromArgs>(name: &str, rest: &[&str], error: &str) -> Option<String> {
    let wrong = error
        .lines()
        .find_map(|l| l.trim().strip_prefix("Unrecognized argument: "))?
        .trim();
    let position = rest.iter().position(|a| *a == wrong)?;
    // The subcommand path is the words before the mistake that are not flags; the help of
    // the longest such path that argh accepts lists what may come next.
    let path: Vec<&str> = rest[..position]
        .iter()
        .copied()
        .take_while(|a| !a.starts_with('-'))
        .collect();
    let help = (0..=path.len()).rev().find_map(|n| {
        let mut args = path[..n].to_vec();
        args.push("--help");
        let early = T::from_args(&[name], &args).err()?;
        early.status.is_ok().then_some(early.output)
    })?;
    let candidates = candidates(&help, wrong.starts_with('-'));
    closest(wrong, &candidates).map(|c| format!("did you mean {c}?"))
}

/// The flags (`--x`) or the subcommand names a help text lists.
fn candidates(help: &str, flags: bool) -> Vec<String> {
    if flags {
        return help
            .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(str::to_owned)
            .collect();
    }
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .filter_map(|l| {
            let word = l.split_whitespace().next()?;
            // Subcommand lines are indented; continuation lines of a description are
            // indented further.
            (l.starts_with("  ") && !l.starts_with("    ")).then(|| word.to_owned())
        })
        .collect()
}

/// The candidate nearest to `wrong` by edit distance, if it is near enough to be a typo.
fn closest(wrong: &str, candidates: &[String]) -> Option<String> {
    let limit = (wrong.trim_start_matches('-').len() / 3).clamp(1, 3);
    candidates
        .iter()
        .map(|c| (edit_distance(wrong, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.clone())
}

/// Levenshtein distance with adjacent swaps counting one (a typo's usual shape).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_one_edit_or_swap_away() {
        assert_eq!(edit_distance("--sever", "--server"), 1);
        assert_eq!(edit_distance("craete", "create"), 1);
        assert_eq!(edit_distance("abc", "xyz"), 3);
    }

    #[test]
    fn nothing_is_suggested_for_a_word_far_from_every_candidate() {
        let c = vec!["--server".to_owned(), "--config".to_owned()];
        assert_eq!(closest("--no-such-flag", &c), None);
        assert_eq!(closest("--confg", &c).as_deref(), Some("--config"));
    }
}
