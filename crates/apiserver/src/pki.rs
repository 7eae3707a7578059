//! The cluster's certificates: the CA, the API server's serving certificate, the admin
//! client certificate and kubeconfig, and the join token — made on first start, reused after.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use ring::rand::SecureRandom;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate {what}")]
    Cert {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{path} is not a certificate berth can read")]
    Unreadable { path: PathBuf },
    #[error("the system random source failed")]
    Random,
}

/// Everything the server needs from its PKI, in PEM.
#[derive(Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    /// The join token for nodes: `K10<sha256 of the CA certificate>::server:<secret>`.
    pub token: String,
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            action: "read",
            path: path.into(),
            source,
        }),
    }
}

/// Writes a file crash-safely (temp + fsync + rename) with the given mode.
pub fn write_secret(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |action, source| PkiError::Io {
        action,
        path: path.into(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| io("create the directory of", e))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io("create", e))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| io("chmod", e))?;
    f.write_all(data).map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("sync", e))?;
    fs::rename(&tmp, path).map_err(|e| io("rename into place", e))?;
    Ok(())
}

fn now_offset(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

pub(crate) fn leaf_params(
    cn: &str,
    orgs: &[&str],
    sans: &[String],
    server: bool,
) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|source| PkiError::Cert {
        what: "parameters",
        source,
    })?;
    p.distinguished_name.push(DnType::CommonName, cn);
    for o in orgs {
        p.distinguished_name.push(DnType::OrganizationName, *o);
    }
    for s in sans {
        let san = match s.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(s.clone().try_into().map_err(|source| PkiError::Cert {
                what: "SAN",
                source,
            })?),
        };
        p.subject_alt_names.push(san);
    }
    p.not_before = now_offset(-1);
    p.not_after = now_offset(365);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    Ok(p)
}

fn random_hex(n: usize) -> Result<String, PkiError> {
    let mut buf = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| PkiError::Random)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The SHA-256 of the CA certificate's DER, as hex (the pin in join tokens).
pub fn ca_hash(ca_pem: &str) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).ok()?;
    let d = ring::digest::digest(&ring::digest::SHA256, &der);
    Some(d.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// The SANs a serving certificate carries: what it must always carry plus the user's.
pub fn serving_sans(extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "localhost",
        "127.0.0.1",
        "::1",
        "10.43.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Ok(h) = fs::read_to_string("/proc/sys/kernel/hostname") {
        sans.push(h.trim().to_string());
    }
    for s in extra {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    sans
}

/// The cluster CA under `dir` (`ca.crt`, `ca.key`), made when missing; returns both PEMs.
pub fn ensure_ca(dir: &Path) -> Result<(String, String), PkiError> {
    let p = |n: &str| dir.join(n);
    let cert_err = |what| move |source| PkiError::Cert { what, source };
    let found = match (read(&p("ca.crt"))?, read(&p("ca.key"))?) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let key = KeyPair::generate().map_err(cert_err("key"))?;
            let mut params =
                CertificateParams::new(Vec::<String>::new()).map_err(cert_err("parameters"))?;
            params.distinguished_name.push(
                DnType::CommonName,
                format!(
                    "berth-server-ca@{}",
                    time::OffsetDateTime::now_utc().unix_timestamp()
                ),
            );
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_before = now_offset(-1);
            params.not_after = now_offset(3650);
            let cert = params.self_signed(&key).map_err(cert_err("CA"))?;
            write_secret(&p("ca.key"), key.serialize_pem().as_bytes(), 0o600)?;
            write_secret(&p("ca.crt"), cert.pem().as_bytes(), 0o644)?;
            (cert.pem(), key.serialize_pem())
        }
    };
    Ok(found)
}

