//! berth's builder, starting with the language: the Dockerfile parser (`dockerfile`), the
//! variable substitution Docker applies to instructions (`shell`), the lint rules of
//! `berth build --check` (`lint`), `.dockerignore` (`ignore`), and the build context with the
//! content digests the cache keys COPY on (`context`).

#![forbid(unsafe_code)]

pub mod context;
pub mod dockerfile;
pub mod ignore;
pub mod lint;
pub mod shell;
