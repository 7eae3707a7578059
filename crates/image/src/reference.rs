//! Image references (`busybox`, `ghcr.io/org/app:1.2`, `name@sha256:…`), parsed and normalized
//! as Docker does (the grammar and rules of the distribution/reference Go package).

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// The registry that names without a domain belong to.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// Docker Hub's legacy name, normalized to [`DEFAULT_DOMAIN`].
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// The namespace of Docker Hub's official images (`busybox` is `library/busybox`).
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The tag a reference without tag or digest gets.
pub const DEFAULT_TAG: &str = "latest";
/// The longest repository name (domain and path) allowed.
pub const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Why a string is not an image reference. Messages follow Docker's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference format: repository name must have at least one component")]
    Empty,
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexIdentifier(String),
    #[error("invalid reference format: repository name ({name}) must be lowercase")]
    Uppercase { input: String, name: String },
    #[error(
        "invalid reference format: repository name ({name}) must not be more than \
         {NAME_TOTAL_LENGTH_MAX} characters"
    )]
    TooLong { input: String, name: String },
    #[error(
        "invalid tag format: {tag:?} in {input:?}: a tag is 1 to 128 letters, digits, '_', '.' \
         or '-', and does not start with '.' or '-'"
    )]
    Tag { input: String, tag: String },
    #[error("invalid reference format: {input:?}: {reason}")]
    Invalid { input: String, reason: String },
}

/// A normalized image reference: a domain, a path, and a tag and/or a digest (a parsed
/// reference that has neither gets the tag `latest`).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalizes `s`: `busybox` is `docker.io/library/busybox:latest`, `user/app`
    /// is `docker.io/user/app:latest`. The first path component is a domain when it contains
    /// `.` or `:`, is `localhost`, or has an uppercase letter (as Docker decides);
    /// `index.docker.io` becomes `docker.io`. `name@digest` gets no implicit tag.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ReferenceError::HexIdentifier(s.to_string()));
        }
        let invalid = |reason: String| ReferenceError::Invalid {
            input: s.to_string(),
            reason,
        };

        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (rest, Some(parse_digest(d).map_err(invalid)?)),
            None => (s, None),
        };
        // A tag follows the last ':' that comes after the last '/' (an earlier ':' is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(ReferenceError::Tag {
                    input: s.to_string(),
                    tag: tag.to_string(),
                });
            }
        }
        if name.is_empty() {
            return Err(invalid("the repository name is empty".to_string()));
        }

        let (domain, remote) = split_domain(name);
        if remote.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase {
                input: s.to_string(),
                name: remote.to_string(),
            });
        }
        check_domain(domain).map_err(invalid)?;
        let path = if domain_is_default(domain) && !remote.contains('/') {
            format!("{OFFICIAL_REPO_PREFIX}{remote}")
        } else {
            remote.to_string()
        };
        check_path(&path).map_err(invalid)?;
        let domain = if domain_is_default(domain) {
            DEFAULT_DOMAIN
        } else {
            domain
        };
        if domain.len() + 1 + path.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ReferenceError::TooLong {
                input: s.to_string(),
                name: format!("{domain}/{path}"),
            });
        }
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (tag, _) => tag.map(str::to_string),
        };
        Ok(Reference {
            domain: domain.to_string(),
            path,
            tag,
            digest,
        })
    }

    /// The registry: `docker.io`, `localhost:5000`, `[::1]:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path within the registry: `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `docker.io/library/busybox`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The repository as Docker shows it: `busybox`, `user/app`, `ghcr.io/org/app`.
    /// A Docker Hub path whose first component reads as a registry (`docker.io/a.b/c`) keeps
    /// its domain: `a.b/c` would name another registry (Docker prints that, and its own
    /// parse then sends a pull or push elsewhere).
    pub fn familiar_repository(&self) -> String {
        let first = self.path.split('/').next().unwrap_or("");
        let reads_as_domain =
            self.path.contains('/') && (first.contains(['.', ':']) || first == "localhost");
        if self.domain != DEFAULT_DOMAIN || reads_as_domain {
            return self.repository();
        }
        match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
            Some(rest) if !rest.contains('/') => rest.to_string(),
            _ => self.path.clone(),
        }
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The reference as Docker shows it: `busybox:latest`, `user/app@sha256:…`.
    pub fn familiar(&self) -> String {
        let mut s = self.familiar_repository();
        self.push_suffix(&mut s);
        s
    }

    /// The same repository with `tag` (a digest, if any, is kept, as Docker's `WithTag` does).
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        if !valid_tag(tag) {
            return Err(ReferenceError::Tag {
                input: self.to_string(),
                tag: tag.to_string(),
            });
        }
        Ok(Reference {
            tag: Some(tag.to_string()),
            ..self.clone()
        })
    }

    /// The same repository with digest `d` (a tag, if any, is kept, as Docker's `WithDigest`
    /// does).
    pub fn with_digest(&self, d: Digest) -> Reference {
        Reference {
            digest: Some(d),
            ..self.clone()
        }
    }

    fn push_suffix(&self, s: &mut String) {
        if let Some(tag) = &self.tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
    }
}

