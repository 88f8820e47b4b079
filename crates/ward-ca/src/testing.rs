//! Helpers for tests of this crate and its users: CSRs for given
//! identities and keys. Not for production use.
use rcgen::{CertificateParams, KeyPair, SanType};
use ward_identity::SpiffeId;

/// A DER CSR for `id` with a new P-256 key, and that key.
pub fn csr_for(id: &SpiffeId) -> (Vec<u8>, KeyPair) {
    let key = KeyPair::generate().expect("P-256 key generation");
    let san = SanType::URI(id.as_str().try_into().expect("a SPIFFE ID is a valid URI"));
    (csr_with(&key, vec![san]), key)
}

/// A DER CSR signed by `key` requesting the given SANs.
pub fn csr_with(key: &KeyPair, sans: Vec<SanType>) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params
        .serialize_request(key)
        .expect("CSR encoding")
        .der()
        .to_vec()
}

/// A DER CSR with an RSA-1024 key for `spiffe://td/ns/default/sa/web`
/// (made with `openssl req`; no Rust library here will generate one).
pub fn rsa_1024_csr() -> Vec<u8> {
    include_bytes!("../testdata/rsa1024.csr.der").to_vec()
}
