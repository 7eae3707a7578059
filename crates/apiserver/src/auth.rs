//! Who is asking: client certificates (CN user, O groups) and static bearer tokens; and the
//! seam for who may do what (`rbac::Chain` implements it).

use std::collections::HashMap;
use std::path::Path;

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// What a request does, as authorization sees it.
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    /// Non-resource requests (`/api`, `/openapi/v3`, …).
    pub path: &'a str,
}

/// Decides whether a user may do something.
pub trait Authorizer: Send + Sync {
    fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> bool;
}

/// Kubernetes' `AlwaysAllow` mode: every authenticated request is allowed (for tests and
/// for measuring what authorization costs).
pub struct AlwaysAllow;

impl Authorizer for AlwaysAllow {
    fn authorize(&self, _: &UserInfo, _: &Attributes) -> bool {
        true
    }
}

/// The user a client certificate names.
pub fn user_from_cert(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    groups.push("system:authenticated".into());
    Some(UserInfo {
        name,
        uid: String::new(),
        groups,
    })
}

/// Static bearer tokens, from a file in Kubernetes' `--token-auth-file` format:
/// `token,user,uid,"group1,group2"` per line.
#[derive(Default)]
pub struct Tokens(HashMap<String, UserInfo>);

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("read {0}")]
    Read(String, #[source] std::io::Error),
    #[error("{file}:{line}: a token line needs at least token,user,uid")]
    Short { file: String, line: usize },
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TokenFileError::Read(path.display().to_string(), e))?;
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (head, groups) = match line.find('"') {
                Some(q) => (&line[..q], line[q..].trim_matches('"')),
                None => (line, ""),
            };
            let f: Vec<&str> = head.split(',').map(str::trim).collect();
            if f.len() < 3 || f[0].is_empty() || f[1].is_empty() {
                return Err(TokenFileError::Short {
                    file: path.display().to_string(),
                    line: i + 1,
                });
            }
            let mut gs: Vec<String> = groups
                .split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(String::from)
                .collect();
            if groups.is_empty() && f.len() > 3 {
                gs.extend(
                    f[3..]
                        .iter()
                        .filter(|g| !g.is_empty())
                        .map(|g| g.to_string()),
                );
            }
            gs.push("system:authenticated".into());
            map.insert(
                f[0].to_string(),
                UserInfo {
                    name: f[1].into(),
                    uid: f[2].into(),
                    groups: gs,
                },
            );
        }
        Ok(Tokens(map))
    }
    pub fn lookup(&self, token: &str) -> Option<UserInfo> {
        self.0.get(token).cloned()
    }
}