impl fmt::Display for Reference {
    /// The normalized full form: `docker.io/library/busybox:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.repository();
        self.push_suffix(&mut s);
        f.write_str(&s)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Reference, ReferenceError> {
        Reference::parse(s)
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Reference, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn domain_is_default(domain: &str) -> bool {
    domain == DEFAULT_DOMAIN || domain == LEGACY_DEFAULT_DOMAIN
}

/// Splits a name (no tag or digest) into its domain and the rest, as Docker's
/// `splitDockerDomain` does.
fn split_domain(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first == "localhost"
                || first.contains(['.', ':'])
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DEFAULT_DOMAIN, name),
    }
}

/// `[\w][\w.-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

fn parse_digest(d: &str) -> Result<Digest, String> {
    d.parse::<Digest>().map_err(|e| e.to_string())
}

/// A host (domain name, IPv4 address or `[IPv6]`) with an optional `:port`.
fn check_domain(domain: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid domain {domain:?}: {why}"));
    let (host, port) = if let Some(v6) = domain.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return bad("unclosed '['");
        };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return bad("an IPv6 address in brackets is hex digits and ':' only");
        }
        match after {
            "" => ("", None),
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return bad("only a :port may follow the IPv6 address"),
            },
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return bad("the port must be a number");
        }
    }
    if domain.starts_with('[') {
        return Ok(());
    }
    for label in host.split('.') {
        let bytes = label.as_bytes();
        let ok = !bytes.is_empty()
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return bad(
                "each dot-separated part is letters, digits and '-', not starting or ending \
                 with '-'",
            );
        }
    }
    Ok(())
}

