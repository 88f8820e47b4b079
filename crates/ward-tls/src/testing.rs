//! Certificates for the unit tests: a root, a signing CA under it, and
//! leaves for services, made by ward's own CA code.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use ward_ca::{now, testing::csr_for, validate_csr, CaMaterial, SigningAuthority};
use ward_identity::{SpiffeId, TrustDomain};

use crate::{MeshTls, Trust};

/// A root and a signing CA under it, in trust domain `example.org`.
pub(crate) struct Pki {
    td: TrustDomain,
    root: CaMaterial,
    signing: CaMaterial,
}

/// A leaf: its ID, serial, chain (leaf, signing CA) and key.
pub(crate) type Leaf = (
    SpiffeId,
    String,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
);

impl Pki {
    pub(crate) fn new() -> Pki {
        let td = TrustDomain::new("example.org").unwrap();
        let t = now();
        let root = CaMaterial::generate_root(&td, Duration::from_secs(86400), t).unwrap();
        let signing = root
            .generate_signing_ca(&td, 1, Duration::from_secs(3600), t)
            .unwrap();
        Pki { td, root, signing }
    }

    /// The root, as a one-certificate bundle.
    pub(crate) fn bundle(&self) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(self.root.cert_der.clone())]
    }

    /// The root of another CA in the same trust domain, as a bundle.
    pub(crate) fn foreign_bundle(&self) -> Vec<CertificateDer<'static>> {
        Pki::new().bundle()
    }

    pub(crate) fn trust(&self) -> Trust {
        Trust {
            bundle: self.bundle(),
            revoked: HashSet::new(),
            trust_domain: "example.org".into(),
        }
    }

    /// A leaf for `service`, valid for 60 s from now.
    pub(crate) fn leaf(&self, service: &str) -> Leaf {
        let ca = SigningAuthority::new(&self.signing).unwrap();
        let id = SpiffeId::for_service(&self.td, "default", service).unwrap();
        let (csr, key) = csr_for(&id);
        let csr = validate_csr(&csr).unwrap();
        let leaf = ca
            .issue_svid(&csr.spki, &id, &[], Duration::from_secs(60), now())
            .unwrap();
        let chain = vec![
            leaf.der.clone(),
            CertificateDer::from(self.signing.cert_der.clone()),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (id, leaf.serial, chain, key)
    }

    /// A leaf for `service` and a `MeshTls` holding it, trusting this PKI.
    pub(crate) fn workload(
        &self,
        service: &str,
    ) -> (SpiffeId, String, Vec<CertificateDer<'static>>, Arc<MeshTls>) {
        let (id, serial, chain, key) = self.leaf(service);
        let tls = MeshTls::new(chain.clone(), key, self.trust()).unwrap();
        (id, serial, chain, tls)
    }
}
