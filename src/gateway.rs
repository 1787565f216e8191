//! The external payment gateway: a session's charge is an HTTP POST of JSON, signed
//! with HMAC-SHA256 over the body with a shared secret, whose idempotency key is the
//! session's id, so the gateway charges a session once however often it is asked; the
//! gateway answers at once or later, by a signed callback to citypark's HTTP port.
//!
//! The wire format (README, "Paying through a gateway"):
//! - request: `POST <url>`, headers `Idempotency-Key: <session id>` and
//!   `X-Citypark-Signature: sha256=<hex HMAC-SHA256(secret, body)>`, body
//!   [`ChargeRequest`];
//! - answer: `{"status": "succeeded", "receipt_id": …}`, `{"status": "pending"}` (a
//!   callback follows) or `{"status": "declined", "reason": …}` (or HTTP 402); a 5xx,
//!   408, 409, 425, 429 or no answer within the timeout is retried;
//! - callback: `POST /payments/v1/callback` on `--http-addr`, signed the same way,
//!   body [`Callback`].

use std::{fmt, sync::Arc, time::Duration};

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use sha2::Sha256;

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-citypark-signature";
/// The header carrying the charge's idempotency key (the session id).
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Largest answer or callback body read.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `signature` (a header's value) signs `body` with `secret`, compared in
/// constant time.
pub fn verify(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(digest) = signature
        .trim()
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&digest).is_ok()
}

/// A charge as the gateway receives it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChargeRequest {
    /// Also the idempotency key.
    pub session_id: String,
    pub driver_id: String,
    pub operator_id: String,
    pub car_park_id: String,
    pub amount_minor: i64,
    pub currency: String,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
    /// When it was sent (RFC 3339), so a gateway can refuse replays of old requests.
    pub sent_at: String,
}

/// The gateway's later answer about a charge it said was pending.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Callback {
    pub session_id: String,
    /// "succeeded" or "declined".
    pub status: String,
    #[serde(default)]
    pub receipt_id: String,
    #[serde(default)]
    pub reason: String,
}

/// The gateway's answer, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Charged; the gateway's receipt.
    Succeeded(String),
    /// Accepted; the result comes by callback (or by asking again).
    Pending,
    /// Refused for good, with the gateway's reason.
    Declined(String),
}

/// An attempt that may succeed if made again, and why it did not now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry(pub String);

#[derive(serde::Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    receipt_id: String,
    #[serde(default)]
    reason: String,
}

/// Where the gateway is and how citypark signs for it.
#[derive(Clone)]
pub struct GatewayConfig {
    pub url: http::Uri,
    pub secret: Arc<[u8]>,
    /// How long an attempt waits for the answer.
    pub timeout: Duration,
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("url", &self.url)
            .field("secret", &"<hidden>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The gateway's client.
#[derive(Debug, Clone)]
pub struct Gateway {
    config: GatewayConfig,
    host: String,
    port: u16,
    https: bool,
}

impl Gateway {
    /// A client of the gateway at `config.url` (http or https, with a host).
    pub fn new(config: GatewayConfig) -> Result<Self, String> {
        let https = match config.url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("must be an http:// or https:// URL".into()),
        };
        let host = config
            .url
            .host()
            .ok_or("names no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = config
            .url
            .port_u16()
            .unwrap_or(if https { 443 } else { 80 });
        if config.secret.len() < 32 {
            return Err("the shared secret must be at least 32 bytes".into());
        }
        Ok(Self {
            config,
            host,
            port,
            https,
        })
    }

    /// How long an attempt waits for the answer.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// Whether `signature` signs `body` with the shared secret.
    pub fn verify(&self, body: &[u8], signature: &str) -> bool {
        verify(&self.config.secret, body, signature)
    }

    /// Asks the gateway to make `charge`.
    pub async fn charge(&self, charge: &ChargeRequest) -> Result<Outcome, Retry> {
        let body = serde_json::to_vec(charge).expect("a charge serializes");
        let exchange = self.post(body, &charge.session_id);
        let (status, body) = match tokio::time::timeout(self.config.timeout, exchange).await {
            Err(_) => {
                return Err(Retry(format!(
                    "the gateway did not answer within {} ms",
                    self.config.timeout.as_millis()
                )));
            }
            Ok(Err(error)) => return Err(Retry(format!("the gateway is unreachable: {error}"))),
            Ok(Ok(answer)) => answer,
        };
        read_answer(status, &body)
    }

    /// One POST over a connection of its own, driven to its end here (no task is left
    /// behind when the caller gives up).
    async fn post(
        &self,
        body: Vec<u8>,
        key: &str,
    ) -> Result<(http::StatusCode, Bytes), Box<dyn std::error::Error + Send + Sync>> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
        let _ = tcp.set_nodelay(true);
        let stream = if self.https {
            let name = rustls_pki_types::ServerName::try_from(self.host.clone())?;
            let tls = tls_connector().connect(name, tcp).await?;
            tokio_util::either::Either::Right(tls)
        } else {
            tokio_util::either::Either::Left(tcp)
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let path = self
            .config
            .url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let authority = self
            .config
            .url
            .authority()
            .map_or_else(|| self.host.clone(), |a| a.to_string());
        let request = http::Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONNECTION, "close")
            .header(IDEMPOTENCY_HEADER, key)
            .header(SIGNATURE_HEADER, sign(&self.config.secret, &body))
            .body(Full::new(Bytes::from(body)))?;
        let exchange = async move {
            let response = sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_BODY_BYTES)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((parts.status, body))
        };
        // The connection ends once the exchange drops its sender.
        let (answer, _) = tokio::join!(exchange, connection);
        answer
    }
}

