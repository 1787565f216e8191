//! Operator API keys: loaded hashed (SHA-256) from a file or the environment.

use std::collections::HashMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::domain::{Error, OperatorId, Result};

/// The hex SHA-256 of an API key, as stored in configuration.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Which operator each key belongs to. Only hashes are kept, so a leaked config
/// does not leak keys.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], OperatorId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    operator: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    key_sha256: String,
}

impl ApiKeys {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether no key is configured (then every write is refused).
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Adds a key by its hex SHA-256.
    pub fn insert_hash(&mut self, operator: OperatorId, hex_sha256: &str) -> Result<()> {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(hex_sha256.trim(), &mut hash).map_err(|_| {
            Error::invalid(
                "key_sha256",
                format!("operator {operator}: not 64 hex digits"),
            )
        })?;
        self.by_hash.insert(hash, operator);
        Ok(())
    }

    /// Adds a key in plain text (the demo's operators), hashing it first.
    pub fn insert_plain(&mut self, operator: OperatorId, key: &str) {
        self.by_hash
            .insert(Sha256::digest(key.as_bytes()).into(), operator);
    }

    /// Reads a TOML file of `[[operator]]` tables with `id` and `key_sha256`.
    pub fn add_toml(&mut self, text: &str) -> Result<()> {
        let file: KeyFile =
            toml::from_str(text).map_err(|e| Error::invalid("api keys file", e.message()))?;
        for entry in file.operator {
            let id = OperatorId::parse(&entry.id).map_err(|e| e.in_field("operator.id"))?;
            self.insert_hash(id, &entry.key_sha256)?;
        }
        Ok(())
    }

    /// Reads `operator:hexsha256` pairs separated by commas (the environment form).
    pub fn add_list(&mut self, text: &str) -> Result<()> {
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, hash) = pair.split_once(':').ok_or_else(|| {
                Error::invalid("api keys", format!("{pair:?} is not operator:sha256"))
            })?;
            let id = OperatorId::parse(id.trim()).map_err(|e| e.in_field("api keys operator"))?;
            self.insert_hash(id, hash)?;
        }
        Ok(())
    }

    /// The operator of an `authorization` header value (`Bearer <key>`).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<OperatorId> {
        let header = authorization.ok_or_else(|| {
            Error::Unauthenticated(
                "this call needs an operator API key: send `authorization: Bearer <key>`".into(),
            )
        })?;
        credential_size(header)?;
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                Error::Unauthenticated("the authorization header must be `Bearer <key>`".into())
            })?;
        let hash: [u8; 32] = Sha256::digest(key.trim().as_bytes()).into();
        self.by_hash
            .get(&hash)
            .cloned()
            .ok_or_else(|| Error::Unauthenticated("unknown API key".into()))
    }
}

/// The longest credential (an `authorization` value: an API key or a driver's JWT) this
/// server reads. Real ones are well under 2 KiB; a bigger one is refused with this
/// reason rather than parsed or verified. (A request's headers together may take up to
/// the gRPC port's header limit, `MAX_HEADER_LIST_BYTES` in `app.rs`.)
pub const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;

/// UNAUTHENTICATED, saying why, for a credential over [`MAX_CREDENTIAL_BYTES`].
pub fn credential_size(credential: &str) -> Result<()> {
    if credential.len() > MAX_CREDENTIAL_BYTES {
        return Err(Error::Unauthenticated(format!(
            "the credential is {} bytes; this server reads at most {} KiB (a driver token or \
             an API key is far smaller)",
            credential.len(),
            MAX_CREDENTIAL_BYTES / 1024
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_toml_and_list() {
        let mut keys = ApiKeys::default();
        let toml = format!(
            "[[operator]]\nid = \"op-a\"\nkey_sha256 = \"{}\"\n",
            hash_key("secret-a")
        );
        keys.add_toml(&toml).unwrap();
        keys.add_list(&format!("op-b:{}", hash_key("secret-b")))
            .unwrap();
        assert_eq!(
            keys.authenticate(Some("Bearer secret-a")).unwrap().as_str(),
            "op-a"
        );
        assert_eq!(
            keys.authenticate(Some("Bearer secret-b")).unwrap().as_str(),
            "op-b"
        );
        assert!(matches!(
            keys.authenticate(Some("Bearer nope")),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            keys.authenticate(Some("secret-a")),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            keys.authenticate(None),
            Err(Error::Unauthenticated(_))
        ));
        assert!(keys.add_list("op-c:nothex").is_err());
        assert!(keys.add_toml("[[operator]]\nid = \"x\"\n").is_err());
        // A credential too big to read is refused with its size, not looked up.
        let huge = format!("Bearer {}", "k".repeat(MAX_CREDENTIAL_BYTES));
        assert!(matches!(
            keys.authenticate(Some(&huge)),
            Err(Error::Unauthenticated(why)) if why.contains("at most 8 KiB")
        ));
    }
}
