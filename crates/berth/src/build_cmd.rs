//! `berth build`: so far its `--check` (parse and lint the Dockerfile, no build).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Parse and lint the Dockerfile only, reporting every problem (building images is not in
    /// this version yet, so the flag is required).
    #[arg(long, required = true)]
    check: bool,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// The build context.
    context: PathBuf,
}

/// Prints `file:line:column: error|warning: message (Rule)` for each problem; exit status 1
/// when there is any, as `docker build --check`.
pub fn run(a: &BuildArgs) -> Result<i32> {
    let _ = a.check;
    let file = a
        .file
        .clone()
        .unwrap_or_else(|| a.context.join("Dockerfile"));
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let (_, problems) = build::lint::check(&text);
    for p in &problems {
        println!(
            "{}:{}:{}: {}: {} ({})",
            file.display(),
            p.line,
            p.column,
            if p.error { "error" } else { "warning" },
            p.message,
            p.rule
        );
    }
    if problems.is_empty() {
        println!("Check complete, no warnings found.");
        Ok(0)
    } else {
        let errors = problems.iter().filter(|p| p.error).count();
        println!(
            "Check complete, {} error(s) and {} warning(s) have been found!",
            errors,
            problems.len() - errors
        );
        Ok(1)
    }
}
