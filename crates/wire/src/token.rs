//! MQTT access tokens: PASETO v4.public (Ed25519). The accounts tier signs them at login; edges
//! verify them with the public key alone, without a database call (design §2, flow 2).
//!
//! PASETO rather than JWT: the version fixes the algorithm, so there is no `alg` header to
//! downgrade (`alg: none`) or confuse (HS256 with a public key). Keys travel as PASERK strings
//! (`k4.secret.…`, `k4.public.…`).

use std::time::Duration;

use pasetors::claims::{Claims, ClaimsValidationRules};
use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::paserk::FormatAsPaserk;
use pasetors::token::UntrustedToken;
use pasetors::version4::V4;
use pasetors::{Public, public};

/// Who a token was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    pub user_id: String,
    pub enterprise_id: String,
    pub username: String,
    /// Unique per token.
    pub token_id: String,
    /// When it was issued (Unix ms): revoking a user's tokens refuses those issued before an instant.
    pub issued_at_ms: i64,
    /// The login session (device) it belongs to: logging out revokes that session's tokens.
    /// Empty in tokens that name none.
    pub session_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a PASETO v4.public token")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired or is not yet valid")]
    Expired,
    #[error("token lacks the `{0}` claim")]
    MissingClaim(&'static str),
    #[error("key: {0}")]
    Key(String),
}

/// How long a revocation matters: longer than any access token lives (the accounts tier caps
/// `http.token_ttl_secs` at a day). Older ones concern expired tokens only.
pub const REVOCATION_MEMORY_MS: i64 = 7 * 24 * 3600 * 1000;

const ENTERPRISE: &str = "eid";
const USERNAME: &str = "usr";
const ISSUED_MS: &str = "iat_ms";
const SESSION: &str = "sid";

/// Signs tokens (the accounts tier holds this).
#[derive(Debug)]
pub struct Signer {
    secret: AsymmetricSecretKey<V4>,
    verifier: Verifier,
}

/// Verifies tokens (every edge holds this).
#[derive(Debug, Clone)]
pub struct Verifier {
    public: AsymmetricPublicKey<V4>,
}

fn paserk(key: &dyn FormatAsPaserk) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = key.fmt(&mut s);
    s
}

impl Signer {
    /// A fresh key pair.
    pub fn generate() -> Result<Signer, TokenError> {
        let pair = AsymmetricKeyPair::<V4>::generate().map_err(|e| TokenError::Key(e.to_string()))?;
        Ok(Signer { secret: pair.secret, verifier: Verifier { public: pair.public } })
    }

    /// From a `k4.secret.…` PASERK string.
    pub fn from_paserk(secret: &str) -> Result<Signer, TokenError> {
        let secret = AsymmetricSecretKey::<V4>::try_from(secret.trim()).map_err(|e| TokenError::Key(e.to_string()))?;
        let public = AsymmetricPublicKey::<V4>::try_from(&secret).map_err(|e| TokenError::Key(e.to_string()))?;
        Ok(Signer { secret, verifier: Verifier { public } })
    }

    pub fn to_paserk(&self) -> String {
        paserk(&self.secret)
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// A token for `claims`, valid for `ttl` from now.
    pub fn sign(&self, claims: &AccessClaims, ttl: Duration) -> Result<String, TokenError> {
        let key_err = |e: pasetors::errors::Error| TokenError::Key(e.to_string());
        let mut c = Claims::new_expires_in(&ttl).map_err(key_err)?;
        c.subject(&claims.user_id).map_err(key_err)?;
        c.token_identifier(&claims.token_id).map_err(key_err)?;
        c.add_additional(ENTERPRISE, claims.enterprise_id.as_str()).map_err(key_err)?;
        c.add_additional(USERNAME, claims.username.as_str()).map_err(key_err)?;
        c.add_additional(ISSUED_MS, claims.issued_at_ms).map_err(key_err)?;
        c.add_additional(SESSION, claims.session_id.as_str()).map_err(key_err)?;
        public::sign(&self.secret, &c, None, None).map_err(key_err)
    }
}

impl Verifier {
    /// From a `k4.public.…` PASERK string.
    pub fn from_paserk(public: &str) -> Result<Verifier, TokenError> {
        AsymmetricPublicKey::<V4>::try_from(public.trim())
            .map(|public| Verifier { public })
            .map_err(|e| TokenError::Key(e.to_string()))
    }

