//! `.dockerignore` with Docker's semantics: Go `filepath.Match` patterns per path component
//! plus `**` for any number of components, `!` exceptions (the last matching line wins),
//! paths cleaned and relative to the context, a directory's exclusion covering what is under
//! it, comments and blank lines ignored.

/// One pattern line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    parts: Vec<String>,
    exclusion: bool,
}

/// A parsed `.dockerignore`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

/// A bad pattern, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(".dockerignore line {line}: invalid pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// 1-based line.
    pub line: usize,
    /// The pattern.
    pub pattern: String,
    /// What is wrong.
    pub reason: String,
}

/// Cleans a path as Go's `filepath.Clean` does, relative (no leading `/`).
pub fn clean(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            x => out.push(x),
        }
    }
    if out.is_empty() {
        ".".into()
    } else {
        out.join("/")
    }
}

impl Ignore {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Ignore, PatternError> {
        let mut patterns = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exclusion, pat) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let cleaned = clean(pat);
            if cleaned == "." && !exclusion {
                // "." or "/" excludes nothing useful; Docker keeps the context root.
                continue;
            }
            let parts: Vec<String> = cleaned.split('/').map(String::from).collect();
            for p in &parts {
                if p != "**" {
                    check_glob(p).map_err(|reason| PatternError {
                        line: n + 1,
                        pattern: line.to_string(),
                        reason,
                    })?;
                }
            }
            patterns.push(Pattern { parts, exclusion });
        }
        Ok(Ignore { patterns })
    }

    /// Whether `path` (relative to the context, `/`-separated) is left out of the context.
    pub fn excluded(&self, path: &str) -> bool {
        let path = clean(path);
        let comps: Vec<&str> = path.split('/').collect();
        let mut excluded = false;
        for p in &self.patterns {
            // A pattern matches a path or any of its parents (a directory's exclusion covers
            // its content).
            let hit = (1..=comps.len()).any(|n| matches(&p.parts, &comps[..n]));
            if hit {
                excluded = !p.exclusion;
            }
        }
        excluded
    }

    /// Whether any exception could re-include something under an excluded directory (then
    /// the directory must still be walked).
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }
}

/// Whether the pattern's components match the path's. Dynamic programming over (pattern,
/// path) positions: `**` may take any number of components, and trying each split
/// recursively is exponential in the number of `**` (a hostile .dockerignore would hang the
/// build).
fn matches(pat: &[String], path: &[&str]) -> bool {
    let m = path.len();
    // `next[j]`: the rest of the pattern after the current component matches `path[j..]`.
    let mut next = vec![false; m + 1];
    next[m] = true;
    for p in pat.iter().rev() {
        let mut cur = vec![false; m + 1];
        for j in (0..=m).rev() {
            cur[j] = if p == "**" {
                next[j] || (j < m && cur[j + 1])
            } else {
                j < m && next[j + 1] && glob(p, path[j])
            };
        }
        next = cur;
    }
    next[0]
}

