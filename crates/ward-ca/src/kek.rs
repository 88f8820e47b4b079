use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::CaError;

/// A key-encryption key: AES-256-GCM over every private key the server
/// stores, so that a copy of the database alone reveals no key.
pub struct Kek(LessSafeKey);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// Length of the raw key in bytes.
    pub const LEN: usize = 32;

    /// A new random key, returned with its raw bytes for storage.
    pub fn generate() -> Result<(Kek, [u8; 32]), CaError> {
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| CaError::InvalidMaterial("no randomness".into()))?;
        Ok((Kek::from_bytes(&raw)?, raw))
    }

    /// A key from its raw bytes.
    pub fn from_bytes(raw: &[u8]) -> Result<Kek, CaError> {
        let key = UnboundKey::new(&AES_256_GCM, raw).map_err(|_| {
            CaError::InvalidMaterial("the key-encryption key must be 32 bytes".into())
        })?;
        Ok(Kek(LessSafeKey::new(key)))
    }

    /// Encrypts `plaintext`, binding it to `context` (what the data is), so
    /// a sealed value cannot be swapped for another.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CaError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CaError::InvalidMaterial("no randomness".into()))?;
        let mut buf = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut buf,
            )
            .map_err(|_| CaError::Unseal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Decrypts what [`Kek::seal`] produced with the same `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CaError> {
        if sealed.len() < NONCE_LEN {
            return Err(CaError::Unseal);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CaError::Unseal)?;
        let mut buf = ct.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(context), &mut buf)
            .map_err(|_| CaError::Unseal)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let (kek, raw) = Kek::generate().unwrap();
        let sealed = kek.seal(b"ca:1", b"secret key").unwrap();
        assert!(!sealed.windows(10).any(|w| w == b"secret key"));
        assert_eq!(
            Kek::from_bytes(&raw)
                .unwrap()
                .open(b"ca:1", &sealed)
                .unwrap(),
            b"secret key"
        );
        assert!(kek.open(b"ca:2", &sealed).is_err(), "context is bound");
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(kek.open(b"ca:1", &bad).is_err());
        let (other, _) = Kek::generate().unwrap();
        assert!(other.open(b"ca:1", &sealed).is_err());
        assert!(kek.open(b"ca:1", b"short").is_err());
    }
}
