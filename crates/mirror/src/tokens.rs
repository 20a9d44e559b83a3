//! Replication tokens (the source's side): a credential a destination
//! presents that can do only what mirroring needs. Kept as SHA-256 digests
//! in `DATA/mirror/peer-tokens.json`; the secret is shown once.

use crate::store;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use wire::PeerTokenInfo;

/// Most replication tokens one server keeps.
pub const PEER_TOKENS_MAX: usize = 256;
/// Every replication token starts so, which tells it from the API token.
pub const TOKEN_PREFIX: &str = "bfr_";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    name: String,
    /// Hex SHA-256 of the token.
    digest: String,
    created: u64,
}

pub struct PeerTokens {
    path: PathBuf,
    tokens: Mutex<Vec<TokenRecord>>,
}

fn digest(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl PeerTokens {
    pub fn open(dir: &std::path::Path) -> Result<PeerTokens, String> {
        let path = dir.join("peer-tokens.json");
        let tokens = store::load(&path)?;
        Ok(PeerTokens {
            path,
            tokens: Mutex::new(tokens),
        })
    }

    /// Makes a token named `name`; the answer holds the secret.
    pub fn create(&self, name: &str) -> Result<PeerTokenInfo, engine::Error> {
        engine::validate_snapshot_name(name).map_err(|_| {
            engine::Error::InvalidArgument(format!(
                "peer token name {name:?} must be 1 to 255 characters of [A-Za-z0-9._-]"
            ))
        })?;
        let mut tokens = self.tokens.lock();
        if tokens.iter().any(|t| t.name == name) {
            return Err(engine::Error::AlreadyExists {
                kind: "peer token",
                name: name.into(),
            });
        }
        if tokens.len() >= PEER_TOKENS_MAX {
            return Err(engine::Error::InvalidArgument(format!(
                "this server already has {PEER_TOKENS_MAX} peer tokens, the most it keeps"
            )));
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| engine::Error::Io(std::io::Error::other(format!("no randomness: {e}"))))?;
        let token = format!(
            "{TOKEN_PREFIX}{}",
            secret
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let created = crate::now_secs();
        tokens.push(TokenRecord {
            name: name.into(),
            digest: digest(&token),
            created,
        });
        if let Err(e) = store::save(&self.path, &*tokens) {
            tokens.pop();
            return Err(engine::Error::Store(e));
        }
        Ok(PeerTokenInfo {
            name: name.into(),
            created,
            token: Some(token),
        })
    }

    pub fn list(&self) -> Vec<PeerTokenInfo> {
        self.tokens
            .lock()
            .iter()
            .map(|t| PeerTokenInfo {
                name: t.name.clone(),
                created: t.created,
                token: None,
            })
            .collect()
    }

    pub fn delete(&self, name: &str) -> Result<(), engine::Error> {
        let mut tokens = self.tokens.lock();
        let Some(i) = tokens.iter().position(|t| t.name == name) else {
            return Err(engine::Error::NotFound {
                kind: "peer token",
                name: name.into(),
            });
        };
        let removed = tokens.remove(i);
        if let Err(e) = store::save(&self.path, &*tokens) {
            tokens.insert(i, removed);
            return Err(engine::Error::Store(e));
        }
        Ok(())
    }

    /// The name of the token `token` is, if it is one.
    pub fn verify(&self, token: &str) -> Option<String> {
        if !token.starts_with(TOKEN_PREFIX) {
            return None;
        }
        let d = digest(token);
        // Digests compared in full whatever they hold: no early exit that
        // tells how much of a guess was right.
        self.tokens
            .lock()
            .iter()
            .find(|t| {
                t.digest.len() == d.len()
                    && t.digest
                        .bytes()
                        .zip(d.bytes())
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0
            })
            .map(|t| t.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_verify_delete_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = PeerTokens::open(dir.path()).unwrap();
        let made = tokens.create("dr").unwrap();
        let secret = made.token.unwrap();
        assert!(secret.starts_with(TOKEN_PREFIX));
        assert!(tokens.create("dr").is_err());
        assert!(tokens.create("bad name").is_err());
        let again = PeerTokens::open(dir.path()).unwrap();
        assert_eq!(again.verify(&secret).as_deref(), Some("dr"));
        assert_eq!(again.verify("bfr_00").as_deref(), None);
        assert_eq!(again.verify("not-a-token"), None);
        // The file holds no secret.
        let text = std::fs::read_to_string(dir.path().join("peer-tokens.json")).unwrap();
        assert!(!text.contains(&secret[TOKEN_PREFIX.len()..]));
        again.delete("dr").unwrap();
        assert_eq!(again.verify(&secret), None);
        assert!(again.delete("dr").is_err());
    }
}
