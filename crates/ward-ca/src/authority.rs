use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use ward_identity::{SpiffeId, TrustDomain};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::CaError;

/// Leaves are backdated this much to tolerate clock skew between hosts.
const BACKDATE: Duration = Duration::from_secs(10);

/// The current time, truncated to whole seconds (X.509 has no finer unit).
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).unwrap_or(t)
}

/// A CA certificate with its private key, in the form they are stored in.
#[derive(Clone)]
pub struct CaMaterial {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER. Never logged.
    pub key_pkcs8: Vec<u8>,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaMaterial")
            .field("cert_der", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

impl CaMaterial {
    /// A new self-signed root for `td`, ECDSA P-256, valid for `ttl`.
    pub fn generate_root(
        td: &TrustDomain,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<CaMaterial, CaError> {
        let key = KeyPair::generate()?;
        let params = ca_params(td, &format!("ward root CA ({td})"), now, now + ttl)?;
        let cert = params.self_signed(&key)?;
        Ok(CaMaterial {
            cert_der: cert.der().to_vec(),
            key_pkcs8: key.serialize_der(),
        })
    }

    /// Reads an existing CA certificate and key (PEM) to use as upstream
    /// root. The certificate must be a CA that may sign certificates.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CaMaterial, CaError> {
        let certs = crate::parse_pem_certs(cert_pem.as_bytes())
            .map_err(|e| CaError::InvalidMaterial(format!("upstream CA certificate: {e}")))?;
        let cert_der = certs.into_iter().next().ok_or_else(|| {
            CaError::InvalidMaterial("no certificate in the upstream CA file".into())
        })?;
        let key_pkcs8 = crate::parse_pem_key(key_pem.as_bytes())
            .map_err(|e| CaError::InvalidMaterial(format!("upstream CA key: {e}")))?;
        let key = KeyPair::try_from(&PrivatePkcs8KeyDer::from(key_pkcs8.as_slice()))
            .map_err(|e| CaError::InvalidMaterial(format!("upstream CA key: {e}")))?;
        let (_, parsed) = X509Certificate::from_der(&cert_der)
            .map_err(|e| CaError::InvalidMaterial(format!("upstream CA certificate: {e}")))?;
        ward_identity::validate_ca(&parsed)
            .map_err(|e| CaError::InvalidMaterial(format!("upstream CA certificate: {e}")))?;
        if parsed.public_key().raw != spki_of(&key).as_slice() {
            return Err(CaError::InvalidMaterial(
                "the upstream CA key does not match its certificate".into(),
            ));
        }
        Ok(CaMaterial {
            cert_der,
            key_pkcs8,
        })
    }

    /// A new signing (intermediate) CA below this one, valid for `ttl` but
    /// never beyond this CA's own expiry.
    pub fn generate_signing_ca(
        &self,
        td: &TrustDomain,
        generation: u64,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<CaMaterial, CaError> {
        let parent_key = self.key_pair()?;
        let parent =
            Issuer::from_ca_cert_der(&CertificateDer::from(self.cert_der.as_slice()), parent_key)?;
        let not_after = (now + ttl).min(self.not_after()?);
        let key = KeyPair::generate()?;
        let mut params = ca_params(
            td,
            &format!("ward signing CA {generation} ({td})"),
            now,
            not_after,
        )?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &parent)?;
        Ok(CaMaterial {
            cert_der: cert.der().to_vec(),
            key_pkcs8: key.serialize_der(),
        })
    }

    /// The certificate's expiry.
    pub fn not_after(&self) -> Result<OffsetDateTime, CaError> {
        let (_, parsed) = X509Certificate::from_der(&self.cert_der)
            .map_err(|e| CaError::InvalidMaterial(e.to_string()))?;
        Ok(parsed.validity().not_after.to_datetime())
    }

    fn key_pair(&self) -> Result<KeyPair, CaError> {
        KeyPair::try_from(&PrivatePkcs8KeyDer::from(self.key_pkcs8.as_slice()))
            .map_err(|e| CaError::InvalidMaterial(format!("CA key: {e}")))
    }
}

fn spki_of(key: &KeyPair) -> Vec<u8> {
    use rcgen::PublicKeyData;
    key.subject_public_key_info()
}

fn ca_params(
    td: &TrustDomain,
    cn: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ward");
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![SanType::URI(td.id_string().try_into()?)];
    Ok(params)
}

/// 128 random bits, positive and of fixed length.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::InvalidMaterial("no randomness".into()))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A certificate the CA has signed.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The leaf, DER.
    pub der: CertificateDer<'static>,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// The identity in the certificate.
    pub spiffe_id: SpiffeId,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// A signing CA ready to issue X509-SVIDs.
pub struct SigningAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    serial: String,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for SigningAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningAuthority")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl SigningAuthority {
    /// Loads a signing CA from its stored material.
    pub fn new(material: &CaMaterial) -> Result<SigningAuthority, CaError> {
        let cert_der = CertificateDer::from(material.cert_der.clone());
        let (_, parsed) = X509Certificate::from_der(&cert_der)
            .map_err(|e| CaError::InvalidMaterial(e.to_string()))?;
        let serial = hex::encode(parsed.raw_serial());
        let not_after = parsed.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&cert_der, material.key_pair()?)?;
        Ok(SigningAuthority {
            issuer,
            cert_der,
            serial,
            not_after,
        })
    }