/// Issues a certificate of the cluster CA under `dir` for `cn` with `sans`, good for both
/// serving and client authentication (what etcd's members use towards each other), and
/// writes it as `<name>.crt` and `<name>.key` there.
pub fn issue_peer(dir: &Path, name: &str, cn: &str, sans: &[String]) -> Result<(), PkiError> {
    let cert_err = |what| move |source| PkiError::Cert { what, source };
    let (ca_cert_pem, ca_key_pem) = ensure_ca(dir)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|_| PkiError::Unreadable {
        path: dir.join("ca.key"),
    })?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_cert_pem, &ca_key).map_err(|_| PkiError::Unreadable {
            path: dir.join("ca.crt"),
        })?;
    let mut params = leaf_params(cn, &[], sans, true)?;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().map_err(cert_err("key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(cert_err("signing"))?;
    write_secret(
        &dir.join(format!("{name}.key")),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_secret(
        &dir.join(format!("{name}.crt")),
        cert.pem().as_bytes(),
        0o644,
    )
}

impl Pki {
    /// Loads the PKI under `dir`, creating what is missing. The serving certificate is made
    /// again when the SANs asked for are not all in it.
    /// `secret` is the join token's secret when the cluster's is given (`--token`).
    pub fn load_or_create(
        dir: &Path,
        sans: &[String],
        secret: Option<&str>,
    ) -> Result<Pki, PkiError> {
        let p = |n: &str| dir.join(n);
        let cert_err = |what| move |source| PkiError::Cert { what, source };
        let (ca_cert_pem, ca_key_pem) = ensure_ca(dir)?;
        let ca_key = KeyPair::from_pem(&ca_key_pem)
            .map_err(|_| PkiError::Unreadable { path: p("ca.key") })?;
        let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, &ca_key)
            .map_err(|_| PkiError::Unreadable { path: p("ca.crt") })?;
        let sans_file = p("serving.sans");
        let wanted = sans.join("\n");
        let issue = |name: &str, params: CertificateParams| -> Result<(String, String), PkiError> {
            let key = KeyPair::generate().map_err(cert_err("key"))?;
            let cert = params
                .signed_by(&key, &issuer)
                .map_err(cert_err("signing"))?;
            write_secret(
                &p(&format!("{name}.key")),
                key.serialize_pem().as_bytes(),
                0o600,
            )?;
            write_secret(&p(&format!("{name}.crt")), cert.pem().as_bytes(), 0o644)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (serving_cert_pem, serving_key_pem) = match (
            read(&p("serving.crt"))?,
            read(&p("serving.key"))?,
            read(&sans_file)?,
        ) {
            (Some(c), Some(k), Some(s)) if s == wanted => (c, k),
            _ => {
                let r = issue("serving", leaf_params("kube-apiserver", &[], sans, true)?)?;
                write_secret(&sans_file, wanted.as_bytes(), 0o644)?;
                r
            }
        };
        let (admin_cert_pem, admin_key_pem) = match (read(&p("admin.crt"))?, read(&p("admin.key"))?)
        {
            (Some(c), Some(k)) => (c, k),
            _ => issue(
                "admin",
                leaf_params("system:admin", &["system:masters"], &[], false)?,
            )?,
        };
        let token_path = p("token");
        let token = match read(&token_path)? {
            Some(t) => t.trim().to_string(),
            None => {
                let hash =
                    ca_hash(&ca_cert_pem).ok_or(PkiError::Unreadable { path: p("ca.crt") })?;
                let s = match secret {
                    Some(s) => s.to_string(),
                    None => random_hex(16)?,
                };
                let t = format!("K10{hash}::server:{s}");
                write_secret(&token_path, format!("{t}\n").as_bytes(), 0o600)?;
                t
            }
        };
        Ok(Pki {
            dir: dir.into(),
            ca_cert_pem,
            ca_key_pem,
            serving_cert_pem,
            serving_key_pem,
            admin_cert_pem,
            admin_key_pem,
            token,
        })
    }

    /// The secret part of the join token (after `::server:`).
    pub fn join_secret(&self) -> &str {
        self.token
            .split_once("::server:")
            .map_or(self.token.as_str(), |(_, s)| s)
    }

    /// Signs the public key of a PEM certificate signing request as a leaf of the cluster
    /// CA. The subject, SANs and usages are the CA's choice (`cn`, `orgs`, `sans`,
    /// `server`), never the request's: only its key is taken.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        cn: &str,
        orgs: &[&str],
        sans: &[String],
        server: bool,
    ) -> Result<String, PkiError> {
        self.sign_csr_for(
            csr_pem,
            cn,
            orgs,
            sans,
            server,
            std::time::Duration::from_secs(365 * 86400),
        )
    }

    /// As [`Pki::sign_csr`], valid for `valid` from now.
    pub fn sign_csr_for(
        &self,
        csr_pem: &str,
        cn: &str,
        orgs: &[&str],
        sans: &[String],
        server: bool,
        valid: std::time::Duration,
    ) -> Result<String, PkiError> {
        let cert_err = |what| move |source| PkiError::Cert { what, source };
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(cert_err("certificate signing request"))?;
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).map_err(|_| PkiError::Unreadable {
            path: self.dir.join("ca.key"),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_cert_pem, &ca_key).map_err(|_| {
            PkiError::Unreadable {
                path: self.dir.join("ca.crt"),
            }
        })?;
        let mut params = leaf_params(cn, orgs, sans, server)?;
        let secs = valid.as_secs().min(10 * 365 * 86400) as i64;
        let now = time::OffsetDateTime::now_utc();
        // A minute's allowance for clocks behind ours, or less for short-lived ones.
        params.not_before = now - time::Duration::seconds(secs.clamp(1, 60));
        params.not_after = now + time::Duration::seconds(secs);
        let cert = params
            .signed_by(&csr.public_key, &issuer)
            .map_err(cert_err("signing"))?;
        Ok(cert.pem())
    }

    /// A kubeconfig for a new user of the cluster: a client certificate of the cluster CA
    /// (CN `user`, O each of `groups`), valid for a year, with a key made here.
    pub fn user_kubeconfig(
        ca_dir: &Path,
        server_url: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<String, PkiError> {
        let cert_err = |what| move |source| PkiError::Cert { what, source };
        let p = |n: &str| ca_dir.join(n);
        let (Some(ca_cert_pem), Some(ca_key_pem)) = (read(&p("ca.crt"))?, read(&p("ca.key"))?)
        else {
            return Err(PkiError::Unreadable { path: p("ca.key") });
        };
        let ca_key = KeyPair::from_pem(&ca_key_pem)
            .map_err(|_| PkiError::Unreadable { path: p("ca.key") })?;
        let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, &ca_key)
            .map_err(|_| PkiError::Unreadable { path: p("ca.crt") })?;
        let key = KeyPair::generate().map_err(cert_err("key"))?;
        let cert = leaf_params(user, groups, &[], false)?
            .signed_by(&key, &issuer)
            .map_err(cert_err("signing"))?;
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        Ok(format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {server_url}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: {user}\n  name: {user}\ncurrent-context: {user}\npreferences: {{}}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b(&ca_cert_pem),
            b(&cert.pem()),
            b(&key.serialize_pem())
        ))
    }

    /// The admin kubeconfig for a server at `server_url`.
    pub fn admin_kubeconfig(&self, server_url: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b(&self.ca_cert_pem),
            server_url,
            b(&self.admin_cert_pem),
            b(&self.admin_key_pem)
        )
    }
}