/// Path components of lowercase letters and digits, separated inside a component by one `.`,
/// one or two `_`, or any number of `-`.
fn check_path(path: &str) -> Result<(), String> {
    for component in path.split('/') {
        if component.is_empty() {
            return Err(format!(
                "repository name {path:?} has an empty path component"
            ));
        }
        let bytes = component.as_bytes();
        if let Some(&b) = bytes
            .iter()
            .find(|&&b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)))
        {
            return Err(format!(
                "repository name component {component:?} contains {:?}: only lowercase letters, \
                 digits, '.', '_' and '-' are allowed",
                b as char
            ));
        }
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(&bytes[0]) || !alnum(&bytes[bytes.len() - 1]) {
            return Err(format!(
                "repository name component {component:?} must start and end with a lowercase \
                 letter or digit"
            ));
        }
        for sep in component.split(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            if !(sep.is_empty()
                || sep == "."
                || sep == "_"
                || sep == "__"
                || sep.bytes().all(|b| b == b'-'))
            {
                return Err(format!(
                    "repository name component {component:?} has the separator {sep:?}: use \
                     one '.', one or two '_', or '-'s"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c";
    const D2: &str = "sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa";

    /// input, full form, familiar form, domain, path, tag, digest.
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    );

    #[rustfmt::skip]
    const VALID: &[Case] = &[
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest", "docker.io", "library/busybox", Some("latest"), None),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36", "docker.io", "library/busybox", Some("1.36"), None),
        ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest", "docker.io", "library/busybox", Some("latest"), None),
        ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest", "docker.io", "library/busybox", Some("latest"), None),
        ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest", "busybox:latest", "docker.io", "library/busybox", Some("latest"), None),
        ("index.docker.io/library/debian", "docker.io/library/debian:latest", "debian:latest", "docker.io", "library/debian", Some("latest"), None),
        ("index.docker.io/debian", "docker.io/library/debian:latest", "debian:latest", "docker.io", "library/debian", Some("latest"), None),
        ("index.docker.io/docker/docker", "docker.io/docker/docker:latest", "docker/docker:latest", "docker.io", "docker/docker", Some("latest"), None),
        ("user/app", "docker.io/user/app:latest", "user/app:latest", "docker.io", "user/app", Some("latest"), None),
        ("docker.io/user/app", "docker.io/user/app:latest", "user/app:latest", "docker.io", "user/app", Some("latest"), None),
        ("library/foo/bar", "docker.io/library/foo/bar:latest", "library/foo/bar:latest", "docker.io", "library/foo/bar", Some("latest"), None),
        ("store/foo/bar", "docker.io/store/foo/bar:latest", "store/foo/bar:latest", "docker.io", "store/foo/bar", Some("latest"), None),
        ("other/library", "docker.io/other/library:latest", "other/library:latest", "docker.io", "other/library", Some("latest"), None),
        ("test_com/foo", "docker.io/test_com/foo:latest", "test_com/foo:latest", "docker.io", "test_com/foo", Some("latest"), None),
        ("ubuntu-12.04-base", "docker.io/library/ubuntu-12.04-base:latest", "ubuntu-12.04-base:latest", "docker.io", "library/ubuntu-12.04-base", Some("latest"), None),
        ("docker---rules/docker", "docker.io/docker---rules/docker:latest", "docker---rules/docker:latest", "docker.io", "docker---rules/docker", Some("latest"), None),
        ("dock__er/docker", "docker.io/dock__er/docker:latest", "dock__er/docker:latest", "docker.io", "dock__er/docker", Some("latest"), None),
        ("d/docker", "docker.io/d/docker:latest", "d/docker:latest", "docker.io", "d/docker", Some("latest"), None),
        ("localhost/app", "localhost/app:latest", "localhost/app:latest", "localhost", "app", Some("latest"), None),
        ("localhost:5000/app:1", "localhost:5000/app:1", "localhost:5000/app:1", "localhost:5000", "app", Some("1"), None),
        ("127.0.0.1:5000/x", "127.0.0.1:5000/x:latest", "127.0.0.1:5000/x:latest", "127.0.0.1:5000", "x", Some("latest"), None),
        ("127.0.0.1:8000/private/moonbase", "127.0.0.1:8000/private/moonbase:latest", "127.0.0.1:8000/private/moonbase:latest", "127.0.0.1:8000", "private/moonbase", Some("latest"), None),
        ("example.com/privatebase", "example.com/privatebase:latest", "example.com/privatebase:latest", "example.com", "privatebase", Some("latest"), None),
        ("test-com:8080/foo", "test-com:8080/foo:latest", "test-com:8080/foo:latest", "test-com:8080", "foo", Some("latest"), None),
        ("xn--n3h.com:18080/foo", "xn--n3h.com:18080/foo:latest", "xn--n3h.com:18080/foo:latest", "xn--n3h.com:18080", "foo", Some("latest"), None),
        ("ghcr.io/org/team/app:v1.2.3-rc.1", "ghcr.io/org/team/app:v1.2.3-rc.1", "ghcr.io/org/team/app:v1.2.3-rc.1", "ghcr.io", "org/team/app", Some("v1.2.3-rc.1"), None),
        ("[fc00::1]:5000/docker", "[fc00::1]:5000/docker:latest", "[fc00::1]:5000/docker:latest", "[fc00::1]:5000", "docker", Some("latest"), None),
        ("[fc00:1:2:3:4:5:6:7]:5000/library/debian", "[fc00:1:2:3:4:5:6:7]:5000/library/debian:latest", "[fc00:1:2:3:4:5:6:7]:5000/library/debian:latest", "[fc00:1:2:3:4:5:6:7]:5000", "library/debian", Some("latest"), None),
        // Docker takes an uppercase first component for a domain.
        ("Foo/bar", "Foo/bar:latest", "Foo/bar:latest", "Foo", "bar", Some("latest"), None),
        // Without a '/', "host:port" is a name and a tag.
        ("localhost:5000", "docker.io/library/localhost:5000", "localhost:5000", "docker.io", "library/localhost", Some("5000"), None),
        ("192.168.0.1", "docker.io/library/192.168.0.1:latest", "192.168.0.1:latest", "docker.io", "library/192.168.0.1", Some("latest"), None),
        ("192.168.0.1:80", "docker.io/library/192.168.0.1:80", "192.168.0.1:80", "docker.io", "library/192.168.0.1", Some("80"), None),
        ("thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", "docker.io/library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev:latest", "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev:latest", "docker.io", "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", Some("latest"), None),
        ("docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a", "docker.io/library/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a:latest", "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a:latest", "docker.io", "library/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a", Some("latest"), None),
        ("busybox:Latest_1", "docker.io/library/busybox:Latest_1", "busybox:Latest_1", "docker.io", "library/busybox", Some("Latest_1"), None),
    ];

    #[test]
    fn valid_references_normalize_like_docker() {
        for &(input, full, familiar, domain, path, tag, digest) in VALID {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), full, "{input}");
            assert_eq!(r.familiar(), familiar, "{input}");
            assert_eq!((r.domain(), r.path()), (domain, path), "{input}");
            assert_eq!(r.tag(), tag, "{input}");
            assert_eq!(
                r.digest().map(|d| d.to_string()),
                digest.map(str::to_string),
                "{input}"
            );
            assert_eq!(r.repository(), format!("{domain}/{path}"), "{input}");
            // The full and the familiar forms parse back to the same reference.
            assert_eq!(Reference::parse(full).unwrap(), r, "{input}");
            assert_eq!(Reference::parse(familiar).unwrap(), r, "{input}");
        }
    }

    #[test]
    fn digests_and_tags_together() {
        // name@digest keeps no implicit tag.
        let r = Reference::parse(&format!("redis@{D1}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/redis@{D1}"));
        assert_eq!(r.familiar(), format!("redis@{D1}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().to_string(), D1);

        // name:tag@digest keeps both.
        let r = Reference::parse(&format!("busybox:latest@{D2}")).unwrap();
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/busybox:latest@{D2}")
        );
        assert_eq!(r.familiar(), format!("busybox:latest@{D2}"));
        assert_eq!(r.tag(), Some("latest"));

        let r = Reference::parse(&format!("registry.example.com:8443/a/b/c@{D1}")).unwrap();
        assert_eq!(r.domain(), "registry.example.com:8443");
        assert_eq!(r.path(), "a/b/c");
        assert_eq!(r.familiar_repository(), "registry.example.com:8443/a/b/c");
        assert_eq!(
            r.to_string(),
            format!("registry.example.com:8443/a/b/c@{D1}")
        );

        let r = Reference::parse(&format!("localhost:5000/app:1@{D1}")).unwrap();
        assert_eq!(
            (r.domain(), r.path(), r.tag()),
            ("localhost:5000", "app", Some("1"))
        );

        let r = Reference::parse(&format!("dmcgowan/myapp@{D1}")).unwrap();
        assert_eq!(r.familiar(), format!("dmcgowan/myapp@{D1}"));
    }

    #[test]
    fn with_tag_and_with_digest() {
        let r = Reference::parse("busybox").unwrap();
        let t = r.with_tag("1.36").unwrap();
        assert_eq!(t.to_string(), "docker.io/library/busybox:1.36");
        let d: Digest = D1.parse().unwrap();
        let pinned = t.with_digest(d.clone());
        assert_eq!(
            pinned.to_string(),
            format!("docker.io/library/busybox:1.36@{D1}")
        );
        assert_eq!(pinned.with_tag("2").unwrap().digest(), Some(&d));
        let err = r.with_tag("-foo").unwrap_err();
        assert!(
            err.to_string().starts_with("invalid tag format: \"-foo\""),
            "{err}"
        );
        assert!(r.with_tag(&"a".repeat(129)).is_err());
        assert!(r.with_tag(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn invalid_references_are_rejected_with_docker_messages() {
        let long_tag = format!("busybox:{}", "a".repeat(129));
        let long_name = format!("{}/docker", "a".repeat(250));
        let short_digest = "busybox@sha256:abc".to_string();
        let upper_digest = format!("busybox@{}", D1.to_uppercase());
        let md5_digest = "busybox@md5:d41d8cd98f00b204e9800998ecf8427e".to_string();
        #[rustfmt::skip]
        let cases: &[(&str, &str)] = &[
            ("", "invalid reference format: repository name must have at least one component"),
            ("Busybox", "invalid reference format: repository name (Busybox) must be lowercase"),
            ("docker/Docker", "invalid reference format: repository name (docker/Docker) must be lowercase"),
            ("docker.io/docker/Docker:1", "invalid reference format: repository name (docker/Docker) must be lowercase"),
            (":tag", "invalid reference format: \":tag\": the repository name is empty"),
            ("@sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c", "the repository name is empty"),
            ("a//b", "invalid reference format: \"a//b\": repository name \"a//b\" has an empty path component"),
            ("docker///docker", "empty path component"),
            ("docker/", "empty path component"),
            ("docker.io/docker///docker", "empty path component"),
            ("-a", "invalid reference format: \"-a\": repository name component \"-a\" must start and end with a lowercase letter or digit"),
            ("-docker/docker", "must start and end"),
            ("docker-/docker", "must start and end"),
            ("-docker-/docker", "must start and end"),
            ("____/____", "must start and end"),
            ("_docker/_docker", "must start and end"),
            // With a '.', the first component is a domain (and not a valid one).
            ("dock..er/docker", "invalid domain \"dock..er\""),
            ("dock_.er/docker", "invalid domain \"dock_.er\""),
            ("dock-.er/docker", "invalid domain \"dock-.er\""),
            ("docker/dock..er", "has the separator \"..\""),
            ("docker/dock_.er", "has the separator \"_.\""),
            ("docker/dock-.er", "has the separator \"-.\""),
            ("dock___er/docker", "has the separator \"___\""),
            ("dock..er", "has the separator \"..\""),
            ("busy box", "contains ' '"),
            ("busybox:", "invalid tag format: \"\""),
            ("busybox:-1", "invalid tag format: \"-1\""),
            ("busybox:.1", "invalid tag format: \".1\""),
            ("busybox:a+b", "invalid tag format: \"a+b\""),
            (&long_tag, "invalid tag format"),
            (&long_name, "must not be more than 255 characters"),
            (&short_digest, "invalid digest \"sha256:abc\""),
            (&upper_digest, "invalid digest"),
            (&md5_digest, "invalid digest"),
            ("1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a", "invalid repository name (1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a), cannot specify 64-byte hexadecimal strings"),
            ("https://github.com/docker/docker", "invalid domain \"https:\": the port must be a number"),
            ("-docker.io/docker/docker", "invalid domain \"-docker.io\""),
            ("exa_mple.com/app", "invalid domain \"exa_mple.com\""),
            ("example..com/app", "invalid domain"),
            ("localhost:50a0/app", "the port must be a number"),
            // Without a '/', the last ':' starts a tag.
            ("[fc00::1]", "invalid tag format: \"1]\""),
            ("[fc00::1]:5000", "contains '['"),
            ("fc00::1:5000/debian", "the port must be a number"),
            ("[fe80::1%eth0]:5000/debian", "an IPv6 address in brackets"),
            ("[2001:db8:3:4::192.0.2.33]:5000/debian", "an IPv6 address in brackets"),
            ("[::1/app", "unclosed '['"),
        ];
        for &(input, want) in cases {
            let err = Reference::parse(input).map(|r| r.to_string()).unwrap_err();
            assert!(
                err.to_string().contains(want),
                "{input:?}: got {err}, want {want}"
            );
        }
        // The name length limit counts the normalized name.
        let max = "a".repeat(NAME_TOTAL_LENGTH_MAX - "docker.io/library/".len());
        assert!(Reference::parse(&max).is_ok());
        assert!(matches!(
            Reference::parse(&format!("{max}a")),
            Err(ReferenceError::TooLong { .. })
        ));
    }

    #[test]
    fn serde_as_string_and_from_str() {
        let r: Reference = "localhost:5000/app:1".parse().unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"localhost:5000/app:1\"");
        assert_eq!(serde_json::from_str::<Reference>(&json).unwrap(), r);
        let json = serde_json::to_string(&Reference::parse("busybox").unwrap()).unwrap();
        assert_eq!(json, "\"docker.io/library/busybox:latest\"");
        let err = serde_json::from_str::<Reference>("\"Busybox\"").unwrap_err();
        assert!(err.to_string().contains("must be lowercase"), "{err}");
        let mut set = std::collections::HashSet::new();
        set.insert(Reference::parse("busybox").unwrap());
        assert!(set.contains(&Reference::parse("docker.io/library/busybox:latest").unwrap()));
    }

    /// Found by fuzz_targets/reference.rs: `docker.io/a.b/c` was shown as `a.b/c`, which
    /// names the registry `a.b`.
    #[test]
    fn a_familiar_name_never_names_another_registry() {
        for (full, familiar) in [
            (
                "docker.io/libocker.io/library/busyb",
                "docker.io/libocker.io/library/busyb:latest",
            ),
            ("docker.io/localhost/app", "docker.io/localhost/app:latest"),
            ("docker.io/user/app", "user/app:latest"),
            ("docker.io/library/busybox", "busybox:latest"),
        ] {
            let r = Reference::parse(full).unwrap();
            assert_eq!(r.familiar(), familiar, "{full}");
            assert_eq!(Reference::parse(&r.familiar()).unwrap(), r, "{full}");
        }
    }

    mod props {
        use proptest::prelude::*;

        use super::super::*;

        /// References in Docker's grammar: an optional registry (with a dot, a port or
        /// `localhost`), path components with separators, an optional tag and digest.
        fn reference(
        ) -> impl Strategy<Value = (Option<String>, String, Option<String>, Option<String>)>
        {
            (
                prop::option::of(prop_oneof![
                    "[a-z0-9]{1,8}\\.[a-z]{2,5}(:[0-9]{1,5})?",
                    Just("localhost:5000".to_string()),
                    Just("localhost".to_string()),
                    // Docker Hub spelled out, whose familiar form drops it.
                    Just("docker.io".to_string()),
                ]),
                prop::collection::vec("[a-z0-9]{1,6}([._-][a-z0-9]{1,4})?", 1..4),
                prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
                prop::option::of("[0-9a-f]{64}"),
            )
                .prop_map(|(d, p, t, h)| (d, p.join("/"), t, h))
                // Without a registry, a first component that reads as one is one.
                .prop_filter(
                    "the first component would name a registry",
                    |(d, p, _, _)| {
                        let first = p.split('/').next().unwrap_or("");
                        d.is_some()
                            || !p.contains('/')
                            || !(first.contains('.') || first == "localhost")
                    },
                )
        }

        proptest! {
            #[test]
            fn references_round_trip((domain, path, tag, hex) in reference()) {
                let mut text = match &domain {
                    Some(d) => format!("{d}/{path}"),
                    None => path.clone(),
                };
                if let Some(t) = &tag {
                    text = format!("{text}:{t}");
                }
                if let Some(h) = &hex {
                    text = format!("{text}@sha256:{h}");
                }
                let r = Reference::parse(&text).unwrap();
                let want_domain = domain.clone().unwrap_or_else(|| "docker.io".into());
                prop_assert_eq!(r.domain(), want_domain.as_str());
                let hub = domain.is_none() || domain.as_deref() == Some("docker.io");
                let want_path = if hub && !path.contains('/') {
                    format!("library/{path}")
                } else {
                    path.clone()
                };
                prop_assert_eq!(r.path(), want_path.as_str());
                prop_assert_eq!(r.digest().map(|d| d.hex().to_string()), hex.clone());
                match (&tag, &hex) {
                    (Some(t), _) => prop_assert_eq!(r.tag(), Some(t.as_str())),
                    (None, Some(_)) => prop_assert_eq!(r.tag(), None),
                    (None, None) => prop_assert_eq!(r.tag(), Some("latest")),
                }
                prop_assert_eq!(&Reference::parse(&r.to_string()).unwrap(), &r);
                prop_assert_eq!(&Reference::parse(&r.familiar()).unwrap(), &r);
            }

            #[test]
            fn digests_round_trip_and_refuse_what_is_not_one(bytes in prop::array::uniform32(any::<u8>()), cut in 0usize..64) {
                let d = Digest::of(&bytes);
                prop_assert_eq!(d.to_string().parse::<Digest>().unwrap(), d.clone());
                let text = d.to_string();
                prop_assert!(text[..7 + cut].parse::<Digest>().is_err());
                prop_assert!(text.to_uppercase().parse::<Digest>().is_err());
            }

            #[test]
            fn any_text_parses_or_is_refused_without_panic(s in "\\PC{0,80}") {
                if let Ok(r) = Reference::parse(&s) {
                    prop_assert_eq!(&Reference::parse(&r.to_string()).unwrap(), &r);
                }
            }
        }
    }
}