    /// The signing CA's certificate.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The signing CA's serial number, lowercase hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The signing CA's expiry; no leaf outlives it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Issues an X509-SVID for `id` to the public key `spki` (DER
    /// SubjectPublicKeyInfo): one URI SAN, `cA=false`, critical key usage
    /// `digitalSignature`, EKU serverAuth + clientAuth, plus optional DNS
    /// or IP SANs (for servers that browsers and curl also reach). Valid
    /// from `now` (backdated a few seconds for clock skew) for `ttl`, capped
    /// at the signing CA's expiry.
    pub fn issue_svid(
        &self,
        spki: &[u8],
        id: &SpiffeId,
        extra_names: &[String],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, CaError> {
        if now >= self.not_after {
            return Err(CaError::SigningCaExpired);
        }
        let public_key = SubjectPublicKeyInfo::from_der(spki)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ward");
        params.distinguished_name = dn;
        let serial = random_serial()?;
        let serial_hex = hex::encode(serial.as_ref());
        params.serial_number = Some(serial);
        params.not_before = now - BACKDATE;
        params.not_after = (now + ttl).min(self.not_after);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let mut sans = vec![SanType::URI(id.as_str().try_into()?)];
        for name in extra_names {
            sans.push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.as_str().try_into()?),
            });
        }
        params.subject_alt_names = sans;
        let cert = params.signed_by(&public_key, &self.issuer)?;
        Ok(IssuedCert {
            der: cert.der().clone(),
            serial: serial_hex,
            spiffe_id: id.clone(),
            not_before: params.not_before,
            not_after: params.not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::csr_for;
    use crate::validate_csr;

    fn setup() -> (TrustDomain, CaMaterial, CaMaterial) {
        let td = TrustDomain::new("example.org").unwrap();
        let root = CaMaterial::generate_root(&td, Duration::from_secs(365 * 86400), now()).unwrap();
        let signing = root
            .generate_signing_ca(&td, 1, Duration::from_secs(7 * 86400), now())
            .unwrap();
        (td, root, signing)
    }

    fn verify_chain(
        root: &CaMaterial,
        chain: &[&[u8]],
        leaf: &[u8],
        at: OffsetDateTime,
    ) -> Result<(), webpki::Error> {
        let root_der = CertificateDer::from(root.cert_der.clone());
        let anchor = webpki::anchor_from_trusted_cert(&root_der).unwrap();
        let inter: Vec<CertificateDer<'_>> =
            chain.iter().map(|c| CertificateDer::from(*c)).collect();
        let leaf = CertificateDer::from(leaf);
        let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
        let algs = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        let t = rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
            at.unix_timestamp() as u64,
        ));
        ee.verify_for_usage(
            algs.all,
            &[anchor],
            &inter,
            t,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
    }

    #[test]
    fn issues_valid_svids() {
        let (td, root, signing) = setup();
        let (_, parsed_root) = X509Certificate::from_der(&root.cert_der).unwrap();
        assert_eq!(
            ward_identity::validate_ca(&parsed_root)
                .unwrap()
                .unwrap()
                .as_str(),
            "spiffe://example.org"
        );
        let (_, parsed_signing) = X509Certificate::from_der(&signing.cert_der).unwrap();
        ward_identity::validate_ca(&parsed_signing).unwrap();

        let ca = SigningAuthority::new(&signing).unwrap();
        let id = SpiffeId::for_service(&td, "default", "web").unwrap();
        let (csr, _) = csr_for(&id);
        let csr = validate_csr(&csr).unwrap();
        let t = now();
        let leaf = ca
            .issue_svid(&csr.spki, &id, &[], Duration::from_secs(3600), t)
            .unwrap();
        let (_, parsed) = X509Certificate::from_der(&leaf.der).unwrap();
        assert_eq!(ward_identity::validate_leaf(&parsed).unwrap(), id);
        assert_eq!(hex::encode(parsed.raw_serial()), leaf.serial);
        assert_eq!(
            parsed.validity().not_after.to_datetime(),
            t + Duration::from_secs(3600)
        );
        assert_eq!(parsed.public_key().raw, csr.spki.as_slice());
        verify_chain(&root, &[&signing.cert_der], &leaf.der, t).unwrap();
        // Expired an hour later, and not valid from another root.
        assert!(verify_chain(
            &root,
            &[&signing.cert_der],
            &leaf.der,
            t + Duration::from_secs(3601)
        )
        .is_err());
        let (_, other_root, _) = setup();
        assert!(verify_chain(&other_root, &[&signing.cert_der], &leaf.der, t).is_err());
    }

    #[test]
    fn leaf_never_outlives_signing_ca() {
        let (td, root, _) = setup();
        let short = root
            .generate_signing_ca(&td, 2, Duration::from_secs(60), now())
            .unwrap();
        let ca = SigningAuthority::new(&short).unwrap();
        let id = SpiffeId::for_service(&td, "default", "web").unwrap();
        let (csr, _) = csr_for(&id);
        let csr = validate_csr(&csr).unwrap();
        let leaf = ca
            .issue_svid(&csr.spki, &id, &[], Duration::from_secs(86400), now())
            .unwrap();
        assert_eq!(leaf.not_after, ca.not_after());
        assert!(matches!(
            ca.issue_svid(
                &csr.spki,
                &id,
                &[],
                Duration::from_secs(1),
                now() + Duration::from_secs(61)
            ),
            Err(CaError::SigningCaExpired)
        ));
    }

    #[test]
    fn upstream_ca_from_pem() {
        let (td, root, _) = setup();
        let cert_pem = crate::to_pem("CERTIFICATE", &root.cert_der);
        let key_pem = crate::to_pem("PRIVATE KEY", &root.key_pkcs8);
        let up = CaMaterial::from_pem(&cert_pem, &key_pem).unwrap();
        assert_eq!(up.cert_der, root.cert_der);
        up.generate_signing_ca(&td, 1, Duration::from_secs(60), now())
            .unwrap();
        let (_, other, _) = setup();
        let other_key = crate::to_pem("PRIVATE KEY", &other.key_pkcs8);
        assert!(
            CaMaterial::from_pem(&cert_pem, &other_key).is_err(),
            "mismatched key"
        );
        assert!(CaMaterial::from_pem("junk", &key_pem).is_err());
    }
}
