//! Drivers' identity: bearer JWTs (`sub` is the driver id), verified with configured
//! keys: an HS256 secret and/or a PEM public key (RS256, ES256 or EdDSA). `exp` and
//! `sub` are required; so are `iss` and `aud` when an issuer or an audience is
//! configured, and then they must match (`aud` may be one string or, as RFC 7519
//! §4.1.3 allows, an array that contains the audience).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::domain::{DriverId, Error, Result};

/// The secret `--demo` verifies driver tokens with, so the README's example works
/// out of the box. Public, so never for production.
pub const DEMO_SECRET: &str = "citypark-demo-driver-secret-not-for-production";

/// How long a token printed by `citypark token` lasts.
pub const DEMO_TOKEN_SECONDS: u64 = 24 * 3600;

#[derive(serde::Deserialize, serde::Serialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// What a verified token tells: the library checks `exp`, `iss` and `aud` itself from
/// the payload (an `aud` array included), so only the driver is read here.
#[derive(serde::Deserialize)]
struct Subject {
    sub: String,
}

/// The keys driver tokens are verified with.
#[derive(Clone, Default)]
pub struct DriverTokens {
    keys: Vec<(DecodingKey, Validation)>,
}

impl std::fmt::Debug for DriverTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DriverTokens({} keys)", self.keys.len())
    }
}

