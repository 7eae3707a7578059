//! berth's builder, starting with the language: the Dockerfile parser (`dockerfile`), the
//! variable substitution Docker applies to instructions (`shell`), the lint rules of
//! `berth build --check` (`lint`), and `.dockerignore` (`ignore`).

#![forbid(unsafe_code)]

pub mod dockerfile;
pub mod ignore;
pub mod lint;
pub mod shell;
