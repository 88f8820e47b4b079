"""Checks a ward-issued X509-SVID with Python's `cryptography`, a library
nobody here wrote: the chain verifies as a client certificate against the
trust bundle, and every X509-SVID rule holds.

usage: check_svid.py CHAIN_PEM BUNDLE_PEM EXPECTED_SPIFFE_ID
"""
import datetime
import sys

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store


def main() -> None:
    chain_pem, bundle_pem, expected = sys.argv[1], sys.argv[2], sys.argv[3]
    chain = x509.load_pem_x509_certificates(open(chain_pem, "rb").read())
    bundle = x509.load_pem_x509_certificates(open(bundle_pem, "rb").read())
    leaf, intermediates = chain[0], chain[1:]

    # Chain to the bundle, as a TLS client certificate (no name check).
    verifier = PolicyBuilder().store(Store(bundle)).build_client_verifier()
    verified = verifier.verify(leaf, intermediates)
    uris = [n.value for n in verified.subjects if isinstance(n, x509.UniformResourceIdentifier)]
    assert uris == [expected], uris

    # X509-SVID rules.
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [expected]
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.value.ca is False
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc

    # Signing CAs: cA=true, keyCertSign, trust-domain URI without a path.
    td = expected.split("/")[2]
    for ca in intermediates + bundle:
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
        assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
        ca_uris = ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
        assert ca_uris == ["spiffe://" + td], ca_uris
    print("ok")


if __name__ == "__main__":
    main()