fn validation(
    algorithms: &[Algorithm],
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Validation {
    let mut v = Validation::new(algorithms[0]);
    v.algorithms = algorithms.to_vec();
    // A configured issuer or audience is required, not only checked when present: a
    // token without one would otherwise pass.
    let mut required = vec!["exp", "sub"];
    required.extend(issuer.map(|_| "iss"));
    required.extend(audience.map(|_| "aud"));
    v.set_required_spec_claims(&required);
    // A token with `nbf` is refused before it; clocks may differ by the leeway.
    v.validate_nbf = true;
    v.leeway = 30;
    if let Some(issuer) = issuer {
        v.set_issuer(&[issuer]);
    }
    match audience {
        Some(audience) => v.set_audience(&[audience]),
        None => v.validate_aud = false,
    }
    v
}

impl DriverTokens {
    /// Whether no key is configured (then every driver call is refused).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Accepts HS256 tokens signed with `secret`.
    pub fn add_secret(&mut self, secret: &[u8], issuer: Option<&str>, audience: Option<&str>) {
        self.keys.push((
            DecodingKey::from_secret(secret),
            validation(&[Algorithm::HS256], issuer, audience),
        ));
    }

    /// Accepts tokens signed by the private half of a PEM public key: RSA (RS256), EC
    /// P-256 (ES256) or Ed25519 (EdDSA).
    pub fn add_public_pem(
        &mut self,
        pem: &[u8],
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<()> {
        let (key, algorithms) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (k, vec![Algorithm::RS256])
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            (k, vec![Algorithm::ES256])
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            (k, vec![Algorithm::EdDSA])
        } else {
            return Err(Error::invalid(
                "driver-jwt-public-key-file",
                "not a PEM RSA, EC P-256 or Ed25519 public key",
            ));
        };
        self.keys
            .push((key, validation(&algorithms, issuer, audience)));
        Ok(())
    }

    /// The driver a bearer token names, if a configured key signed it and it is valid.
    pub fn authenticate(&self, token: &str) -> Result<DriverId> {
        crate::auth::credential_size(token)?;
        if self.keys.is_empty() {
            return Err(Error::Unauthenticated(
                "this server accepts no driver tokens (no --driver-jwt-* key configured)".into(),
            ));
        }
        // The reason given is from a key of the token's algorithm when there is one
        // (an HS256 token's refusal by an RSA key says less than by a secret's).
        let mut why = None;
        for (key, validation) in &self.keys {
            match jsonwebtoken::decode::<Subject>(token, key, validation) {
                Ok(data) => {
                    return DriverId::parse(&data.claims.sub).map_err(|_| {
                        Error::Unauthenticated("the token's sub is not a valid driver id".into())
                    });
                }
                Err(e) => {
                    let wrong_algorithm =
                        matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidAlgorithm);
                    if why.is_none() || !wrong_algorithm {
                        why = Some(refusal(e.kind()));
                    }
                }
            }
        }
        let why = why.unwrap_or_else(|| "it is malformed".into());
        Err(Error::Unauthenticated(format!(
            "invalid driver token: {why}"
        )))
    }

    /// An HS256 token for `driver` signed with `secret`, valid for `seconds` from
    /// `now_unix` (the demo's and the tests' tokens).
    pub fn issue(
        secret: &[u8],
        driver: &DriverId,
        now_unix: u64,
        seconds: u64,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> String {
        let claims = Claims {
            sub: driver.to_string(),
            exp: now_unix + seconds,
            iss: issuer.map(str::to_owned),
            aud: audience.map(str::to_owned),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .expect("HS256 signing cannot fail")
    }
}

/// Why a token was refused, in words of our own (the library's text is not for
/// clients). With several keys, the last key's reason is given.
fn refusal(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    if let K::MissingRequiredClaim(claim) = kind {
        return format!("it lacks the {claim} claim, which this server requires");
    }
    match kind {
        K::ExpiredSignature => "it has expired",
        K::ImmatureSignature => "it is not valid yet (nbf)",
        K::InvalidIssuer => "its issuer is not the one this server accepts",
        K::InvalidAudience => "its audience is not this server",
        K::InvalidSignature => "no key this server accepts signed it",
        K::InvalidAlgorithm | K::InvalidAlgorithmName => {
            "its algorithm is not the one of a key this server accepts"
        }
        _ => "it is malformed",
    }
    .into()
}

/// Whether a bearer credential is a JWT (three base64url parts) rather than an API key.
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.split('.').count() == 3 && credential.starts_with("eyJ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn tokens_are_verified_with_their_key_issuer_audience_and_expiry() {
        let alice = DriverId::parse("alice").unwrap();
        let mut tokens = DriverTokens::default();
        tokens.add_secret(b"s3cret", Some("city"), Some("citypark"));
        let good =
            DriverTokens::issue(b"s3cret", &alice, now(), 60, Some("city"), Some("citypark"));
        assert!(looks_like_jwt(&good));
        assert_eq!(tokens.authenticate(&good).unwrap(), alice);
        for bad in [
            DriverTokens::issue(b"other", &alice, now(), 60, Some("city"), Some("citypark")),
            DriverTokens::issue(
                b"s3cret",
                &alice,
                now() - 7200,
                60,
                Some("city"),
                Some("citypark"),
            ),
            DriverTokens::issue(b"s3cret", &alice, now(), 60, Some("evil"), Some("citypark")),
            DriverTokens::issue(b"s3cret", &alice, now(), 60, Some("city"), Some("else")),
        ] {
            assert!(matches!(
                tokens.authenticate(&bad),
                Err(Error::Unauthenticated(_))
            ));
        }
        assert!(DriverTokens::default().authenticate(&good).is_err());
        assert!(!looks_like_jwt("demo-key-op1"));
    }

    /// An HS256 token of `claims` (JSON) signed with `secret`.
    fn signed(secret: &[u8], claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn refusal_of(tokens: &DriverTokens, token: &str) -> String {
        match tokens.authenticate(token) {
            Err(Error::Unauthenticated(why)) => why,
            other => panic!("accepted or refused otherwise: {other:?}"),
        }
    }

    /// With an issuer and an audience configured, a token signed by the right key but
    /// without `iss` or without `aud` is refused, naming the claim (issue 25, 1).
    #[test]
    fn a_configured_issuer_and_audience_are_required() {
        let mut tokens = DriverTokens::default();
        tokens.add_secret(b"s3cret", Some("city"), Some("citypark"));
        let exp = now() + 60;
        let no_iss = signed(
            b"s3cret",
            serde_json::json!({"sub": "al", "exp": exp, "aud": "citypark"}),
        );
        assert!(refusal_of(&tokens, &no_iss).contains("iss claim"));
        let no_aud = signed(
            b"s3cret",
            serde_json::json!({"sub": "al", "exp": exp, "iss": "city"}),
        );
        assert!(refusal_of(&tokens, &no_aud).contains("aud claim"));
        // Without an issuer or audience configured, neither is needed.
        let mut open = DriverTokens::default();
        open.add_secret(b"s3cret", None, None);
        let bare = signed(b"s3cret", serde_json::json!({"sub": "al", "exp": exp}));
        assert_eq!(open.authenticate(&bare).unwrap().as_str(), "al");
    }

    /// `aud` may be an array (RFC 7519 §4.1.3): accepted when it holds the audience
    /// (issue 25, 2).
    #[test]
    fn an_audience_array_is_accepted_when_it_holds_the_audience() {
        let mut tokens = DriverTokens::default();
        tokens.add_secret(b"s3cret", Some("city"), Some("citypark"));
        let exp = now() + 60;
        let listed = signed(
            b"s3cret",
            serde_json::json!({"sub": "al", "exp": exp, "iss": "city", "aud": ["billing", "citypark"]}),
        );
        assert_eq!(tokens.authenticate(&listed).unwrap().as_str(), "al");
        let elsewhere = signed(
            b"s3cret",
            serde_json::json!({"sub": "al", "exp": exp, "iss": "city", "aud": ["billing"]}),
        );
        assert!(refusal_of(&tokens, &elsewhere).contains("audience"));
        // And without an audience configured, an array is no reason to refuse.
        let mut open = DriverTokens::default();
        open.add_secret(b"s3cret", None, None);
        assert_eq!(open.authenticate(&listed).unwrap().as_str(), "al");
    }

    /// A key pair made for this test only (`openssl genpkey -algorithm ed25519`).
    const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIArzwFeutWUatunGgvlxscolyf0Wp21wYOR6h0l1JbyQ\n-----END PRIVATE KEY-----\n";
    const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAj/y48JqEIwCAE2r8rCO1vlZXBet1nWdxDsmdanqvsVs=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn tokens_signed_by_a_public_keys_private_half_are_accepted_and_no_others() {
        let mut tokens = DriverTokens::default();
        tokens
            .add_public_pem(ED25519_PUBLIC.as_bytes(), None, None)
            .unwrap();
        let claims = Claims {
            sub: "bob".into(),
            exp: now() + 60,
            iss: None,
            aud: None,
        };
        let signed = jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &claims,
            &EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(tokens.authenticate(&signed).unwrap().as_str(), "bob");
        // An HS256 token is refused: the algorithm is the key's, never the token's.
        let hs = DriverTokens::issue(
            ED25519_PUBLIC.as_bytes(),
            &DriverId::parse("bob").unwrap(),
            now(),
            60,
            None,
            None,
        );
        assert!(tokens.authenticate(&hs).is_err());
        assert!(tokens.add_public_pem(b"not a key", None, None).is_err());
    }
}
