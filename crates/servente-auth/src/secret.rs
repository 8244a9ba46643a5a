//! Secrets: password hashing (argon2id), random values, API token and session id formats.
//!
//! Passwords are hashed with argon2id and the crate's default cost (19 MiB, 2 passes, the
//! OWASP minimum); the PHC string keeps the parameters, so raising them later still verifies
//! old hashes. Tokens and session ids are 256-bit random values: a plain SHA-256 of them is
//! enough to store (nothing to brute-force), and lets a lookup be one indexed query.

use std::sync::LazyLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Fills `n` bytes from the operating system's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // getrandom fails only when the OS has no random source at all; nothing secret may be
    // made without one, so this is a fatal condition, not an input error.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf
}

/// 256 random bits as URL-safe base64 (43 characters): session ids, CSRF tokens, secrets.
pub fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &str) -> String {
    let digest = Sha256::digest(data.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Compares two strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A password for people to type or paste: 4 groups of 5 characters from an alphabet without
/// look-alikes (about 113 bits).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let bytes = random_bytes::<40>();
    let mut out = String::with_capacity(23);
    let mut taken = 0;
    for b in bytes {
        // Rejection sampling keeps every character equally likely.
        if (b as usize) >= 256 - 256 % ALPHABET.len() {
            continue;
        }
        if taken > 0 && taken % 5 == 0 {
            out.push('-');
        }
        out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
        taken += 1;
        if taken == 20 {
            return out;
        }
    }
    // Forty bytes almost always give twenty characters; in the rare case they do not, draw again.
    generate_password()
}

#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(String);

/// The argon2id PHC string of a password, with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).map_err(|e| HashError(e.to_string()))?;
    argon2::Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| HashError(e.to_string()))
}

/// Whether `password` matches a stored PHC string. A malformed stored hash never matches.
pub fn verify_password(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(h) => argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// Spends the same time as a real verification, for unknown users, so that the time of an
/// answer does not tell whether an account exists.
pub fn verify_dummy(password: &str) {
    static DUMMY: LazyLock<Option<String>> = LazyLock::new(|| hash_password("servente-dummy-password").ok());
    if let Some(h) = DUMMY.as_deref() {
        let _ = verify_password(password, h);
    }
}

/// The prefix every API token starts with, so that secret scanners and people can tell one.
pub const TOKEN_PREFIX: &str = "st_";

/// A new token: its public id (16 hex digits) and the full secret `st_<id>_<random>`.
pub fn new_token() -> (String, String) {
    let id: String = random_bytes::<8>().iter().map(|b| format!("{b:02x}")).collect();
    let secret = format!("{TOKEN_PREFIX}{id}_{}", random_token());
    (id, secret)
}

/// The id part of a token secret, if it has the token shape.
pub fn token_id(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix(TOKEN_PREFIX)?;
    let (id, random) = rest.split_at_checked(16)?;
    (id.bytes().all(|b| b.is_ascii_hexdigit()) && random.starts_with('_') && random.len() > 20).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsE", &h));
        assert!(!verify_password("correct horse", "not a hash"));
        assert_ne!(h, hash_password("correct horse").expect("hash"), "salts differ");
    }

    #[test]
    fn generated_passwords_have_the_promised_shape() {
        let p = generate_password();
        assert_eq!(p.len(), 23);
        assert_eq!(p.split('-').count(), 4);
        assert!(p.split('-').all(|g| g.len() == 5));
        assert_ne!(p, generate_password());
    }

    #[test]
    fn token_ids_parse_back() {
        let (id, secret) = new_token();
        assert_eq!(token_id(&secret), Some(id.as_str()));
        assert_eq!(token_id("st_short"), None);
        assert_eq!(token_id("xx_0123456789abcdef_aaaaaaaaaaaaaaaaaaaaaaaaa"), None);
        assert_eq!(token_id("st_0123456789abcdeg_aaaaaaaaaaaaaaaaaaaaaaaaa"), None);
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
    }
}
