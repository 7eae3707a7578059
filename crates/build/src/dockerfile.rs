//! The Dockerfile language, parsed as BuildKit parses it: parser directives (`syntax`,
//! `escape`, `check`), comments, line continuations (with comment and empty lines inside
//! them), heredocs (`<<EOF`, `<<-EOF`, quoted delimiters), instruction flags (`--name=value`),
//! JSON (exec) and shell forms. Every problem carries its line and column.

use serde::Serialize;

/// The instructions of the Dockerfile reference.
pub const INSTRUCTIONS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// A problem at a place in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// A rule name (Docker's, where it has one), for `--check`.
    pub rule: &'static str,
    /// What is wrong.
    pub message: String,
    /// An error (the build cannot proceed) rather than a warning.
    pub error: bool,
}

impl Problem {
    fn new(
        line: usize,
        column: usize,
        rule: &'static str,
        message: String,
        error: bool,
    ) -> Problem {
        Problem {
            line,
            column,
            rule,
            message,
            error,
        }
    }

    pub(crate) fn error(
        line: usize,
        column: usize,
        rule: &'static str,
        message: impl Into<String>,
    ) -> Problem {
        Problem::new(line, column, rule, message.into(), true)
    }

    pub(crate) fn warning(
        line: usize,
        column: usize,
        rule: &'static str,
        message: impl Into<String>,
    ) -> Problem {
        Problem::new(line, column, rule, message.into(), false)
    }
}

/// An instruction flag: `--name=value` or `--name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flag {
    /// Without the dashes.
    pub name: String,
    /// After `=`.
    pub value: Option<String>,
}

/// An instruction's arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Args {
    /// The JSON (exec) form.
    Exec(Vec<String>),
    /// The shell form: the text after the flags, as written (continuations joined).
    Shell(String),
}

/// A heredoc attached to an instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter.
    pub name: String,
    /// The content, with its final newline.
    pub body: String,
    /// `<<-`: leading tabs removed.
    pub chomp: bool,
    /// Unquoted delimiter: variables are expanded in the body.
    pub expand: bool,
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instruction {
    /// Upper case.
    pub keyword: String,
    /// Line of the keyword.
    pub line: usize,
    /// Last line (continuations and heredocs included).
    pub end_line: usize,
    /// Column of the keyword.
    pub column: usize,
    /// Flags before the arguments.
    pub flags: Vec<Flag>,
    /// Arguments.
    pub args: Args,
    /// Heredocs, in order.
    pub heredocs: Vec<Heredoc>,
    /// For ONBUILD: the instruction it carries.
    pub inner: Option<Box<Instruction>>,
}

impl Instruction {
    /// The value of flag `name`.
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .find(|f| f.name == name)
            .and_then(|f| f.value.as_deref())
    }

    /// The shell-form text, or the exec form joined.
    pub fn text(&self) -> String {
        match &self.args {
            Args::Shell(s) => s.clone(),
            Args::Exec(v) => v.join(" "),
        }
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dockerfile {
    /// The escape character (`\` or `` ` ``).
    pub escape: char,
    /// `# syntax=`.
    pub syntax: Option<String>,
    /// `# check=`.
    pub check: Option<String>,
    /// The instructions.
    pub instructions: Vec<Instruction>,
}

/// The flags each instruction accepts.
fn allowed_flags(keyword: &str) -> &'static [&'static str] {
    match keyword {
        "FROM" => &["platform"],
        "RUN" => &["mount", "network", "security"],
        "COPY" => &["from", "chown", "chmod", "link", "exclude", "parents"],
        "ADD" => &[
            "chown",
            "chmod",
            "link",
            "exclude",
            "checksum",
            "keep-git-dir",
        ],
        "HEALTHCHECK" => &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
        _ => &[],
    }
}

