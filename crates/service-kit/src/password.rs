//! Password hashing for every store of passwords (accounts, edge users files): argon2id with the
//! crate's default parameters (m = 19 MiB, t = 2, p = 1) and a random salt, as PHC strings.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

/// An argon2id PHC hash of `password`.
pub fn hash(password: &str) -> Result<String, String> {
    argon2::Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Does `password` match the PHC `hash`? False for a malformed hash.
pub fn verify(hash: &str, password: &[u8]) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password, &h).is_ok())
}

/// Is `hash` a well-formed PHC string?
pub fn is_phc(hash: &str) -> bool {
    PasswordHash::new(hash).is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hash_then_verify() {
        let h = super::hash("s3cret").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify(&h, b"s3cret"));
        assert!(!super::verify(&h, b"wrong"));
        assert!(!super::verify("not a hash", b"s3cret"));
    }
}
