//! TLS for the public ports: a certificate and key reloaded when their files change,
//! and optional client certificates (mutual TLS) whose subject names an operator.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::TcpStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{domain::OperatorId, metrics};

/// The files TLS is configured from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM certificates of the CA that signs operators' client certificates; when set,
    /// a client may prove an operator by a certificate instead of an API key.
    pub client_ca: Option<PathBuf>,
    /// How often the certificate and key files are checked for a change.
    pub reload_every: Duration,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// A server's TLS: accepts connections, the certificate current at each handshake.
#[derive(Clone)]
pub struct Tls {
    grpc: tokio_rustls::TlsAcceptor,
    http: tokio_rustls::TlsAcceptor,
    client_auth: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the files and starts watching the certificate and key for changes, on
    /// `tasks`, until `stop`; a change that does not load is logged and the certificate
    /// in use kept.
    pub fn load(
        files: &TlsFiles,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = load_key(&provider, files)?;
        let resolver = Arc::new(Reloading(RwLock::new(Arc::new(key))));
        let verifier = match &files.client_ca {
            None => WebPkiClientVerifier::no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in certs(path, "--tls-client-ca-file")? {
                    roots.add(cert).map_err(|e| {
                        TlsError(format!("--tls-client-ca-file {}: {e}", path.display()))
                    })?;
                }
                // Drivers and anonymous clients connect without a certificate; one
                // that is sent must chain to this CA.
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError(format!("--tls-client-ca-file: {e}")))?
            }
        };
        let config = |alpn: &[&[u8]]| -> Result<tokio_rustls::TlsAcceptor, TlsError> {
            let mut config = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError(format!("TLS: {e}")))?
                .with_client_cert_verifier(verifier.clone())
                .with_cert_resolver(resolver.clone());
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
        };
        let tls = Self {
            grpc: config(&[b"h2", b"http/1.1"])?,
            http: config(&[b"http/1.1"])?,
            client_auth: files.client_ca.is_some(),
        };
        tasks.spawn(watch(files.clone(), provider, resolver, stop));
        Ok(tls)
    }

    /// The TLS handshake of a gRPC connection, and the operator its client certificate
    /// names, if it sent one.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<(
        tokio_rustls::server::TlsStream<TcpStream>,
        Option<OperatorId>,
    )> {
        let stream = self.grpc.accept(stream).await?;
        let operator = match stream.get_ref().1.peer_certificates() {
            Some([leaf, ..]) if self.client_auth => Some(operator_of(leaf).map_err(|reason| {
                metrics::record_connection_closed("tls_client_certificate_refused");
                std::io::Error::new(std::io::ErrorKind::PermissionDenied, reason)
            })?),
            _ => None,
        };
        Ok((stream, operator))
    }

    /// The TLS handshake of an HTTP/1.1 connection (the metrics port).
    pub async fn accept_http(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.http.accept(stream).await
    }
}

/// The operator a client certificate names: its subject's common name, which must be
/// a valid operator id.
fn operator_of(cert: &CertificateDer<'_>) -> Result<OperatorId, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|_| "the client certificate cannot be parsed".to_owned())?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("the client certificate's subject has no common name")?;
    OperatorId::parse(cn).map_err(|e| format!("the client certificate's common name: {e}"))
}

/// The certificate of the current handshake, replaced when the files change.
#[derive(Debug)]
struct Reloading(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().expect("certificate lock").clone())
    }
}

/// Checks the files every `reload_every`, and loads them when one's modification time
/// changed. Polling works the same on every file system and with the symlink swaps
/// Kubernetes does for mounted secrets, where file events do not.
async fn watch(
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    resolver: Arc<Reloading>,
    stop: CancellationToken,
) {
    let stamp = |files: &TlsFiles| (modified(&files.cert), modified(&files.key));
    let mut seen = stamp(&files);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(files.reload_every) => {}
        }
        let now = stamp(&files);
        if now == seen {
            continue;
        }
        seen = now;
        match load_key(&provider, &files) {
            Ok(key) => {
                *resolver.0.write().expect("certificate lock") = Arc::new(key);
                metrics::record_tls_reload(true);
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            // A half-written pair (the certificate renewed, the key not yet) fails
            // here and loads at the next check.
            Err(error) => {
                metrics::record_tls_reload(false);
                tracing::warn!(%error, "TLS certificate not reloaded; the one in use is kept");
            }
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

pub(crate) fn certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("{flag} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{flag} {}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The certificate chain and key, checked to belong together.
fn load_key(provider: &CryptoProvider, files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let chain = certs(&files.cert, "--tls-cert-file")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TlsError(format!("--tls-key-file {}: {e}", files.key.display())))?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        TlsError(format!(
            "--tls-cert-file/--tls-key-file: the key does not fit the certificate ({e})"
        ))
    })?;
    Ok(key)
}
