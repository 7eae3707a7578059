//! `berth build --check`: the Dockerfile reference's rules across instructions, after the
//! parser's own (see `dockerfile::parse`). Rule names follow Docker's build checks.

use crate::dockerfile::{self, Args, Dockerfile, Problem};

/// Every problem of a Dockerfile's text, in file order: the parser's and the rules'.
pub fn check(text: &str) -> (Dockerfile, Vec<Problem>) {
    let (df, mut problems) = dockerfile::parse(text);
    problems.extend(rules(&df));
    problems.sort_by_key(|p| (p.line, p.column));
    (df, problems)
}

/// The rules across instructions.
pub fn rules(df: &Dockerfile) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut stages: Vec<String> = Vec::new();
    let mut in_stage = false;
    let mut seen_in_stage: Vec<&str> = Vec::new();
    for ins in &df.instructions {
        let arg_col = ins.column + ins.keyword.len() + 1;
        if ins.keyword == "FROM" {
            in_stage = true;
            seen_in_stage.clear();
            let text = ins.text();
            let parts: Vec<&str> = text.split_whitespace().collect();
            if let [_, as_kw, name] = parts.as_slice() {
                if *as_kw != "AS" {
                    out.push(Problem::warning(
                        ins.line,
                        arg_col,
                        "FromAsCasing",
                        format!("'{as_kw}' keyword's casing does not match 'FROM'"),
                    ));
                }
                if name.chars().any(|c| c.is_ascii_uppercase()) {
                    out.push(Problem::warning(
                        ins.line,
                        arg_col,
                        "StageNameCasing",
                        format!("stage name '{name}' should be lowercase"),
                    ));
                }
                let lower = name.to_ascii_lowercase();
                if stages.contains(&lower) {
                    out.push(Problem::error(
                        ins.line,
                        arg_col,
                        "DuplicateStageName",
                        format!("duplicate stage name {name:?}, stage names should be unique"),
                    ));
                }
                stages.push(lower);
            } else {
                stages.push(String::new());
            }
            continue;
        }
        if !in_stage && ins.keyword != "ARG" {
            out.push(Problem::error(ins.line, ins.column, "NoBuildStage", format!("{}: no build stage in current context (the first instruction must be FROM, or ARG)", ins.keyword)));
            continue;
        }
        match ins.keyword.as_str() {
            "CMD" | "ENTRYPOINT" | "HEALTHCHECK" => {
                if seen_in_stage.contains(&ins.keyword.as_str()) {
                    out.push(Problem::warning(ins.line, ins.column, "MultipleInstructionsDisallowed", format!("multiple {} instructions should not be used in the same stage because only the last one will be used", ins.keyword)));
                }
                seen_in_stage.push(match ins.keyword.as_str() {
                    "CMD" => "CMD",
                    "ENTRYPOINT" => "ENTRYPOINT",
                    _ => "HEALTHCHECK",
                });
                if ins.keyword != "HEALTHCHECK" && matches!(ins.args, Args::Shell(_)) {
                    out.push(Problem::warning(ins.line, ins.column, "JSONArgsRecommended", format!("JSON arguments recommended for {} to prevent unintended behavior related to OS signals", ins.keyword)));
                }
            }
            "WORKDIR" => {
                let t = ins.text();
                if !t.starts_with('/') && !t.starts_with('$') {
                    out.push(Problem::warning(ins.line, arg_col, "WorkdirRelativePath", format!("relative workdir {t:?} can have unexpected results if the base image changes")));
                }
            }
            "COPY" => {
                if let Some(from) = ins.flag("from") {
                    let current = stages.len() - 1;
                    match from.parse::<usize>() {
                        Ok(n) if n >= current => out.push(Problem::error(
                            ins.line,
                            arg_col,
                            "UnknownStage",
                            format!("COPY --from={from}: stage {n} is not an earlier stage"),
                        )),
                        Ok(_) => {}
                        Err(_)
                            if !from.contains('$')
                                && !from.contains(['/', ':', '@'])
                                && !stages[..current].contains(&from.to_ascii_lowercase()) =>
                        {
                            out.push(Problem::warning(ins.line, arg_col, "UnknownStage", format!("COPY --from={from}: no earlier stage of that name (it will be taken as an image)")));
                        }
                        Err(_) => {}
                    }
                }
            }
            _ => {}
        }
    }
    if stages.is_empty() {
        out.push(Problem::error(
            1,
            1,
            "NoBuildStage",
            "the Dockerfile has no FROM instruction",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_table() {
        let text = "ARG V=1\n\
                    FROM busybox as Base\n\
                    CMD echo a\n\
                    CMD [\"b\"]\n\
                    WORKDIR app\n\
                    FROM base AS base\n\
                    COPY --from=3 /a /b\n\
                    COPY --from=builder /a /b\n\
                    COPY --from=base /a /b\n";
        let (_, problems) = check(text);
        let got: Vec<(usize, &str, bool)> =
            problems.iter().map(|p| (p.line, p.rule, p.error)).collect();
        assert_eq!(
            got,
            [
                (2, "FromAsCasing", false),
                (2, "StageNameCasing", false),
                (3, "JSONArgsRecommended", false),
                (4, "MultipleInstructionsDisallowed", false),
                (5, "WorkdirRelativePath", false),
                (6, "DuplicateStageName", true),
                (7, "UnknownStage", true),
                (8, "UnknownStage", false),
            ]
        );
        let (_, p) = check("RUN echo\nFROM x\n");
        assert_eq!(
            (p[0].rule, p[0].line, p[0].error),
            ("NoBuildStage", 1, true)
        );
        let (_, p) = check("# only a comment\n");
        assert!(p.iter().any(|p| p.rule == "NoBuildStage"));
    }
}