    pub fn to_paserk(&self) -> String {
        paserk(&self.public)
    }

    /// Checks the signature and the validity window; returns the claims.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        use pasetors::errors::Error;
        let untrusted = UntrustedToken::<Public, V4>::try_from(token).map_err(|_| TokenError::Malformed)?;
        let trusted = public::verify(&self.public, &untrusted, &ClaimsValidationRules::new(), None, None).map_err(
            |e| match e {
                Error::ClaimValidation(_) => TokenError::Expired,
                Error::TokenValidation => TokenError::BadSignature,
                _ => TokenError::Malformed,
            },
        )?;
        let claims = trusted.payload_claims().ok_or(TokenError::Malformed)?;
        let text = |name: &'static str| {
            claims.get_claim(name).and_then(|v| v.as_str()).map(str::to_owned).ok_or(TokenError::MissingClaim(name))
        };
        Ok(AccessClaims {
            user_id: text("sub")?,
            enterprise_id: text(ENTERPRISE)?,
            username: text(USERNAME)?,
            token_id: text("jti")?,
            issued_at_ms: claims
                .get_claim(ISSUED_MS)
                .and_then(|v| v.as_i64())
                .ok_or(TokenError::MissingClaim(ISSUED_MS))?,
            session_id: claims.get_claim(SESSION).and_then(|v| v.as_str()).unwrap_or_default().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> AccessClaims {
        AccessClaims {
            user_id: "u1".into(),
            enterprise_id: "acme".into(),
            username: "alice".into(),
            token_id: "t1".into(),
            issued_at_ms: 1_700_000_000_000,
            session_id: "s1".into(),
        }
    }

    #[test]
    fn sign_and_verify_round_trip_through_paserk_keys() {
        let signer = Signer::generate().expect("keys");
        let again = Signer::from_paserk(&signer.to_paserk()).expect("secret key parses");
        let verifier = Verifier::from_paserk(&signer.verifier().to_paserk()).expect("public key parses");
        let token = again.sign(&claims(), Duration::from_secs(60)).expect("sign");
        assert!(token.starts_with("v4.public."));
        assert_eq!(verifier.verify(&token), Ok(claims()));
    }

    #[test]
    fn forged_tampered_expired_and_foreign_tokens_are_refused() {
        let signer = Signer::generate().expect("keys");
        let other = Signer::generate().expect("keys");
        let v = signer.verifier();
        let token = signer.sign(&claims(), Duration::from_secs(60)).expect("sign");
        // Signed by another key.
        let foreign = other.sign(&claims(), Duration::from_secs(60)).expect("sign");
        assert_eq!(v.verify(&foreign), Err(TokenError::BadSignature));
        // A flipped character in the signed body.
        let mut tampered = token.clone().into_bytes();
        let i = "v4.public.".len() + 5;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert!(matches!(v.verify(&tampered), Err(TokenError::BadSignature | TokenError::Malformed)));
        // A JWT with alg none, and garbage.
        let jwt_none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1MSJ9.";
        assert_eq!(v.verify(jwt_none), Err(TokenError::Malformed));
        assert_eq!(v.verify(""), Err(TokenError::Malformed));
        // Expired.
        let expired = signer.sign(&claims(), Duration::from_secs(0)).expect("sign");
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(v.verify(&expired), Err(TokenError::Expired));
        assert!(Verifier::from_paserk("k4.public.not-a-key").is_err());
    }
}
