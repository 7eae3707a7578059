//! Variable substitution as Docker applies it to Dockerfile instructions (BuildKit's shell
//! lexer): `$v`, `${v}`, `${v:-word}`, `${v-word}`, `${v:+word}`, `${v+word}`, `${v:?msg}`,
//! `${v?msg}`; single quotes keep text literal, double quotes group, the escape character
//! escapes. Words are split on unquoted whitespace for the instructions that take several.

use std::collections::BTreeMap;

/// Why a word could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstError {
    /// `${` without its `}`.
    #[error("missing '}}' in {0:?}")]
    Unclosed(String),
    /// A modifier Docker does not know.
    #[error("unsupported modifier ({modifier}) in substitution {word:?}")]
    BadModifier {
        /// The modifier.
        modifier: String,
        /// The word.
        word: String,
    },
    /// `${v:?message}` with `v` unset (or empty).
    #[error("{name}: {message}")]
    Required {
        /// The variable.
        name: String,
        /// Its message.
        message: String,
    },
    /// A quote without its closing one.
    #[error("unexpected end of statement while looking for matching {0}")]
    Unterminated(char),
}

/// Expands `word` with `env` (missing variables are empty), processing quotes and escapes.
pub fn expand(
    word: &str,
    env: &BTreeMap<String, String>,
    escape: char,
) -> Result<String, SubstError> {
    let words = lex(word, env, escape, false)?;
    Ok(words.join(" "))
}

/// Expands and splits `text` into words on unquoted whitespace.
pub fn expand_words(
    text: &str,
    env: &BTreeMap<String, String>,
    escape: char,
) -> Result<Vec<String>, SubstError> {
    lex(text, env, escape, true)
}

fn lex(
    text: &str,
    env: &BTreeMap<String, String>,
    escape: char,
    split: bool,
) -> Result<Vec<String>, SubstError> {
    let chars: Vec<char> = text.chars().collect();
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if split && c.is_whitespace() {
            if in_word {
                words.push(std::mem::take(&mut cur));
                in_word = false;
            }
            i += 1;
            continue;
        }
        in_word = true;
        if c == escape {
            if let Some(&n) = chars.get(i + 1) {
                cur.push(n);
                i += 2;
            } else {
                cur.push(c);
                i += 1;
            }
            continue;
        }
        match c {
            '\'' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&x| x == '\'')
                    .ok_or(SubstError::Unterminated('\''))?;
                cur.extend(&chars[i + 1..i + 1 + end]);
                i += end + 2;
            }
            '"' => {
                i += 1;
                loop {
                    let Some(&d) = chars.get(i) else {
                        return Err(SubstError::Unterminated('"'));
                    };
                    if d == '"' {
                        i += 1;
                        break;
                    }
                    if d == escape {
                        // In double quotes the escape only escapes what the shell would.
                        match chars.get(i + 1) {
                            Some(&n) if n == '"' || n == '$' || n == escape => {
                                cur.push(n);
                                i += 2;
                            }
                            Some(&n) => {
                                cur.push(d);
                                cur.push(n);
                                i += 2;
                            }
                            None => {
                                cur.push(d);
                                i += 1;
                            }
                        }
                        continue;
                    }
                    if d == '$' {
                        i = variable(&chars, i, env, escape, &mut cur, text)?;
                        continue;
                    }
                    cur.push(d);
                    i += 1;
                }
            }
            '$' => {
                let mut value = String::new();
                i = variable(&chars, i, env, escape, &mut value, text)?;
                if split {
                    // Unquoted, an expansion is split into words as the shell splits it.
                    let mut parts = value.split(char::is_whitespace).peekable();
                    if value.starts_with(char::is_whitespace) && !cur.is_empty() {
                        words.push(std::mem::take(&mut cur));
                    }
                    while let Some(p) = parts.next() {
                        cur.push_str(p);
                        if parts.peek().is_some() && !cur.is_empty() {
                            words.push(std::mem::take(&mut cur));
                        }
                    }
                    in_word = !cur.is_empty() || (words.is_empty() && value.is_empty() && in_word);
                } else {
                    cur.push_str(&value);
                }
            }
            _ => {
                cur.push(c);
                i += 1;
            }
        }
    }
    if in_word || !split {
        words.push(cur);
    }
    Ok(words)
}