/// Parses a Dockerfile. Syntax errors and warnings are all returned; the file is usable only
/// when no problem is an error.
pub fn parse(text: &str) -> (Dockerfile, Vec<Problem>) {
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let mut problems = Vec::new();
    let mut df = Dockerfile {
        escape: '\\',
        syntax: None,
        check: None,
        instructions: Vec::new(),
    };
    // Parser directives: only at the very top, before any other line.
    let mut i = 0;
    let mut seen = std::collections::HashSet::new();
    while i < lines.len() {
        let Some((name, value)) = directive(lines[i]) else {
            break;
        };
        let lname = name.to_ascii_lowercase();
        if !matches!(lname.as_str(), "syntax" | "escape" | "check") {
            break; // an unknown directive is a comment, and ends the directives
        }
        if !seen.insert(lname.clone()) {
            problems.push(Problem::error(
                i + 1,
                1,
                "DuplicateDirective",
                format!("only one {lname} parser directive can be used"),
            ));
        }
        match lname.as_str() {
            "escape" => match value.as_str() {
                "\\" => df.escape = '\\',
                "`" => df.escape = '`',
                v => problems.push(Problem::error(
                    i + 1,
                    1,
                    "InvalidEscape",
                    format!("invalid escape token '{v}' does not match ` or \\"),
                )),
            },
            "syntax" => df.syntax = Some(value),
            _ => df.check = Some(value),
        }
        i += 1;
    }
    let esc = df.escape;
    while i < lines.len() {
        let raw = lines[i];
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i += 1;
            continue;
        }
        let start = i;
        let column = raw.len() - trimmed.len() + 1;
        // Join continuation lines; comments and blank lines inside are dropped.
        let mut logical = String::new();
        let mut cur = raw.to_string();
        let mut empty_continuation = None;
        loop {
            let t = cur.trim_end();
            match t.strip_suffix(esc) {
                Some(body) if i + 1 < lines.len() => {
                    logical.push_str(body);
                    i += 1;
                    while i < lines.len() {
                        let next = lines[i].trim_start();
                        if next.starts_with('#') {
                            i += 1;
                        } else if next.is_empty() {
                            empty_continuation.get_or_insert(i + 1);
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    if i >= lines.len() {
                        break;
                    }
                    cur = lines[i].to_string();
                }
                Some(body) => {
                    logical.push_str(body);
                    break;
                }
                None => {
                    logical.push_str(t);
                    break;
                }
            }
        }
        if let Some(l) = empty_continuation {
            problems.push(Problem::warning(
                l,
                1,
                "NoEmptyContinuation",
                "empty continuation lines will become errors in a future release",
            ));
        }
        let logical = logical.trim_start().to_string();
        let (keyword, rest) = match logical.split_once(char::is_whitespace) {
            Some((k, r)) => (k.to_string(), r.trim().to_string()),
            None => (logical.clone(), String::new()),
        };
        let upper = keyword.to_ascii_uppercase();
        i += 1;
        // Heredocs: the delimiters named on the line, their bodies the lines that follow.
        let mut heredocs = Vec::new();
        if matches!(upper.as_str(), "RUN" | "COPY" | "ADD") {
            for (name, chomp, expand) in heredoc_markers(&rest) {
                let mut body = String::new();
                let mut closed = false;
                while i < lines.len() {
                    let l = lines[i];
                    i += 1;
                    let cmp = if chomp { l.trim_start_matches('\t') } else { l };
                    if cmp == name {
                        closed = true;
                        break;
                    }
                    body.push_str(if chomp { l.trim_start_matches('\t') } else { l });
                    body.push('\n');
                }
                if !closed {
                    problems.push(Problem::error(
                        start + 1,
                        column,
                        "UnterminatedHeredoc",
                        format!("{upper}: heredoc <<{name} is not terminated"),
                    ));
                }
                heredocs.push(Heredoc {
                    name,
                    body,
                    chomp,
                    expand,
                });
            }
        }
        let end_line = i;
        match instruction(
            &upper,
            &keyword,
            &rest,
            start + 1,
            column,
            esc,
            &mut problems,
        ) {
            Some(mut ins) => {
                ins.end_line = end_line;
                ins.heredocs = heredocs;
                df.instructions.push(ins);
            }
            None => continue,
        }
    }
    (df, problems)
}

/// `# name=value` at the top of the file.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix('#')?;
    let (name, value) = rest.split_once('=')?;
    let name = name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some((name.to_string(), value.trim().to_string()))
}

