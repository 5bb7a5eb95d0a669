//! JWT access tokens: HS256, 24 h, with a `jti` that the sessions table can revoke.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

pub const TOKEN_LIFETIME_SECS: i64 = 24 * 60 * 60;
const SECRET_FILE: &str = "jwt_secret";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub is_admin: bool,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
}

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenKeys {
    pub fn from_secret(secret: &[u8]) -> TokenKeys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "jti"]);
        validation.leeway = 0;
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// `JWT_SECRET_KEY` when given; otherwise the data directory's secret, generated on first start.
    pub fn load(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<TokenKeys> {
        if let Some(secret) = configured.filter(|s| !s.is_empty()) {
            if secret.len() < 32 {
                tracing::warn!("JWT_SECRET_KEY is shorter than 32 bytes; use a long random value");
            }
            return Ok(TokenKeys::from_secret(secret.as_bytes()));
        }
        Ok(TokenKeys::from_secret(&load_or_create_secret(data_dir)?))
    }

    pub fn issue(&self, username: &str, is_admin: bool, now: i64) -> anyhow::Result<(String, Claims)> {
        let claims = Claims {
            sub: username.to_string(),
            is_admin,
            iat: now,
            exp: now + TOKEN_LIFETIME_SECS,
            jti: uuid::Uuid::new_v4().simple().to_string(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .context("signing token")?;
        Ok((token, claims))
    }

    /// Checks signature, algorithm and expiry. Revocation is the sessions table's job.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok().map(|data| data.claims)
    }
}

fn load_or_create_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = hex::decode(text.trim())
                .with_context(|| format!("{} is not a hex secret", path.display()))?;
            anyhow::ensure!(secret.len() >= 32, "{} holds a secret shorter than 256 bits", path.display());
            // Tighten permissions that someone loosened by hand.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = vec![0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            // Written under a temporary name and renamed, so a crash never leaves half a secret.
            let tmp = data_dir.join(format!(".{SECRET_FILE}.tmp"));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            file.write_all(hex::encode(&secret).as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            tracing::info!(path = %path.display(), "generated a new JWT secret");
            Ok(secret)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_token_verifies_and_other_key_does_not() -> anyhow::Result<()> {
        let keys = TokenKeys::from_secret(&[7u8; 32]);
        let (token, claims) = keys.issue("alice", true, crate::store::now_unix())?;
        let back = keys.verify(&token).context("must verify")?;
        assert_eq!(back.sub, "alice");
        assert_eq!(back.jti, claims.jti);
        assert!(TokenKeys::from_secret(&[8u8; 32]).verify(&token).is_none());
        Ok(())
    }

    #[test]
    fn expired_token_is_refused() -> anyhow::Result<()> {
        let keys = TokenKeys::from_secret(&[7u8; 32]);
        let (token, _) = keys.issue("alice", false, crate::store::now_unix() - TOKEN_LIFETIME_SECS - 5)?;
        assert!(keys.verify(&token).is_none());
        Ok(())
    }

    #[test]
    fn secret_is_generated_once_with_mode_0600() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let a = load_or_create_secret(dir.path())?;
        let b = load_or_create_secret(dir.path())?;
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        let mode = std::fs::metadata(dir.path().join(SECRET_FILE))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        Ok(())
    }
}
