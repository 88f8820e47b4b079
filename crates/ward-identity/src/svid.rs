//! The X509-SVID rules (SPIFFE X509-SVID standard, sections 4 and 5) applied
//! to a parsed certificate. Chain building and signatures are checked
//! elsewhere; this is what makes a certificate an SVID at all.
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::{IdError, SpiffeId};

/// Why a certificate is not a valid X509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// An extension could not be parsed or appears twice.
    #[error("certificate extensions are malformed: {0}")]
    Malformed(String),
    /// A leaf has no URI SAN, or more than one.
    #[error("an X509-SVID must have exactly one URI SAN (found {0})")]
    UriSanCount(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("the URI SAN is not a valid SPIFFE ID: {0}")]
    BadSpiffeId(#[from] IdError),
    /// A leaf's SPIFFE ID has no path.
    #[error("a leaf SVID's SPIFFE ID must have a path")]
    LeafWithoutPath,
    /// A CA's URI SAN has a path.
    #[error("a signing certificate's SPIFFE ID must not have a path")]
    CaWithPath,
    /// Basic constraints missing, or `cA` set wrong for the role.
    #[error("basic constraints: {0}")]
    BasicConstraints(&'static str),
    /// Key usage missing, not critical, or with the wrong bits for the role.
    #[error("key usage: {0}")]
    KeyUsage(&'static str),
    /// Extended key usage present without both serverAuth and clientAuth.
    #[error("extended key usage must include both serverAuth and clientAuth when present")]
    ExtendedKeyUsage,
    /// A CA certificate constrains URI names.
    #[error("signing certificates must not carry URI name constraints")]
    UriNameConstraints,
}

/// Checks a leaf X509-SVID and returns its SPIFFE ID.
///
/// Rules: exactly one URI SAN holding a SPIFFE ID with a path; basic
/// constraints present with `cA=false`; a critical key usage with
/// `digitalSignature` and neither `keyCertSign` nor `cRLSign`; if extended
/// key usage is present, both serverAuth and clientAuth.
pub fn validate_leaf(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let id = single_uri_san(cert)?.ok_or(SvidError::UriSanCount(0))?;
    if id.is_trust_domain_id() {
        return Err(SvidError::LeafWithoutPath);
    }
    match cert.basic_constraints().map_err(malformed)? {
        Some(bc) if !bc.value.ca => {}
        Some(_) => return Err(SvidError::BasicConstraints("a leaf must have cA=false")),
        None => {
            return Err(SvidError::BasicConstraints(
                "a leaf must carry basic constraints with cA=false",
            ))
        }
    }
    let ku = cert
        .key_usage()
        .map_err(malformed)?
        .ok_or(SvidError::KeyUsage("missing"))?;
    if !ku.critical {
        return Err(SvidError::KeyUsage("must be critical"));
    }
    if !ku.value.digital_signature() {
        return Err(SvidError::KeyUsage("a leaf must have digitalSignature"));
    }
    if ku.value.key_cert_sign() || ku.value.crl_sign() {
        return Err(SvidError::KeyUsage(
            "a leaf must not have keyCertSign or cRLSign",
        ));
    }
    if let Some(eku) = cert.extended_key_usage().map_err(malformed)? {
        if !(eku.value.server_auth && eku.value.client_auth) {
            return Err(SvidError::ExtendedKeyUsage);
        }
    }
    Ok(id)
}

/// Checks a signing (CA) certificate of a SPIFFE trust domain.
///
/// Rules: basic constraints with `cA=true`; key usage with `keyCertSign`;
/// a URI SAN, if present, is a bare trust-domain ID; no URI name
/// constraints.
pub fn validate_ca(cert: &X509Certificate<'_>) -> Result<Option<SpiffeId>, SvidError> {
    match cert.basic_constraints().map_err(malformed)? {
        Some(bc) if bc.value.ca => {}
        _ => {
            return Err(SvidError::BasicConstraints(
                "a signing certificate must have cA=true",
            ))
        }
    }
    let ku = cert
        .key_usage()
        .map_err(malformed)?
        .ok_or(SvidError::KeyUsage("missing"))?;
    if !ku.value.key_cert_sign() {
        return Err(SvidError::KeyUsage(
            "a signing certificate must have keyCertSign",
        ));
    }
    if let Some(nc) = cert.name_constraints().map_err(malformed)? {
        let subtrees = nc
            .value
            .permitted_subtrees
            .iter()
            .chain(nc.value.excluded_subtrees.iter())
            .flatten();
        if subtrees
            .into_iter()
            .any(|t| matches!(t.base, GeneralName::URI(_)))
        {
            return Err(SvidError::UriNameConstraints);
        }
    }
    let id = single_uri_san(cert).or_else(|e| match e {
        SvidError::UriSanCount(_) => Ok(None),
        e => Err(e),
    })?;
    if let Some(id) = &id {
        if !id.is_trust_domain_id() {
            return Err(SvidError::CaWithPath);
        }
    }
    Ok(id)
}

fn single_uri_san(cert: &X509Certificate<'_>) -> Result<Option<SpiffeId>, SvidError> {
    let Some(san) = cert.subject_alternative_name().map_err(malformed)? else {
        return Ok(None);
    };
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(SpiffeId::parse(one)?)),
        many => Err(SvidError::UriSanCount(many.len())),
    }
}

