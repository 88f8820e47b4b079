use ward_identity::SpiffeId;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::CsrError;

const MAX_CSR_LEN: usize = 16 * 1024;
const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;

/// The key types ward accepts in a CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyKind {
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA with the given modulus size in bits.
    Rsa(usize),
}

/// A CSR whose signature, key and requested identity have been checked.
#[derive(Debug, Clone)]
pub struct ValidatedCsr {
    /// The requester's public key, DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    /// The one SPIFFE ID the CSR asks for.
    pub spiffe_id: SpiffeId,
    /// The key's type.
    pub key: KeyKind,
}

/// Parses a DER CSR and checks its self-signature, its key (P-256, P-384,
/// Ed25519, RSA of 2048 to 8192 bits) and that it requests exactly one
/// SPIFFE ID. Whether that ID is the one the caller may have is the
/// caller's decision.
pub fn validate_csr(der: &[u8]) -> Result<ValidatedCsr, CsrError> {
    if der.len() > MAX_CSR_LEN {
        return Err(CsrError::Malformed);
    }
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrError::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed);
    }
    let info = &csr.certification_request_info;
    let key = key_kind(&info.subject_pki)?;

    let alg = &csr.signature_algorithm.algorithm;
    let alg_ok = match key {
        KeyKind::EcdsaP256 | KeyKind::EcdsaP384 => {
            *alg == OID_SIG_ECDSA_WITH_SHA256 || *alg == OID_SIG_ECDSA_WITH_SHA384
        }
        KeyKind::Ed25519 => *alg == OID_SIG_ED25519,
        KeyKind::Rsa(_) => [
            OID_PKCS1_SHA256WITHRSA,
            OID_PKCS1_SHA384WITHRSA,
            OID_PKCS1_SHA512WITHRSA,
            OID_PKCS1_RSASSAPSS,
        ]
        .iter()
        .any(|o| o == alg),
    };
    if !alg_ok {
        return Err(CsrError::UnsupportedSignatureAlgorithm);
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    let mut uris = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                if let GeneralName::URI(u) = name {
                    uris.push(*u);
                }
            }
        }
    }
    let spiffe_id = match uris.as_slice() {
        [one] => SpiffeId::parse(one).map_err(|e| CsrError::BadSpiffeId(e.to_string()))?,
        [] => return Err(CsrError::BadSpiffeId("none requested".into())),
        many => {
            return Err(CsrError::BadSpiffeId(format!(
                "{} URI SANs requested",
                many.len()
            )))
        }
    };
    if spiffe_id.is_trust_domain_id() {
        return Err(CsrError::BadSpiffeId("the ID has no path".into()));
    }
    Ok(ValidatedCsr {
        spki: info.subject_pki.raw.to_vec(),
        spiffe_id,
        key,
    })
}

fn key_kind(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<KeyKind, CsrError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".into()))?;
        return if curve == OID_EC_P256 {
            Ok(KeyKind::EcdsaP256)
        } else if curve == OID_NIST_EC_P384 {
            Ok(KeyKind::EcdsaP384)
        } else {
            Err(CsrError::UnsupportedKey(format!("EC curve {curve}")))
        };
    }
    if *alg == OID_SIG_ED25519 {
        return Ok(KeyKind::Ed25519);
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(CsrError::UnsupportedKey("malformed RSA key".into())),
        };
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(CsrError::UnsupportedKey(format!("RSA-{bits}")));
        }
        return Ok(KeyKind::Rsa(bits));
    }
    Err(CsrError::UnsupportedKey(format!("algorithm {alg}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{csr_for, csr_with};
    use rcgen::{KeyPair, SanType};

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://td/ns/default/sa/web").unwrap()
    }

    #[test]
    fn accepts_supported_keys() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let key = KeyPair::generate_for(alg).unwrap();
            let csr = csr_with(&key, vec![SanType::URI(id().as_str().try_into().unwrap())]);
            let v = validate_csr(&csr).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(v.spiffe_id, id());
        }
        let (csr, _) = csr_for(&id());
        assert_eq!(validate_csr(&csr).unwrap().key, KeyKind::EcdsaP256);
    }

    #[test]
    fn rsa_sizes() {
        let ok =
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
        let csr = csr_with(&ok, vec![SanType::URI(id().as_str().try_into().unwrap())]);
        assert_eq!(validate_csr(&csr).unwrap().key, KeyKind::Rsa(2048));
        let weak = crate::testing::rsa_1024_csr();
        assert_eq!(
            validate_csr(&weak).unwrap_err(),
            CsrError::UnsupportedKey("RSA-1024".into())
        );
    }

    #[test]
    fn rejects_bad_csrs() {
        assert_eq!(validate_csr(b"garbage").unwrap_err(), CsrError::Malformed);
        assert_eq!(validate_csr(&[]).unwrap_err(), CsrError::Malformed);
        let (csr, _) = csr_for(&id());
        let mut trailing = csr.clone();
        trailing.push(0);
        assert_eq!(validate_csr(&trailing).unwrap_err(), CsrError::Malformed);

        // Flip a bit in the signature (the last byte).
        let mut bad_sig = csr.clone();
        *bad_sig.last_mut().unwrap() ^= 0x01;
        assert_eq!(validate_csr(&bad_sig).unwrap_err(), CsrError::BadSignature);

        // Flip a bit inside the signed part (in the SPKI), same length.
        let mut tampered = csr.clone();
        let i = tampered.len() / 2;
        tampered[i] ^= 0x01;
        assert!(validate_csr(&tampered).is_err());

        let key = KeyPair::generate().unwrap();
        let none = csr_with(&key, vec![]);
        assert!(matches!(
            validate_csr(&none).unwrap_err(),
            CsrError::BadSpiffeId(_)
        ));
        let two = csr_with(
            &key,
            vec![
                SanType::URI("spiffe://td/a".try_into().unwrap()),
                SanType::URI("spiffe://td/b".try_into().unwrap()),
            ],
        );
        assert!(matches!(
            validate_csr(&two).unwrap_err(),
            CsrError::BadSpiffeId(_)
        ));
        let bare = csr_with(&key, vec![SanType::URI("spiffe://td".try_into().unwrap())]);
        assert!(matches!(
            validate_csr(&bare).unwrap_err(),
            CsrError::BadSpiffeId(_)
        ));
        let http = csr_with(&key, vec![SanType::URI("https://td/a".try_into().unwrap())]);
        assert!(matches!(
            validate_csr(&http).unwrap_err(),
            CsrError::BadSpiffeId(_)
        ));
    }
}