/// Expands the variable at `chars[i]` (a `$`) into `out`; returns the index after it.
fn variable(
    chars: &[char],
    i: usize,
    env: &BTreeMap<String, String>,
    escape: char,
    out: &mut String,
    word: &str,
) -> Result<usize, SubstError> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    match chars.get(i + 1) {
        Some('{') => {
            // Find the matching brace (nesting for ${a:-${b}}).
            let mut depth = 0;
            let mut j = i + 1;
            let end = loop {
                match chars.get(j) {
                    None => return Err(SubstError::Unclosed(word.to_string())),
                    Some('{') => depth += 1,
                    Some('}') => {
                        depth -= 1;
                        if depth == 0 {
                            break j;
                        }
                    }
                    _ => {}
                }
                j += 1;
            };
            let inner: String = chars[i + 2..end].iter().collect();
            let name_len = inner.chars().take_while(|c| is_name(*c)).count();
            let name = &inner[..name_len];
            let rest = &inner[name_len..];
            let value = env.get(name);
            let set = value.is_some();
            let nonempty = value.is_some_and(|v| !v.is_empty());
            let word_of = |w: &str| expand(w, env, escape);
            let expanded = if rest.is_empty() {
                value.cloned().unwrap_or_default()
            } else if let Some(w) = rest.strip_prefix(":-") {
                if nonempty {
                    value.cloned().unwrap_or_default()
                } else {
                    word_of(w)?
                }
            } else if let Some(w) = rest.strip_prefix('-') {
                if set {
                    value.cloned().unwrap_or_default()
                } else {
                    word_of(w)?
                }
            } else if let Some(w) = rest.strip_prefix(":+") {
                if nonempty {
                    word_of(w)?
                } else {
                    String::new()
                }
            } else if let Some(w) = rest.strip_prefix('+') {
                if set {
                    word_of(w)?
                } else {
                    String::new()
                }
            } else if let Some(m) = rest.strip_prefix(":?") {
                if nonempty {
                    value.cloned().unwrap_or_default()
                } else {
                    return Err(SubstError::Required {
                        name: name.into(),
                        message: word_of(m)?,
                    });
                }
            } else if let Some(m) = rest.strip_prefix('?') {
                if set {
                    value.cloned().unwrap_or_default()
                } else {
                    return Err(SubstError::Required {
                        name: name.into(),
                        message: word_of(m)?,
                    });
                }
            } else {
                return Err(SubstError::BadModifier {
                    modifier: rest.chars().take(2).collect(),
                    word: word.to_string(),
                });
            };
            out.push_str(&expanded);
            Ok(end + 1)
        }
        Some(c) if is_name(*c) => {
            let n = chars[i + 1..].iter().take_while(|c| is_name(**c)).count();
            let name: String = chars[i + 1..i + 1 + n].iter().collect();
            out.push_str(env.get(&name).map(String::as_str).unwrap_or(""));
            Ok(i + 1 + n)
        }
        _ => {
            out.push('$');
            Ok(i + 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [
            ("A", "alpha"),
            ("EMPTY", ""),
            ("P", "/usr/local"),
            ("SP", "two words"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn substitution_table() {
        let cases: &[(&str, &str)] = &[
            ("$A", "alpha"),
            ("${A}", "alpha"),
            ("x${A}y", "xalphay"),
            ("$A/bin", "alpha/bin"),
            ("$NOPE", ""),
            ("${NOPE:-def}", "def"),
            ("${EMPTY:-def}", "def"),
            ("${EMPTY-def}", ""),
            ("${NOPE-def}", "def"),
            ("${A:+set}", "set"),
            ("${EMPTY:+set}", ""),
            ("${EMPTY+set}", "set"),
            ("${NOPE:-${A}}", "alpha"),
            ("'$A'", "$A"),
            ("\"$A\"", "alpha"),
            ("\\$A", "$A"),
            ("\"\\$A\"", "$A"),
            ("$", "$"),
            ("a$", "a$"),
            ("${P}/lib", "/usr/local/lib"),
            ("\"$SP\"", "two words"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &env(), '\\').unwrap(), *want, "{input}");
        }
        assert_eq!(expand("`$A", &env(), '`').unwrap(), "$A");
        assert_eq!(
            expand("${NOPE:?is required}", &env(), '\\')
                .unwrap_err()
                .to_string(),
            "NOPE: is required"
        );
        assert!(matches!(
            expand("${A", &env(), '\\'),
            Err(SubstError::Unclosed(_))
        ));
        assert!(matches!(
            expand("${A/x/y}", &env(), '\\'),
            Err(SubstError::BadModifier { .. })
        ));
        assert!(matches!(
            expand("'open", &env(), '\\'),
            Err(SubstError::Unterminated('\''))
        ));
    }

    #[test]
    fn words_split_on_unquoted_space() {
        assert_eq!(
            expand_words("a \"b c\" $SP 'd e'", &env(), '\\').unwrap(),
            ["a", "b c", "two", "words", "d e"]
        );
        assert_eq!(
            expand_words("  ", &env(), '\\').unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(expand_words("a\\ b", &env(), '\\').unwrap(), ["a b"]);
    }
}
