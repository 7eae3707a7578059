//! Authentication and authorization, as the Docker token authentication flow has it:
//! htpasswd (bcrypt) users checked with Basic auth, or bearer tokens the registry issues
//! itself at `/token` (HS256 JSON Web Tokens with `repository:<name>:<actions>` grants and an
//! expiry); permissions per user and repository pattern from a small JSON file.

use std::collections::BTreeMap;
use std::path::Path;

use httpwire::Head;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::error::RegError;

/// What a request does to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Pull,
    Push,
    Delete,
}

impl Access {
    pub fn name(self) -> &'static str {
        match self {
            Access::Pull => "pull",
            Access::Push => "push",
            Access::Delete => "delete",
        }
    }
}

/// A permission: `user` (`*` anyone authenticated, empty the anonymous) may do `actions` on
/// the repositories `repository` matches (`*` within a component, a trailing `/*` or `*`
/// for everything under).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub user: String,
    pub repository: String,
    pub actions: Vec<String>,
}

/// The permissions file: `{"access": [rule, …]}`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessFile {
    access: Vec<Rule>,
}

/// Someone a [`Gate`] authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub groups: Vec<String>,
}

/// Who may do what, decided outside the registry: `berth server` answers with the
/// cluster's identities (client certificates of its CA, its tokens) and its RBAC.
pub trait Gate: Send + Sync {
    /// Who a request is, from its TLS client certificate (DER, verified against the
    /// gate's CA by the TLS layer) or its `Authorization` header (`Basic` with a token as
    /// the password, or `Bearer`); `Ok(None)` for a request with neither. `Err` says why
    /// the credentials were refused.
    fn authenticate(
        &self,
        client_certificate: Option<&[u8]>,
        authorization: Option<&str>,
    ) -> Result<Option<Principal>, String>;

    /// Whether `who` may do `access` on `repository` (`*` for the catalog).
    fn allowed(&self, who: &Principal, repository: &str, access: Access) -> bool;
}

/// How clients prove who they are.
pub enum Mode {
    /// `Authorization: Basic` on every request.
    Basic,
    /// Decided by a [`Gate`] (the cluster's identities and authorization).
    Gate(std::sync::Arc<dyn Gate>),
    /// Bearer tokens from `/token`.
    Token {
        /// The `service` tokens are issued for (their audience).
        service: String,
        /// The HMAC key (kept under the registry's root so tokens outlive a restart).
        key: Vec<u8>,
        /// Seconds a token is valid.
        ttl: u64,
    },
}

/// The registry's authentication and authorization.
pub struct Auth {
    users: BTreeMap<String, String>,
    rules: Option<Vec<Rule>>,
    mode: Mode,
    /// `https` when served over TLS (for the token realm).
    pub scheme: &'static str,
}

/// Who a gate says a request is; refused credentials are 401 with the gate's reason.
fn gated(
    gate: &dyn Gate,
    header: Option<&str>,
    cert: Option<&[u8]>,
) -> Result<Option<Principal>, RegError> {
    gate.authenticate(cert, header)
        .map_err(|reason| RegError::unauthorized(&reason))
}

/// Who a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    User(String),
}