/// The heredoc delimiters on an instruction line: (name, chomp, expand).
fn heredoc_markers(rest: &str) -> Vec<(String, bool, bool)> {
    let b: Vec<char> = rest.chars().collect();
    let mut out = Vec::new();
    let mut k = 0;
    let mut quote: Option<char> = None;
    while k + 1 < b.len() {
        let c = b[k];
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            k += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            quote = Some(c);
            k += 1;
            continue;
        }
        if c == '<' && b[k + 1] == '<' && b.get(k + 2) != Some(&'<') {
            let mut j = k + 2;
            let chomp = b.get(j) == Some(&'-');
            if chomp {
                j += 1;
            }
            let q = b.get(j).copied().filter(|c| *c == '"' || *c == '\'');
            if q.is_some() {
                j += 1;
            }
            let n = b[j..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .count();
            if n > 0 && (q.is_none() || b.get(j + n) == q.as_ref()) {
                out.push((b[j..j + n].iter().collect(), chomp, q.is_none()));
                k = j + n + usize::from(q.is_some());
                continue;
            }
        }
        k += 1;
    }
    out
}

/// Splits leading `--name[=value]` flags off `rest`.
fn split_flags(rest: &str) -> (Vec<Flag>, String) {
    let mut flags = Vec::new();
    let mut r = rest.trim_start();
    while let Some(f) = r.strip_prefix("--") {
        let end = f.find(char::is_whitespace).unwrap_or(f.len());
        let token = &f[..end];
        if token.is_empty() {
            break;
        }
        let (name, value) = match token.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (token.to_string(), None),
        };
        flags.push(Flag { name, value });
        r = f[end..].trim_start();
    }
    (flags, r.to_string())
}