fn malformed(e: x509_parser::error::X509Error) -> SvidError {
    SvidError::Malformed(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    use x509_parser::prelude::FromDer;

    fn leaf_params() -> CertificateParams {
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI("spiffe://td/ns/a/sa/b".try_into().unwrap())];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p
    }

    fn check(p: CertificateParams, f: impl Fn(&X509Certificate<'_>)) {
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let (_, parsed) = X509Certificate::from_der(cert.der()).unwrap();
        f(&parsed);
    }

    #[test]
    fn leaf_rules() {
        check(leaf_params(), |c| {
            assert_eq!(validate_leaf(c).unwrap().as_str(), "spiffe://td/ns/a/sa/b")
        });

        type Mutate = fn(&mut CertificateParams);
        let bad: Vec<(&str, Mutate, SvidError)> = vec![
            (
                "no SAN",
                |p| p.subject_alt_names.clear(),
                SvidError::UriSanCount(0),
            ),
            (
                "two URI SANs",
                |p| {
                    p.subject_alt_names
                        .push(SanType::URI("spiffe://td/x".try_into().unwrap()))
                },
                SvidError::UriSanCount(2),
            ),
            (
                "not a SPIFFE URI",
                |p| p.subject_alt_names = vec![SanType::URI("https://td/x".try_into().unwrap())],
                SvidError::BadSpiffeId(IdError::WrongScheme),
            ),
            (
                "no path",
                |p| p.subject_alt_names = vec![SanType::URI("spiffe://td".try_into().unwrap())],
                SvidError::LeafWithoutPath,
            ),
            (
                "cA=true",
                |p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained),
                SvidError::BasicConstraints("a leaf must have cA=false"),
            ),
            (
                "no basic constraints",
                |p| p.is_ca = IsCa::NoCa,
                SvidError::BasicConstraints("a leaf must carry basic constraints with cA=false"),
            ),
            (
                "no key usage",
                |p| p.key_usages.clear(),
                SvidError::KeyUsage("missing"),
            ),
            (
                "keyCertSign",
                |p| p.key_usages.push(KeyUsagePurpose::KeyCertSign),
                SvidError::KeyUsage("a leaf must not have keyCertSign or cRLSign"),
            ),
            (
                "no digitalSignature",
                |p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment],
                SvidError::KeyUsage("a leaf must have digitalSignature"),
            ),
            (
                "serverAuth only",
                |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth],
                SvidError::ExtendedKeyUsage,
            ),
        ];
        for (name, mutate, want) in bad {
            let mut p = leaf_params();
            mutate(&mut p);
            check(p, |c| {
                assert_eq!(validate_leaf(c), Err(want.clone()), "{name}")
            });
        }
    }

    #[test]
    fn ca_rules() {
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.subject_alt_names = vec![SanType::URI("spiffe://td".try_into().unwrap())];
        check(p.clone(), |c| {
            assert_eq!(validate_ca(c).unwrap().unwrap().as_str(), "spiffe://td")
        });

        let mut with_path = p.clone();
        with_path.subject_alt_names = vec![SanType::URI("spiffe://td/x".try_into().unwrap())];
        check(with_path, |c| {
            assert_eq!(validate_ca(c), Err(SvidError::CaWithPath))
        });

        let mut no_sign = p.clone();
        no_sign.key_usages = vec![KeyUsagePurpose::CrlSign];
        check(no_sign, |c| {
            assert!(matches!(validate_ca(c), Err(SvidError::KeyUsage(_))))
        });

        check(leaf_params(), |c| {
            assert!(matches!(
                validate_ca(c),
                Err(SvidError::BasicConstraints(_))
            ))
        });

        let mut constrained = p;
        constrained.name_constraints = Some(rcgen::NameConstraints {
            permitted_subtrees: vec![rcgen::GeneralSubtree::DnsName("td".into())],
            excluded_subtrees: vec![],
        });
        check(constrained, |c| assert!(validate_ca(c).is_ok()));
    }
}