impl Auth {
    /// Users from an htpasswd file (bcrypt entries only), permissions from an optional JSON
    /// file (without one, every user may do everything and the anonymous nothing).
    pub fn new(htpasswd: &Path, access: Option<&Path>, mode: Mode) -> Result<Auth, String> {
        let text = std::fs::read_to_string(htpasswd)
            .map_err(|e| format!("{}: {e}", htpasswd.display()))?;
        let mut users = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (u, h) = line
                .split_once(':')
                .ok_or_else(|| format!("{}:{}: expected user:hash", htpasswd.display(), i + 1))?;
            if !h.starts_with("$2") {
                return Err(format!(
                    "{}:{}: only bcrypt hashes are accepted (htpasswd -B)",
                    htpasswd.display(),
                    i + 1
                ));
            }
            users.insert(u.to_string(), h.to_string());
        }
        let rules = match access {
            None => None,
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
                let f: AccessFile =
                    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
                for r in &f.access {
                    for a in &r.actions {
                        if !matches!(a.as_str(), "pull" | "push" | "delete" | "*") {
                            return Err(format!("{}: unknown action {a:?}", p.display()));
                        }
                    }
                }
                Some(f.access)
            }
        };
        Ok(Auth {
            users,
            rules,
            mode,
            scheme: "http",
        })
    }

    /// The `WWW-Authenticate` value of a 401.
    pub fn challenge(&self, host: &str, scope: Option<String>, insufficient: bool) -> String {
        match &self.mode {
            Mode::Basic | Mode::Gate(_) => "Basic realm=\"berth-registry\"".to_string(),
            Mode::Token { service, .. } => {
                let mut c = format!(
                    "Bearer realm=\"{}://{host}/token\",service=\"{service}\"",
                    self.scheme
                );
                if let Some(s) = scope {
                    c.push_str(&format!(",scope=\"{s}\""));
                }
                if insufficient {
                    c.push_str(",error=\"insufficient_scope\"");
                }
                c
            }
        }
    }

    /// An authorization in front of a gate (no users or permissions file of its own).
    pub fn gate(gate: std::sync::Arc<dyn Gate>) -> Auth {
        Auth {
            users: BTreeMap::new(),
            rules: None,
            mode: Mode::Gate(gate),
            scheme: "https",
        }
    }

    /// Basic credentials checked against the users.
    fn basic(&self, header: Option<&str>) -> Result<Identity, RegError> {
        let Some(h) = header else {
            return Ok(Identity::Anonymous);
        };
        let b64 = h
            .strip_prefix("Basic ")
            .ok_or_else(|| RegError::unauthorized("expected Basic credentials"))?;
        let raw = base64_decode(b64.trim(), false)
            .ok_or_else(|| RegError::unauthorized("malformed credentials"))?;
        let raw =
            String::from_utf8(raw).map_err(|_| RegError::unauthorized("malformed credentials"))?;
        let (u, p) = raw
            .split_once(':')
            .ok_or_else(|| RegError::unauthorized("malformed credentials"))?;
        let hash = self
            .users
            .get(u)
            .ok_or_else(|| RegError::unauthorized("invalid username or password"))?;
        if bcrypt::verify(p, hash).unwrap_or(false) {
            Ok(Identity::User(u.to_string()))
        } else {
            Err(RegError::unauthorized("invalid username or password"))
        }
    }

    /// The actions the rules give `who` on `repo`.
    fn allowed(&self, who: &Identity, repo: &str) -> Vec<&'static str> {
        let all = ["pull", "push", "delete"];
        let Some(rules) = &self.rules else {
            return match who {
                Identity::User(_) => all.to_vec(),
                Identity::Anonymous => Vec::new(),
            };
        };
        let mut out = Vec::new();
        for r in rules {
            let user_ok = match who {
                Identity::Anonymous => r.user.is_empty(),
                Identity::User(u) => r.user == "*" || r.user == *u,
            };
            if !user_ok || !pattern_matches(&r.repository, repo) {
                continue;
            }
            for a in all {
                if r.actions.iter().any(|x| x == a || x == "*") && !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    }

    /// `/v2/`: any valid credentials (or token).
    pub fn authenticate(
        &self,
        header: Option<&str>,
        cert: Option<&[u8]>,
    ) -> Result<Identity, RegError> {
        let who = match &self.mode {
            Mode::Basic => self.basic(header)?,
            Mode::Token { .. } => self.verify_token(header)?.0,
            Mode::Gate(g) => {
                return match gated(g.as_ref(), header, cert)? {
                    Some(p) => Ok(Identity::User(p.name)),
                    None => Err(RegError::unauthorized("authentication required")),
                }
            }
        };
        // Anonymous without anything: asked to authenticate. A valid token, even an
        // anonymous one, is enough to know the API.
        let token = matches!(self.mode, Mode::Token { .. }) && header.is_some();
        if who == Identity::Anonymous && !token {
            return Err(RegError::unauthorized("authentication required"));
        }
        Ok(who)
    }

    /// A request doing `access` to `repo`.
    pub fn authorize(
        &self,
        header: Option<&str>,
        cert: Option<&[u8]>,
        repo: &str,
        access: Access,
    ) -> Result<(), RegError> {
        match &self.mode {
            Mode::Gate(g) => match gated(g.as_ref(), header, cert)? {
                None => Err(RegError::unauthorized("authentication required")),
                Some(p) if g.allowed(&p, repo, access) => Ok(()),
                Some(p) => Err(RegError::denied(format!(
                    "{} may not {} {repo}",
                    p.name,
                    access.name()
                ))),
            },
            Mode::Basic => {
                let who = self.basic(header)?;
                if self.allowed(&who, repo).contains(&access.name()) {
                    Ok(())
                } else if who == Identity::Anonymous {
                    Err(RegError::unauthorized("authentication required"))
                } else {
                    Err(RegError::denied(format!(
                        "{} on {repo} is not allowed",
                        access.name()
                    )))
                }
            }
            Mode::Token { .. } => {
                let (who, grants) = self.verify_token(header)?;
                let ok = grants.iter().any(|g| {
                    g["type"] == "repository"
                        && g["name"] == repo
                        && g["actions"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x == access.name()))
                });
                if ok {
                    Ok(())
                } else if who == Identity::Anonymous && header.is_none() {
                    Err(RegError::unauthorized("authentication required"))
                } else if who != Identity::Anonymous
                    && !self.allowed(&who, repo).contains(&access.name())
                {
                    // No token could grant it: the permissions deny this user.
                    Err(RegError::denied(format!(
                        "{} on {repo} is not allowed",
                        access.name()
                    )))
                } else {
                    // A token without the scope: 401, so the client asks for one that has it
                    // (the token endpoint grants no more than the permissions allow).
                    Err(RegError::unauthorized(format!(
                        "the token does not grant {} on {repo}",
                        access.name()
                    )))
                }
            }
        }
    }

    /// `_catalog`: any authenticated user.
    pub fn authorize_catalog(
        &self,
        header: Option<&str>,
        cert: Option<&[u8]>,
    ) -> Result<(), RegError> {
        match &self.mode {
            Mode::Basic => self.authenticate(header, cert).map(|_| ()),
            Mode::Gate(_) => self.authorize(header, cert, "*", Access::Pull),
            Mode::Token { .. } => {
                let (_, grants) = self.verify_token(header)?;
                if grants
                    .iter()
                    .any(|g| g["type"] == "registry" && g["name"] == "catalog")
                {
                    Ok(())
                } else {
                    Err(RegError::unauthorized(
                        "the token does not grant the catalog",
                    ))
                }
            }
        }
    }

    /// `/token?service=…&scope=…`: a token granting what the caller may of what it asks.
    pub fn issue(&self, head: &Head) -> Result<Value, RegError> {
        let Mode::Token { service, key, ttl } = &self.mode else {
            return Err(RegError::not_found());
        };
        if let Some(s) = head.q("service") {
            if s != service {
                return Err(RegError::bad_request(format!("unknown service {s:?}")));
            }
        }
        let who = self.basic(head.header("authorization"))?;
        let mut grants = Vec::new();
        for scope in head.query.get("scope").into_iter().flatten() {
            for one in scope.split(' ') {
                let parts: Vec<&str> = one.splitn(3, ':').collect();
                let [kind, name, actions] = parts[..] else {
                    return Err(RegError::bad_request(format!("invalid scope {one:?}")));
                };
                match kind {
                    "repository" => {
                        if crate::names::validate(name).is_err() {
                            return Err(RegError::bad_request(format!("invalid scope {one:?}")));
                        }
                        let allowed = self.allowed(&who, name);
                        let want: Vec<&str> = actions
                            .split(',')
                            .flat_map(|a| {
                                if a == "*" {
                                    vec!["pull", "push", "delete"]
                                } else {
                                    vec![a]
                                }
                            })
                            .filter(|a| allowed.contains(a))
                            .collect();
                        grants.push(json!({"type": "repository", "name": name, "actions": want}));
                    }
                    "registry" if name == "catalog" && who != Identity::Anonymous => {
                        grants
                            .push(json!({"type": "registry", "name": "catalog", "actions": ["*"]}));
                    }
                    _ => {}
                }
            }
        }
        let now = timefmt::now_nanos() / 1_000_000_000;
        let sub = match &who {
            Identity::User(u) => u.clone(),
            Identity::Anonymous => String::new(),
        };
        let claims = json!({
            "iss": service,
            "sub": sub,
            "aud": service,
            "iat": now,
            "nbf": now - 10,
            "exp": now + *ttl as i128,
            "jti": crate::storage::random_hex(12),
            "access": grants,
        });
        let token = sign(key, &claims);
        Ok(json!({
            "token": token,
            "access_token": token,
            "expires_in": ttl,
            "issued_at": timefmt::now(),
        }))
    }

    /// A bearer token's identity and grants (none for no header).
    fn verify_token(&self, header: Option<&str>) -> Result<(Identity, Vec<Value>), RegError> {
        let Mode::Token { service, key, .. } = &self.mode else {
            return Err(RegError::unauthorized("no tokens here"));
        };
        let Some(h) = header else {
            return Ok((Identity::Anonymous, Vec::new()));
        };
        let token = h
            .strip_prefix("Bearer ")
            .ok_or_else(|| RegError::unauthorized("expected a bearer token"))?
            .trim();
        let claims = verify(key, token).ok_or_else(|| RegError::unauthorized("invalid token"))?;
        let now = timefmt::now_nanos() / 1_000_000_000;
        let exp = claims["exp"].as_i64().unwrap_or(0) as i128;
        let nbf = claims["nbf"].as_i64().unwrap_or(0) as i128;
        if now >= exp || now < nbf {
            return Err(RegError::unauthorized("the token has expired"));
        }
        if claims["aud"].as_str() != Some(service) {
            return Err(RegError::unauthorized("the token is for another service"));
        }
        let who = match claims["sub"].as_str() {
            Some(s) if !s.is_empty() => Identity::User(s.to_string()),
            _ => Identity::Anonymous,
        };
        Ok((
            who,
            claims["access"].as_array().cloned().unwrap_or_default(),
        ))
    }
}

