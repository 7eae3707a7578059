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

fn matches(pat: &[String], path: &[&str]) -> bool {
    match pat.first() {
        None => path.is_empty(),
        Some(p) if p == "**" => (0..=path.len()).any(|k| matches(&pat[1..], &path[k..])),
        Some(p) => !path.is_empty() && glob(p, path[0]) && matches(&pat[1..], &path[1..]),
    }
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
/// ranges), `\\` escapes.
fn glob(p: &str, s: &str) -> bool {
    fn go(p: &[char], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('*') => (0..=s.len()).any(|k| go(&p[1..], &s[k..])),
            Some('?') => !s.is_empty() && go(&p[1..], &s[1..]),
            Some('[') => {
                let Some(end) = p[1..].iter().position(|&c| c == ']') else {
                    return false;
                };
                let class = &p[1..1 + end];
                let Some(&c) = s.first() else { return false };
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
                hit != neg && go(&p[end + 2..], &s[1..])
            }
            Some('\\') if p.len() > 1 => !s.is_empty() && s[0] == p[1] && go(&p[2..], &s[1..]),
            Some(&c) => !s.is_empty() && s[0] == c && go(&p[1..], &s[1..]),
        }
    }
    let p: Vec<char> = p.chars().collect();
    let s: Vec<char> = s.chars().collect();
    go(&p, &s)
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
}
