//! TLS on the gRPC and metrics ports, with certificates made in the test: plain text
//! refused, a renewed certificate served without a restart, and operators proven by
//! client certificates (mutual TLS).

use std::{path::Path, sync::Arc, time::Duration};

use citypark::{
    pb::{self, availability_client::AvailabilityClient, registry_client::RegistryClient},
    tls::TlsFiles,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::support::*;

/// A certificate authority made for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate and its key, for `names` (DNS names or IP addresses) with
    /// `common_name` as its subject.
    fn issue(&self, common_name: &str, names: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn tls_channel(
    server: &TestServer,
    ca: &Ca,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
}

#[tokio::test]
async fn tls_serves_calls_refuses_plain_text_and_takes_a_renewed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("old root"), Ca::new("new root"));
    let (cert, key) = old_ca.issue("localhost", &["localhost"]);
    let files = TlsFiles {
        cert: write(dir.path(), "cert.pem", &cert),
        key: write(dir.path(), "key.pem", &key),
        client_ca: None,
        reload_every: Duration::from_millis(100),
    };
    let server = TestServer::start_with(|s| s.tls = Some(files.clone())).await;

    ping_on(tls_channel(&server, &old_ca, None).await.unwrap())
        .await
        .unwrap();
    // Plain text on the TLS port is not served.
    let plain = async {
        match server.channel_unchecked().await {
            Ok(channel) => ping_on(channel).await.is_ok(),
            Err(_) => false,
        }
    };
    let served = tokio::time::timeout(Duration::from_secs(5), plain)
        .await
        .expect("refused at once");
    assert!(!served, "plain text was served on the TLS port");
    // A client that trusts only the new root cannot connect yet.
    let new_client = tls_channel(&server, &new_ca, None).await;
    assert!(new_client.is_err() || ping_on(new_client.unwrap()).await.is_err());

    // The certificate is renewed under the new root: new connections get it with no
    // restart, the key written first and the certificate after, as a renewal does.
    let (cert, key) = new_ca.issue("localhost", &["localhost"]);
    std::fs::write(&files.key, key).unwrap();
    std::fs::write(&files.cert, cert).unwrap();
    eventually("the renewed certificate to be served", || async {
        match tls_channel(&server, &new_ca, None).await {
            Ok(channel) => ping_on(channel).await.ok(),
            Err(_) => None,
        }
    })
    .await;
    let text = server.metrics_text_tls(&new_ca).await;
    assert!(
        text.contains("citypark_tls_reloads_total{result=\"ok\"}"),
        "the metrics port serves over TLS too"
    );
}

#[tokio::test]
async fn an_operator_s_client_certificate_proves_the_operator_as_its_api_key_would() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, clients_ca, stranger_ca) = (
        Ca::new("servers"),
        Ca::new("operators"),
        Ca::new("strangers"),
    );
    let (cert, key) = server_ca.issue("localhost", &["localhost"]);
    let files = TlsFiles {
        cert: write(dir.path(), "cert.pem", &cert),
        key: write(dir.path(), "key.pem", &key),
        client_ca: Some(write(dir.path(), "clients.pem", &clients_ca.pem)),
        reload_every: Duration::from_secs(10),
    };
    // The command line stamps its report with the real time: the server's clock is
    // the real one's.
    let clock = Arc::new(citypark::clock::ManualClock::new(
        citypark::clock::Clock::now(&citypark::clock::SystemClock),
    ));
    let server = TestServer::start_with_clock(citypark::app::Backend::embedded(64), clock, |s| {
        s.tls = Some(files)
    })
    .await;
    let upsert = |id: &str| pb::UpsertCarParkRequest {
        car_park: Some(garage(id, 36.05, 120.35)),
    };

    // OPERATOR_A's certificate: it may register without an API key, and owns what
    // it registers.
    let op_a = clients_ca.issue(OPERATOR_A.0, &[]);
    let channel = tls_channel(&server, &server_ca, Some(&op_a)).await.unwrap();
    let stored = RegistryClient::new(channel.clone())
        .upsert_car_park(upsert("by-cert"))
        .await
        .unwrap()
        .into_inner()
        .car_park
        .unwrap();
    assert_eq!(stored.operator_id, OPERATOR_A.0);
    // An API key sent on that connection is the caller: the explicit credential wins.
    let mut as_b = RegistryClient::new(channel);
    let stored = as_b
        .upsert_car_park(authed(upsert("by-key"), OPERATOR_B.1))
        .await
        .unwrap()
        .into_inner()
        .car_park
        .unwrap();
    assert_eq!(stored.operator_id, OPERATOR_B.0);

    // The command line's operator does the same with its certificate files.
    let ca_file = write(dir.path(), "servers.pem", &server_ca.pem);
    let cert_file = write(dir.path(), "op-a.pem", &op_a.0);
    let key_file = write(dir.path(), "op-a.key", &op_a.1);
    let path = |p: &Path| p.display().to_string();
    let args = vec![
        "report".to_owned(),
        "--server".to_owned(),
        format!("https://localhost:{}", server.addr.port()),
        "--tls-ca-file".to_owned(),
        path(&ca_file),
        "--tls-client-cert-file".to_owned(),
        path(&cert_file),
        "--tls-client-key-file".to_owned(),
        path(&key_file),
        "--car-park".to_owned(),
        "by-cert".to_owned(),
        "--free".to_owned(),
        "standard=9".to_owned(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_citypark"))
            .args(&args)
            .env_clear()
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        free_standard(&availability_of_tls(&server, &server_ca, "by-cert").await),
        9
    );

    // Without a certificate a client still connects (drivers, the public), and a write
    // needs a key.
    let anonymous = tls_channel(&server, &server_ca, None).await.unwrap();
    ping_on(anonymous.clone()).await.unwrap();
    let refused = RegistryClient::new(anonymous)
        .upsert_car_park(upsert("nobody"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // A certificate from another CA, or one whose name is no operator id, is refused
    // at the handshake.
    for identity in [
        stranger_ca.issue(OPERATOR_A.0, &[]),
        clients_ca.issue("not an operator id!", &[]),
    ] {
        let refused = match tls_channel(&server, &server_ca, Some(&identity)).await {
            Err(_) => true,
            Ok(channel) => ping_on(channel).await.is_err(),
        };
        assert!(refused, "{}", identity.0.lines().next().unwrap());
    }
}

async fn availability_of_tls(server: &TestServer, ca: &Ca, id: &str) -> pb::CarParkAvailability {
    AvailabilityClient::new(tls_channel(server, ca, None).await.unwrap())
        .get_availability(pb::GetAvailabilityRequest {
            car_park_ids: vec![id.to_owned()],
        })
        .await
        .unwrap()
        .into_inner()
        .availabilities
        .remove(0)
}

impl TestServer {
    /// A plain-text channel, which may fail to connect.
    async fn channel_unchecked(&self) -> Result<Channel, tonic::transport::Error> {
        self.endpoint().connect().await
    }

    /// The text of /metrics over TLS, trusting `ca`.
    async fn metrics_text_tls(&self, ca: &Ca) -> String {
        use rustls_pki_types::pem::PemObject;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .unwrap();
        let mut s = connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        // rustls reports a peer that closes without close_notify as an error after
        // the data; the text read is what counts.
        let _ = s.read_to_string(&mut out).await;
        out
    }
}