/// `team/*` matches `team/a` and `team/a/b`; `*` matches everything; otherwise equal, with
/// `*` matching within one component.
fn pattern_matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" || pattern == name {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix("/*") {
        if name.starts_with(&format!("{prefix}/")) {
            return true;
        }
    }
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && s[0] != b'/' && go(p, &s[1..])),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// An HS256 JSON Web Token of `claims`.
pub fn sign(key: &[u8], claims: &Value) -> String {
    let header = base64_encode(br#"{"alg":"HS256","typ":"JWT"}"#, true);
    let body = base64_encode(claims.to_string().as_bytes(), true);
    let signed = format!("{header}.{body}");
    let sig = base64_encode(&hmac(key, signed.as_bytes()), true);
    format!("{signed}.{sig}")
}

/// The claims of a token signed with `key`; `None` for anything else.
pub fn verify(key: &[u8], token: &str) -> Option<Value> {
    let (signed, sig) = token.rsplit_once('.')?;
    let (header, body) = signed.split_once('.')?;
    let header: Value = serde_json::from_slice(&base64_decode(header, true)?).ok()?;
    if header["alg"] != "HS256" {
        return None;
    }
    let want = hmac(key, signed.as_bytes());
    let got = base64_decode(sig, true)?;
    // Constant time.
    if got.len() != want.len() || got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
        return None;
    }
    serde_json::from_slice(&base64_decode(body, true)?).ok()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 (standard with padding, or URL-safe without).
pub fn base64_encode(data: &[u8], url: bool) -> String {
    let table = if url { B64URL } else { B64 };
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(table[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else if !url {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes base64 (either alphabet; padding optional).
pub fn base64_decode(s: &str, url: bool) -> Option<Vec<u8>> {
    let table = if url { B64URL } else { B64 };
    let s = s.trim_end_matches('=');
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = table.iter().position(|&t| t == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The token key under `root`: made once, kept.
pub fn token_key(root: &Path) -> std::io::Result<Vec<u8>> {
    let p = root.join("token.key");
    match std::fs::read(&p) {
        Ok(k) if k.len() >= 32 => Ok(k),
        _ => {
            let hex = crate::storage::random_hex(32);
            let key = hex.into_bytes();
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&p)?;
            std::io::Write::write_all(&mut f, &key)?;
            f.sync_all()?;
            Ok(key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gate decides: a certificate or a token it knows is someone, what it allows goes,
    /// the anonymous are asked to authenticate and the known refused with 403.
    #[test]
    fn gates_authenticate_and_authorize() {
        struct G;
        impl Gate for G {
            fn authenticate(
                &self,
                cert: Option<&[u8]>,
                authorization: Option<&str>,
            ) -> Result<Option<Principal>, String> {
                let who = |n: &str| {
                    Some(Principal {
                        name: n.into(),
                        groups: vec![],
                    })
                };
                match (cert, authorization) {
                    (Some(b"node"), _) => Ok(who("node")),
                    (_, Some("Bearer good")) => Ok(who("alice")),
                    (_, Some(_)) => Err("the token is not valid".into()),
                    (None, None) => Ok(None),
                    (Some(_), None) => Ok(None),
                }
            }
            fn allowed(&self, who: &Principal, repo: &str, access: Access) -> bool {
                who.name == "alice" || (access == Access::Pull && repo != "*")
            }
        }
        let a = Auth::gate(std::sync::Arc::new(G));
        let node = Some(&b"node"[..]);
        assert!(a.authorize(None, node, "app", Access::Pull).is_ok());
        assert_eq!(
            a.authorize(None, node, "app", Access::Push)
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(a.authorize_catalog(None, node).unwrap_err().status, 403);
        assert!(a
            .authorize(Some("Bearer good"), None, "app", Access::Push)
            .is_ok());
        assert!(a.authorize_catalog(Some("Bearer good"), None).is_ok());
        let bad = a.authorize(Some("Bearer bad"), None, "app", Access::Pull);
        assert_eq!(bad.as_ref().unwrap_err().status, 401);
        assert_eq!(
            a.authorize(None, None, "app", Access::Pull)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(a.authenticate(None, None).unwrap_err().status, 401);
        assert_eq!(
            a.authenticate(None, node).unwrap(),
            Identity::User("node".into())
        );
        assert!(a.challenge("h", None, false).starts_with("Basic "));
    }

    #[test]
    fn base64_round_trips() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            for url in [false, true] {
                assert_eq!(
                    base64_decode(&base64_encode(s.as_bytes(), url), url).unwrap(),
                    s.as_bytes()
                );
            }
        }
        assert_eq!(base64_encode(b"foobar", false), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo", false), "Zm8=");
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn tokens_verify_only_with_their_key() {
        let t = sign(b"k1", &json!({"sub": "a"}));
        assert_eq!(verify(b"k1", &t).unwrap()["sub"], "a");
        assert!(verify(b"k2", &t).is_none());
        let mut forged = t.clone();
        forged.replace_range(t.len() - 2.., "AA");
        assert!(verify(b"k1", &forged).is_none());
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "a/b"));
        assert!(pattern_matches("team/*", "team/a/b"));
        assert!(!pattern_matches("team/*", "other/a"));
        assert!(pattern_matches("lib*", "library"));
        assert!(!pattern_matches("lib*", "lib/x"));
    }
}