fn instruction(
    upper: &str,
    keyword: &str,
    rest: &str,
    line: usize,
    column: usize,
    esc: char,
    problems: &mut Vec<Problem>,
) -> Option<Instruction> {
    if !INSTRUCTIONS.contains(&upper) {
        problems.push(Problem::error(
            line,
            column,
            "UnknownInstruction",
            format!("unknown instruction: {keyword}"),
        ));
        return None;
    }
    if keyword != upper && keyword != keyword.to_ascii_lowercase() {
        problems.push(Problem::warning(
            line,
            column,
            "ConsistentInstructionCasing",
            format!("instruction {keyword} should be all upper or all lower case"),
        ));
    }
    let arg_col = column + keyword.len() + 1;
    let (flags, body) = split_flags(rest);
    let allowed = allowed_flags(upper);
    for f in &flags {
        if !allowed.contains(&f.name.as_str()) {
            problems.push(Problem::error(
                line,
                arg_col,
                "UnknownFlag",
                format!("{upper}: unknown flag: --{}", f.name),
            ));
        }
    }
    let json_capable = matches!(
        upper,
        "RUN" | "CMD" | "ENTRYPOINT" | "SHELL" | "COPY" | "ADD" | "VOLUME"
    );
    let args = if json_capable && body.trim_start().starts_with('[') {
        match serde_json::from_str::<Vec<String>>(body.trim()) {
            Ok(v) => Args::Exec(v),
            Err(_) => {
                if upper == "SHELL" {
                    problems.push(Problem::error(
                        line,
                        arg_col,
                        "InvalidJSON",
                        "SHELL requires the arguments to be in JSON form",
                    ));
                }
                Args::Shell(body.clone())
            }
        }
    } else {
        if upper == "SHELL" {
            problems.push(Problem::error(
                line,
                arg_col,
                "InvalidJSON",
                "SHELL requires the arguments to be in JSON form",
            ));
        }
        Args::Shell(body.clone())
    };
    let mut inner = None;
    let need = |problems: &mut Vec<Problem>, what: &str| {
        problems.push(Problem::error(
            line,
            arg_col,
            "MissingArgument",
            format!("{upper} requires {what}"),
        ));
    };
    let words: Vec<&str> = body.split_whitespace().collect();
    match upper {
        "FROM" => match words.as_slice() {
            [_] => {}
            [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                if !name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                {
                    problems.push(Problem::error(line, arg_col, "InvalidStageName", format!("invalid name for build stage: {name:?}, name can't start with a number or contain symbols")));
                }
            }
            [] => need(problems, "an image"),
            _ => problems.push(Problem::error(
                line,
                arg_col,
                "InvalidFrom",
                "FROM requires either one or three arguments: image [AS name]",
            )),
        },
        "COPY" | "ADD" => {
            let n = match &args {
                Args::Exec(v) => v.len(),
                Args::Shell(_) => words.len(),
            };
            if n < 2
                && !(n == 1 && !body.contains(' ') && body.starts_with("<<"))
                && !(n >= 1 && body.contains("<<"))
            {
                need(
                    problems,
                    "at least two arguments, but got one or none: a source and a destination",
                );
            }
        }
        "ENV" | "LABEL" => {
            if body.trim().is_empty() {
                need(problems, "at least one argument");
            } else if !body.contains('=') && upper == "LABEL" {
                need(problems, "key=value pairs");
            } else if !body.contains('=') && words.len() < 2 {
                need(problems, "two arguments: a name and a value");
            } else if upper == "ENV" && !words[0].contains('=') {
                problems.push(Problem::warning(
                    line,
                    column,
                    "LegacyKeyValueFormat",
                    "\"ENV key value\" should be used as \"ENV key=value\"",
                ));
            }
        }
        "ARG" if words.is_empty() => need(problems, "at least one argument"),
        "WORKDIR" | "USER" | "STOPSIGNAL" | "MAINTAINER" => {
            if body.trim().is_empty() {
                need(problems, "exactly one argument");
            }
            if upper == "MAINTAINER" {
                problems.push(Problem::warning(
                    line,
                    column,
                    "MaintainerDeprecated",
                    "MAINTAINER instruction is deprecated in favor of using label",
                ));
            }
        }
        "EXPOSE" | "VOLUME" | "RUN" | "CMD" | "ENTRYPOINT" => {
            if body.trim().is_empty() && matches!(upper, "EXPOSE" | "VOLUME") {
                need(problems, "at least one argument");
            }
            if body.trim().is_empty() && upper == "RUN" {
                need(problems, "a command");
            }
        }
        "HEALTHCHECK" => match words.first().map(|w| w.to_ascii_uppercase()).as_deref() {
            Some("NONE") if words.len() == 1 => {}
            Some("NONE") => problems.push(Problem::error(
                line,
                arg_col,
                "InvalidHealthcheck",
                "HEALTHCHECK NONE takes no arguments",
            )),
            Some("CMD") if words.len() > 1 => {}
            _ => problems.push(Problem::error(
                line,
                arg_col,
                "InvalidHealthcheck",
                "HEALTHCHECK requires NONE or CMD followed by a command",
            )),
        },
        "ONBUILD" => {
            let (k, r) = body
                .split_once(char::is_whitespace)
                .unwrap_or((body.as_str(), ""));
            let ku = k.to_ascii_uppercase();
            if matches!(ku.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                problems.push(Problem::error(
                    line,
                    arg_col,
                    "InvalidOnbuild",
                    format!("{ku} isn't allowed as an ONBUILD trigger"),
                ));
            } else if k.is_empty() {
                need(problems, "an instruction");
            } else if let Some(i) = instruction(&ku, k, r.trim(), line, arg_col, esc, problems) {
                inner = Some(Box::new(i));
            }
        }
        _ => {}
    }
    let _ = esc;
    Some(Instruction {
        keyword: upper.to_string(),
        line,
        end_line: line,
        column,
        flags,
        args,
        heredocs: Vec::new(),
        inner,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Dockerfile {
        let (df, problems) = parse(text);
        let errors: Vec<_> = problems.iter().filter(|p| p.error).collect();
        assert!(errors.is_empty(), "{errors:?}");
        df
    }

    #[test]
    fn directives_comments_and_continuations() {
        let df = ok("# syntax=docker/dockerfile:1\n# escape=`\n\nFROM busybox AS base\n# a comment\nRUN echo a `\n  # inside\n  && echo b `\n\n  && echo c\nrun echo lower\n");
        assert_eq!(df.escape, '`');
        assert_eq!(df.syntax.as_deref(), Some("docker/dockerfile:1"));
        let run = &df.instructions[1];
        assert_eq!(run.keyword, "RUN");
        assert_eq!((run.line, run.end_line), (6, 10));
        assert_eq!(
            run.args,
            Args::Shell("echo a   && echo b   && echo c".into())
        );
        assert_eq!(df.instructions[2].keyword, "RUN");
        // A directive after the first line of content is a comment.
        let df = ok("FROM x\n# escape=`\nRUN a \\\n b\n");
        assert_eq!(df.escape, '\\');
        assert_eq!(df.instructions[1].args, Args::Shell("a  b".into()));
        let (_, p) = parse("FROM x\nRUN a \\\n\n b\n");
        assert!(p
            .iter()
            .any(|p| p.rule == "NoEmptyContinuation" && p.line == 3 && !p.error));
    }

    #[test]
    fn forms_flags_and_heredocs() {
        let df = ok("FROM --platform=linux/amd64 busybox\nCMD [\"sh\", \"-c\", \"echo hi\"]\nENTRYPOINT echo hi\nCOPY --from=build --chmod=0755 /a /b\nRUN --mount=type=cache,target=/c --network=none make\nRUN <<EOF\necho one\necho two\nEOF\nCOPY <<-\"END\" /etc/x\n\tliteral $HOME\n\tEND\nRUN [\"not\", json\n");
        let i = &df.instructions;
        assert_eq!(i[0].flag("platform"), Some("linux/amd64"));
        assert_eq!(
            i[1].args,
            Args::Exec(vec!["sh".into(), "-c".into(), "echo hi".into()])
        );
        assert_eq!(i[2].args, Args::Shell("echo hi".into()));
        assert_eq!(
            (i[3].flag("from"), i[3].flag("chmod")),
            (Some("build"), Some("0755"))
        );
        assert_eq!(i[4].flag("network"), Some("none"));
        assert_eq!(i[4].args, Args::Shell("make".into()));
        assert_eq!(
            i[5].heredocs[0],
            Heredoc {
                name: "EOF".into(),
                body: "echo one\necho two\n".into(),
                chomp: false,
                expand: true
            }
        );
        assert_eq!((i[5].line, i[5].end_line), (6, 9));
        assert_eq!(i[6].heredocs[0].body, "literal $HOME\n");
        assert!(!i[6].heredocs[0].expand && i[6].heredocs[0].chomp);
        // Invalid JSON is the shell form, as Docker takes it.
        assert_eq!(i[7].args, Args::Shell("[\"not\", json".into()));
    }

    #[test]
    fn errors_carry_line_and_column() {
        let cases: &[(&str, &str, usize, usize)] = &[
            ("FROM x\n  FORM y\n", "unknown instruction: FORM", 2, 3),
            (
                "FROM x\nCOPY --form=a b c\n",
                "COPY: unknown flag: --form",
                2,
                6,
            ),
            (
                "FROM x\nSHELL sh -c\n",
                "SHELL requires the arguments to be in JSON form",
                2,
                7,
            ),
            (
                "FROM x\nCOPY onlyone\n",
                "COPY requires at least two arguments",
                2,
                6,
            ),
            (
                "FROM a b\n",
                "FROM requires either one or three arguments",
                1,
                6,
            ),
            ("FROM a AS 1st\n", "invalid name for build stage", 1, 6),
            (
                "FROM x\nRUN <<EOF\necho\n",
                "heredoc <<EOF is not terminated",
                2,
                1,
            ),
            (
                "FROM x\nONBUILD FROM y\n",
                "FROM isn't allowed as an ONBUILD trigger",
                2,
                9,
            ),
            (
                "FROM x\nHEALTHCHECK CMD\n",
                "HEALTHCHECK requires NONE or CMD",
                2,
                13,
            ),
            ("# escape=x\nFROM x\n", "invalid escape token 'x'", 1, 1),
            (
                "FROM x\nLABEL novalue\n",
                "LABEL requires key=value pairs",
                2,
                7,
            ),
        ];
        for (text, msg, line, column) in cases {
            let (_, problems) = parse(text);
            let p = problems
                .iter()
                .find(|p| p.error)
                .unwrap_or_else(|| panic!("no error for {text:?}"));
            assert!(p.message.contains(msg), "{text:?}: {p:?}");
            assert_eq!((p.line, p.column), (*line, *column), "{text:?}: {p:?}");
        }
    }

    #[test]
    fn onbuild_carries_its_instruction() {
        let df = ok("FROM x\nONBUILD COPY --chown=1 . /app\nMAINTAINER me\n");
        let inner = df.instructions[1].inner.as_ref().unwrap();
        assert_eq!(inner.keyword, "COPY");
        assert_eq!(inner.flag("chown"), Some("1"));
        let (_, p) = parse("FROM x\nMAINTAINER me\n");
        assert!(p
            .iter()
            .any(|p| p.rule == "MaintainerDeprecated" && !p.error));
    }
}
