//! TLS for [`super::tokio_rt::TcpNet`]: when enabled (`--tls-ca`,
//! `--tls-cert`, `--tls-key`), every connection a process makes or accepts
//! is mutual TLS with the cluster's CA: each side shows a certificate signed
//! by that CA, or the handshake fails and nothing is read or written. One CA
//! per cluster; certificates name the cluster (`distkv`, see
//! [`SERVER_NAME`]) rather than a host, because peers dial IP addresses that
//! may change (a replaced machine keeps its certificate).
//!
//! Process-wide: the binaries call [`enable`] before their runtime starts;
//! the simulator never does (it has no sockets).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The name every member's certificate (servers, managers) carries, as a
/// DNS subject alternative name, and every dialer expects.
pub const SERVER_NAME: &str = "distkv";
/// The name a client certificate carries instead: it lets its holder read
/// and write, never act as a member (see [`is_member`]).
pub const CLIENT_NAME: &str = "client.distkv";

/// Whether a peer's certificate (already checked against the CA in the
/// handshake) is a member's: it names [`SERVER_NAME`]. A connection from
/// a client certificate is only let send client requests
/// (`wire::client_may_send`) and cannot claim a server's address; a dialer
/// checks the name anyway, so a client certificate cannot answer as a
/// server or manager either.
pub fn is_member(cert: &CertificateDer<'_>) -> bool {
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(cert) else {
        return false;
    };
    let name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
    rustls::client::verify_server_name(&parsed, &name).is_ok()
}

/// Both halves of TLS for this process.
pub struct Tls {
    /// The dialing side's configuration (for a blocking rustls stream too).
    pub client_config: Arc<rustls::ClientConfig>,
    pub connector: tokio_rustls::TlsConnector,
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub server_name: ServerName<'static>,
}

static TLS: OnceLock<Arc<Tls>> = OnceLock::new();

/// Accepts a TLS connection (the handshake, within `within`): the stream,
/// or why not, for the caller's log.
pub async fn accept(
    tls: &Tls,
    stream: tokio::net::TcpStream,
    within: std::time::Duration,
) -> Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, String> {
    match tokio::time::timeout(within, tls.acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
        Err(_) => Err(format!("no TLS handshake within {within:?}")),
    }
}

/// TLS for this process, if [`enable`] was called.
pub fn get() -> Option<Arc<Tls>> {
    TLS.get().cloned()
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the {what} {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the {what} {} holds no certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// Builds this process's TLS from PEM files: the cluster's CA
/// certificate(s), this process's certificate chain and its private key.
pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Tls, String> {
    // ring, not aws-lc-rs: it builds without cmake. (Deprecated in rustls
    // for lacking post-quantum key exchange; fine for a cluster-internal CA.)
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca, "CA certificate (--tls-ca)")? {
        roots
            .add(c)
            .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
    }
    let roots = Arc::new(roots);
    let chain = certs(cert, "certificate (--tls-cert)")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "cannot read the private key (--tls-key) {}: {e}",
            key.display()
        )
    })?;
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    let client = Arc::new(client);
    Ok(Tls {
        client_config: client.clone(),
        connector: tokio_rustls::TlsConnector::from(client),
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        server_name: ServerName::try_from(SERVER_NAME).expect("a valid DNS name"),
    })
}

/// Turns TLS on for every connection of this process (once; before any).
pub fn enable(ca: &Path, cert: &Path, key: &Path) -> Result<(), String> {
    let tls = load(ca, cert, key)?;
    TLS.set(Arc::new(tls))
        .map_err(|_| "TLS is already enabled".to_string())
}

/// The PEM files of a new test CA and the certificates signed by it
/// (`admin gen-certs`): `ca.pem` (give it to every process), `ca.key`
/// (keep it to sign more), `node.pem`/`node.key` (servers and managers)
/// and `client.pem`/`client.key` (clients, benchmark, admin). Valid for
/// `days` days.
pub fn generate(dir: &Path, days: u32) -> Result<Vec<String>, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let err = |e: rcgen::Error| format!("cannot make a certificate: {e}");
    let now = time_now();
    let until = now + std::time::Duration::from_secs(u64::from(days) * 86_400);
    let validity = |p: &mut CertificateParams| {
        p.not_before = now.into();
        p.not_after = until.into();
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "distkv cluster CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca);
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut files = vec![
        ("ca.pem", ca_cert.pem()),
        ("ca.key", ca_key.serialize_pem()),
    ];
    for (name, cn, san) in [
        ("node", "distkv node", SERVER_NAME),
        ("client", "distkv client", CLIENT_NAME),
    ] {
        let mut p = CertificateParams::new(vec![san.to_string()]).map_err(err)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = if name == "node" {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut p);
        let key = KeyPair::generate().map_err(err)?;
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(err)?;
        files.push((
            if name == "node" {
                "node.pem"
            } else {
                "client.pem"
            },
            cert.pem(),
        ));
        files.push((
            if name == "node" {
                "node.key"
            } else {
                "client.key"
            },
            key.serialize_pem(),
        ));
    }
    let mut written = Vec::new();
    for (file, text) in files {
        let path = dir.join(file);
        // Private keys are readable by their owner only, from the start.
        let mode = if file.ends_with(".key") { 0o600 } else { 0o644 };
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&path)?;
            // An existing file keeps its mode on open: set it.
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            f.write_all(text.as_bytes())
        };
        write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path.display().to_string());
    }
    Ok(written)
}

fn time_now() -> std::time::SystemTime {
    // Not core logic: certificates are made by `admin`, outside any cluster.
    std::time::SystemTime::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_load_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path(), 30).unwrap();
        assert_eq!(files.len(), 6);
        let p = |f: &str| dir.path().join(f);
        load(&p("ca.pem"), &p("node.pem"), &p("node.key")).unwrap();
        load(&p("ca.pem"), &p("client.pem"), &p("client.key")).unwrap();
        let e = load(&p("ca.pem"), &p("node.pem"), &p("client.key"))
            .err()
            .expect("a key that is not the certificate's");
        assert!(e.contains("do not go together"), "{e}");
        let e = load(&p("nope.pem"), &p("node.pem"), &p("node.key"))
            .err()
            .unwrap();
        assert!(e.contains("--tls-ca") && e.contains("nope.pem"), "{e}");
        let e = load(&p("ca.key"), &p("node.pem"), &p("node.key"))
            .err()
            .unwrap();
        assert!(e.contains("no certificate"), "{e}");
        // Members' certificates name the cluster; clients' do not.
        let first = |f: &str| certs(&p(f), "test").unwrap().remove(0);
        assert!(is_member(&first("node.pem")));
        assert!(!is_member(&first("client.pem")));
        assert!(!is_member(&CertificateDer::from(vec![1, 2, 3])));
    }
}