/// Go's `filepath.Match` syntax check.
fn check_glob(p: &str) -> Result<(), String> {
    let b: Vec<char> = p.chars().collect();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            '\\' => {
                if i + 1 >= b.len() {
                    return Err("trailing backslash".into());
                }
                i += 2;
            }
            '[' => {
                let end = b[i + 1..]
                    .iter()
                    .position(|&c| c == ']')
                    .ok_or("unclosed '['")?;
                if end == 0 || (end == 1 && b[i + 1] == '^') {
                    return Err("empty character class".into());
                }
                i += end + 2;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Go's `filepath.Match` for one path component: `*`, `?`, `[...]` (with `^` negation and
/// ranges), `\\` escapes. Greedy with a return to the last `*` only: every other token matches
/// exactly one character, so that is complete, and it stays O(pattern × name) where trying
/// every split at every `*` is exponential.
fn glob(p: &str, s: &str) -> bool {
    let p: Vec<char> = p.chars().collect();
    let s: Vec<char> = s.chars().collect();
    let (mut pi, mut si) = (0, 0);
    // After the last `*` seen: where the pattern resumes, and the next name position to try.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if p.get(pi) == Some(&'*') {
            while p.get(pi) == Some(&'*') {
                pi += 1;
            }
            star = Some((pi, si));
            continue;
        }
        if let Some(len) = token(&p[pi..], s[si]) {
            pi += len;
            si += 1;
            continue;
        }
        match star {
            Some((resume, at)) => {
                pi = resume;
                si = at + 1;
                star = Some((resume, at + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// When the pattern's first token (not `*`) matches `c`: the token's length.
fn token(p: &[char], c: char) -> Option<usize> {
    match p.first()? {
        '?' => Some(1),
        '[' => {
            let end = p[1..].iter().position(|&x| x == ']')?;
            let class = &p[1..1 + end];
            let (neg, class) = match class.first() {
                Some('^') => (true, &class[1..]),
                _ => (false, class),
            };
            let mut hit = false;
            let mut k = 0;
            while k < class.len() {
                if k + 2 < class.len() && class[k + 1] == '-' {
                    hit |= class[k] <= c && c <= class[k + 2];
                    k += 3;
                } else {
                    hit |= class[k] == c;
                    k += 1;
                }
            }
            (hit != neg).then_some(end + 2)
        }
        '\\' if p.len() > 1 => (p[1] == c).then_some(2),
        &x => (x == c).then_some(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_semantics_table() {
        let ig = Ignore::parse(
            "# comment\n\
             *.log\n\
             !keep.log\n\
             node_modules\n\
             /build/\n\
             **/*.tmp\n\
             docs/**/draft-?.md\n\
             secret[0-9].txt\n\
             \n\
             tmp/*\n\
             !tmp/readme\n",
        )
        .unwrap();
        let cases: &[(&str, bool)] = &[
            ("app.log", true),
            ("keep.log", false),
            ("sub/app.log", false), // *.log matches only at the top, as in Docker
            ("node_modules", true),
            ("node_modules/x/y.js", true),
            ("build", true),
            ("build/out.o", true),
            ("a/b/c.tmp", true),
            ("c.tmp", true),
            ("docs/draft-1.md", true),
            ("docs/x/y/draft-2.md", true),
            ("docs/draft-10.md", false),
            ("secret1.txt", true),
            ("secretx.txt", false),
            ("tmp/a", true),
            ("tmp/readme", false),
            ("tmp", false),
            ("src/main.rs", false),
            ("./app.log", true),
            ("Dockerfile", false),
        ];
        for (path, want) in cases {
            assert_eq!(ig.excluded(path), *want, "{path}");
        }
        assert!(ig.has_exceptions());
    }

    #[test]
    fn last_match_wins_and_bad_patterns_are_named() {
        let ig = Ignore::parse("!a.txt\n*.txt\n").unwrap();
        assert!(
            ig.excluded("a.txt"),
            "a later exclusion overrides an earlier exception"
        );
        let e = Ignore::parse("ok\n[x\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("unclosed"), "{e}");
        assert_eq!(clean("/a//b/./c/../d/"), "a/b/d");
        assert_eq!(clean("../.."), ".");
    }

    #[test]
    fn stars_match_as_go_does() {
        for (p, name, want) in [
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("*", "", true),
            ("**x", "yyx", true),
            ("*.log", ".log", true),
            ("*[0-9]?", "ab1c", true),
            ("*[^0-9]", "ab1", false),
            ("\\**", "*abc", true),
            ("\\**", "abc", false),
            ("?*?", "a", false),
        ] {
            assert_eq!(glob(p, name), want, "{p:?} against {name:?}");
        }
    }

    /// Found by fuzz_targets/dockerignore.rs: trying every split at every `*` (and at every
    /// `**`) took exponential time, so a hostile .dockerignore hung the build.
    #[test]
    fn many_stars_and_globstars_match_in_polynomial_time() {
        let stars = format!("{}-", "*".repeat(64));
        let ig = Ignore::parse(&stars).unwrap();
        assert!(!ig.excluded(&"\0".repeat(40)));
        assert!(ig.excluded(&format!("{}-", "a".repeat(40))));
        let ig = Ignore::parse(&format!("{}x", "**/".repeat(30))).unwrap();
        let deep = vec!["d"; 60].join("/");
        assert!(!ig.excluded(&deep));
        assert!(ig.excluded(&format!("{deep}/x")));
    }
}