/// What an answer says.
fn read_answer(status: http::StatusCode, body: &[u8]) -> Result<Outcome, Retry> {
    let answer: Option<Answer> = serde_json::from_slice(body).ok();
    match status.as_u16() {
        200..=299 => match answer {
            Some(a) if a.status == "succeeded" && !a.receipt_id.is_empty() => {
                Ok(Outcome::Succeeded(a.receipt_id))
            }
            Some(a) if a.status == "pending" => Ok(Outcome::Pending),
            Some(a) if a.status == "declined" => Ok(Outcome::Declined(reason_or(
                a.reason,
                "declined by the gateway",
            ))),
            _ => Err(Retry(format!(
                "the gateway's answer (HTTP {status}) was not one citypark reads"
            ))),
        },
        402 => Ok(Outcome::Declined(reason_or(
            answer.map(|a| a.reason).unwrap_or_default(),
            "declined by the gateway (HTTP 402)",
        ))),
        408 | 409 | 425 | 429 | 500..=599 => {
            Err(Retry(format!("the gateway answered HTTP {status}")))
        }
        _ => Ok(Outcome::Declined(format!(
            "the gateway refused the charge: HTTP {status}"
        ))),
    }
}

/// `reason` cut to 200 printable characters, or `default` if it says nothing.
pub fn reason_or(reason: String, default: &str) -> String {
    let reason: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if reason.trim().is_empty() {
        default.to_owned()
    } else {
        reason
    }
}

/// The public roots, for an https gateway.
fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Arc::new(config)
    });
    tokio_rustls::TlsConnector::from(config.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_their_body_and_secret() {
        let secret = b"a-shared-secret-of-at-least-32-bytes";
        let signature = sign(secret, b"{\"a\":1}");
        assert!(signature.starts_with("sha256="));
        assert!(verify(secret, b"{\"a\":1}", &signature));
        assert!(!verify(secret, b"{\"a\":2}", &signature));
        assert!(!verify(
            b"another-secret-of-at-least-32-bytes!",
            b"{\"a\":1}",
            &signature
        ));
        assert!(!verify(secret, b"{\"a\":1}", "sha256=zz"));
        assert!(!verify(secret, b"{\"a\":1}", &signature[7..]));
    }

    #[test]
    fn answers_are_read_as_the_readme_says() {
        let ok = http::StatusCode::OK;
        assert_eq!(
            read_answer(ok, br#"{"status":"succeeded","receipt_id":"r1"}"#),
            Ok(Outcome::Succeeded("r1".into()))
        );
        assert_eq!(
            read_answer(ok, br#"{"status":"pending"}"#),
            Ok(Outcome::Pending)
        );
        assert_eq!(
            read_answer(ok, br#"{"status":"declined","reason":"card expired"}"#),
            Ok(Outcome::Declined("card expired".into()))
        );
        assert!(
            read_answer(ok, br#"{"status":"succeeded"}"#).is_err(),
            "no receipt"
        );
        assert!(matches!(
            read_answer(http::StatusCode::PAYMENT_REQUIRED, b""),
            Ok(Outcome::Declined(_))
        ));
        for retried in [500, 503, 429, 408] {
            let status = http::StatusCode::from_u16(retried).unwrap();
            assert!(read_answer(status, b"").is_err(), "{retried}");
        }
        assert!(matches!(
            read_answer(http::StatusCode::FORBIDDEN, b""),
            Ok(Outcome::Declined(_))
        ));
    }
}
