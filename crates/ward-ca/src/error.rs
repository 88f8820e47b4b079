/// Why a CSR was refused. Every variant's message can be shown to the
/// client that sent the CSR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The bytes are not a DER PKCS#10 request.
    #[error("the CSR is not a valid DER PKCS#10 certification request")]
    Malformed,
    /// The CSR's self-signature does not verify.
    #[error("the CSR's signature does not verify with its own public key")]
    BadSignature,
    /// The CSR is signed with an algorithm ward does not accept (SHA-1, say).
    #[error("the CSR is signed with an unsupported algorithm (use ECDSA with SHA-256/384, Ed25519, or RSA with SHA-256 or better)")]
    UnsupportedSignatureAlgorithm,
    /// The key type or size is not accepted.
    #[error(
        "unsupported key: {0} (use ECDSA P-256 or P-384, Ed25519, or RSA of at least 2048 bits)"
    )]
    UnsupportedKey(String),
    /// The CSR does not request exactly one SPIFFE ID as URI SAN.
    #[error("the CSR must request exactly one SPIFFE ID as a URI SAN: {0}")]
    BadSpiffeId(String),
}

/// An error from the CA itself (key generation, encoding, sealing).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Key generation or certificate encoding failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A stored or supplied CA certificate or key could not be used.
    #[error("invalid CA material: {0}")]
    InvalidMaterial(String),
    /// Sealing or opening with the key-encryption key failed (wrong key, or
    /// the data was altered).
    #[error("decryption with the key-encryption key failed: wrong key file or corrupted data")]
    Unseal,
    /// The signing CA expires before the requested certificate could be
    /// useful.
    #[error("the signing CA has expired; rotate it with `ward ca rotate`")]
    SigningCaExpired,
}
