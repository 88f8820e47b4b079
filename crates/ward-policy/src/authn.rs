//! `RequestAuthentication`: which JWT issuers a service accepts bearer
//! tokens from, and what the sidecar does with a valid one.
use serde::{Deserialize, Serialize};

use crate::model::{check_name, Metadata, PolicyError, Selector};

/// A `RequestAuthentication` document (Istio's shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAuthentication {
    /// `ward/v1` (or Istio's `security.istio.io/v1`, `v1beta1`).
    pub api_version: String,
    /// `RequestAuthentication`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: Metadata,
    /// What it selects and which issuers it trusts.
    #[serde(default)]
    pub spec: AuthnSpec,
}

/// The body of a [`RequestAuthentication`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthnSpec {
    /// Which service it applies to; absent: every service in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// One rule per trusted issuer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// How tokens from one issuer are found, verified and passed on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRule {
    /// The exact `iss`.
    pub issuer: String,
    /// Accepted `aud` values; empty: the target service's name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where the issuer publishes its keys (HTTPS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The keys inline, as a JWKS JSON string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Where the token is; default `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Pass the token on to the application (default: removed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_original_token: bool,
    /// Copy claims into request headers for the application.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// A ward extension: the JOSE `typ` values accepted (one, or a list;
    /// compared case-insensitively, `application/` prefix allowed).
    /// Omitted: any `typ` or none, as Istio does. ward's own OAuth issuer
    /// always requires `at+jwt`.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "one_or_many"
    )]
    pub token_type: Vec<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// A header that carries the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtHeader {
    /// Header name.
    pub name: String,
    /// Text before the token, e.g. `Bearer `.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A claim copied into a header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimToHeader {
    /// Header to set (any copy from the caller is removed first).
    pub header: String,
    /// Claim name.
    pub claim: String,
}

/// Headers the sidecar owns; a claim may not be written into them.
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "authorization",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "x-ward-peer-id",
    "x-forwarded-client-cert",
];

fn check_header_name(path: &str, v: &str) -> Result<(), PolicyError> {
    let ok = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::new(
            path,
            format!("{v:?} is not a header name"),
        ))
    }
}

impl RequestAuthentication {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// Checks what serde cannot: names, issuers, key sources, headers.
    pub fn validate(&self) -> Result<(), PolicyError> {
        crate::model::check_api_version(&self.api_version)?;
        if self.kind != "RequestAuthentication" {
            return Err(PolicyError::new(
                "kind",
                format!("expected RequestAuthentication, found {:?}", self.kind),
            ));
        }
        check_name("metadata.name", &self.metadata.name)?;
        check_name("metadata.namespace", &self.metadata.namespace)?;
        if let Some(sel) = &self.spec.selector {
            check_name("spec.selector.service", &sel.service)?;
        }
        let mut issuers = std::collections::HashSet::new();
        for (i, r) in self.spec.jwt_rules.iter().enumerate() {
            let rp = format!("spec.jwtRules[{i}]");
            if r.issuer.is_empty() {
                return Err(PolicyError::new(
                    format!("{rp}.issuer"),
                    "an issuer is required",
                ));
            }
            if !issuers.insert(r.issuer.as_str()) {
                return Err(PolicyError::new(
                    format!("{rp}.issuer"),
                    format!("issuer {:?} has two rules", r.issuer),
                ));
            }
            match (&r.jwks_uri, &r.jwks) {
                (Some(_), Some(_)) => {
                    return Err(PolicyError::new(rp, "give jwksUri or jwks, not both"))
                }
                (Some(uri), None) if !uri.starts_with("https://") => {
                    return Err(PolicyError::new(
                        format!("{rp}.jwksUri"),
                        format!("{uri:?}: keys are fetched over https:// only"),
                    ))
                }
                (None, Some(jwks)) => {
                    let set = ward_jwt::JwkSet::from_json(jwks)
                        .map_err(|e| PolicyError::new(format!("{rp}.jwks"), e.to_string()))?;
                    if set.keys.is_empty() {
                        return Err(PolicyError::new(
                            format!("{rp}.jwks"),
                            "no usable signature key (EC P-256/P-384, Ed25519 or RSA ≥ 2048)",
                        ));
                    }
                }
                _ => {}
            }
            for (j, a) in r.audiences.iter().enumerate() {
                if a.is_empty() {
                    return Err(PolicyError::new(
                        format!("{rp}.audiences[{j}]"),
                        "empty value",
                    ));
                }
            }
            for (j, h) in r.from_headers.iter().enumerate() {
                check_header_name(&format!("{rp}.fromHeaders[{j}].name"), &h.name)?;
            }
            for (j, t) in r.token_type.iter().enumerate() {
                // A media type's subtype (RFC 7515 §4.1.9): a token, such
                // as JWT, at+jwt or secevent+jwt.
                let ok = !t.is_empty()
                    && t.len() <= 64
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+/".contains(&b));
                if !ok {
                    return Err(PolicyError::new(
                        format!("{rp}.tokenType[{j}]"),
                        format!("{t:?} is not a token type (examples: JWT, at+jwt)"),
                    ));
                }
            }
            for (j, o) in r.output_claim_to_headers.iter().enumerate() {
                let p = format!("{rp}.outputClaimToHeaders[{j}]");
                check_header_name(&format!("{p}.header"), &o.header)?;
                if RESERVED_HEADERS.contains(&o.header.to_ascii_lowercase().as_str()) {
                    return Err(PolicyError::new(
                        format!("{p}.header"),
                        format!(
                            "{:?} is set by the sidecar and cannot carry a claim",
                            o.header
                        ),
                    ));
                }
                if o.claim.is_empty() {
                    return Err(PolicyError::new(
                        format!("{p}.claim"),
                        "a claim name is required",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A document `ward policy apply` accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// `kind: AuthorizationPolicy`.
    Authorization(crate::AuthorizationPolicy),
    /// `kind: RequestAuthentication`.
    Authentication(RequestAuthentication),
}

impl Document {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        match self {
            Document::Authorization(p) => p.key(),
            Document::Authentication(p) => p.key(),
        }
    }

    /// `AuthorizationPolicy` or `RequestAuthentication`.
    pub fn kind(&self) -> &'static str {
        match self {
            Document::Authorization(_) => "AuthorizationPolicy",
            Document::Authentication(_) => "RequestAuthentication",
        }
    }

    /// The document's metadata.
    pub fn metadata(&self) -> &Metadata {
        match self {
            Document::Authorization(p) => &p.metadata,
            Document::Authentication(p) => &p.metadata,
        }
    }

    /// The selected service, if any.
    pub fn selector(&self) -> Option<&Selector> {
        match self {
            Document::Authorization(p) => p.spec.selector.as_ref(),
            Document::Authentication(p) => p.spec.selector.as_ref(),
        }
    }

    /// As JSON, for storage and the watch stream.
    pub fn to_json(&self) -> String {
        match self {
            Document::Authorization(p) => serde_json::to_string(p),
            Document::Authentication(p) => serde_json::to_string(p),
        }
        .unwrap_or_default()
    }
}

/// Parses and validates every document of a (multi-document) YAML or JSON
/// text; errors say which document (1-based) and which field.
pub fn parse_documents_yaml(text: &str) -> Result<Vec<Document>, PolicyError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = <serde_json::Value as Deserialize>::deserialize(doc)
            .map_err(|e| PolicyError::new(format!("document {}", i + 1), e.to_string()))?;
        if v.is_null() {
            continue;
        }
        let d = parse_document(&v.to_string()).map_err(|e| PolicyError {
            path: format!("document {}: {}", i + 1, e.path),
            message: e.message,
        })?;
        out.push(d);
    }
    Ok(out)
}

/// Parses and validates a policy document of either kind from JSON.
pub fn parse_document(json: &str) -> Result<Document, PolicyError> {
    #[derive(Deserialize)]
    struct Kind {
        #[serde(default)]
        kind: String,
    }
    let kind: Kind = serde_json::from_str(json)
        .map_err(|e| PolicyError::new("", format!("not a policy document: {e}")))?;
    match kind.kind.as_str() {
        "RequestAuthentication" => {
            let de = &mut serde_json::Deserializer::from_str(json);
            let p: RequestAuthentication =
                serde_path_to_error::deserialize(de).map_err(crate::model::serde_error)?;
            p.validate()?;
            Ok(Document::Authentication(p))
        }
        _ => crate::parse_policy(json).map(Document::Authorization),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc(rules: serde_json::Value) -> String {
        json!({
            "apiVersion": "ward/v1", "kind": "RequestAuthentication",
            "metadata": { "name": "jwt", "namespace": "default" },
            "spec": { "selector": { "service": "payments" }, "jwtRules": rules },
        })
        .to_string()
    }

    const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    #[test]
    fn token_types_one_or_many() {
        let types = |v: serde_json::Value| match parse_document(&doc(json!([{
            "issuer": "https://idp.example", "jwks": JWKS, "tokenType": v,
        }]))) {
            Ok(Document::Authentication(a)) => Ok(a.spec.jwt_rules[0].token_type.clone()),
            Ok(_) => panic!("not a RequestAuthentication"),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(types(json!("JWT")), Ok(vec!["JWT".to_string()]));
        assert_eq!(
            types(json!(["JWT", "secevent+jwt"])),
            Ok(vec!["JWT".to_string(), "secevent+jwt".to_string()])
        );
        for bad in [json!(""), json!(["JWT", "a b"]), json!(["x\u{1}"])] {
            let e = types(bad.clone()).unwrap_err();
            assert!(e.contains("tokenType"), "{bad}: {e}");
        }
        assert!(types(json!(7)).is_err());
    }

    #[test]
    fn valid_documents() {
        let d = parse_document(&doc(json!([{
            "issuer": "https://idp.example", "jwks": JWKS, "audiences": ["payments"],
            "fromHeaders": [{ "name": "x-jwt", "prefix": "Token " }],
            "outputClaimToHeaders": [{ "header": "x-user", "claim": "sub" }],
        }, { "issuer": "https://other.example", "jwksUri": "https://other.example/jwks" }])))
        .unwrap();
        assert!(matches!(d, Document::Authentication(_)));
        assert_eq!(d.key(), "default/jwt");
        // An AuthorizationPolicy goes through the same entry point.
        let p = parse_document(
            &json!({ "apiVersion": "ward/v1", "kind": "AuthorizationPolicy",
                     "metadata": { "name": "p" }, "spec": {} })
            .to_string(),
        )
        .unwrap();
        assert!(matches!(p, Document::Authorization(_)));
    }

    #[test]
    fn every_error_names_its_field() {
        for (rules, path, what) in [
            (
                json!([{ "issuer": "" }]),
                "spec.jwtRules[0].issuer",
                "required",
            ),
            (
                json!([{ "issuer": "a", "jwks": JWKS }, { "issuer": "a", "jwks": JWKS }]),
                "spec.jwtRules[1].issuer",
                "two rules",
            ),
            (
                json!([{ "issuer": "a", "jwks": JWKS, "jwksUri": "https://x" }]),
                "spec.jwtRules[0]",
                "not both",
            ),
            (
                json!([{ "issuer": "a", "jwksUri": "http://x/jwks" }]),
                "spec.jwtRules[0].jwksUri",
                "https",
            ),
            (
                json!([{ "issuer": "a", "jwks": "nope" }]),
                "spec.jwtRules[0].jwks",
                "JSON",
            ),
            (
                json!([{ "issuer": "a", "jwks": "{\"keys\":[{\"kty\":\"oct\",\"k\":\"AA\"}]}" }]),
                "spec.jwtRules[0].jwks",
                "no usable",
            ),
            (
                json!([{ "issuer": "a", "jwks": JWKS, "fromHeaders": [{ "name": "bad header" }] }]),
                "spec.jwtRules[0].fromHeaders[0].name",
                "not a header name",
            ),
            (
                json!([{ "issuer": "a", "jwks": JWKS,
                         "outputClaimToHeaders": [{ "header": "x-ward-peer-id", "claim": "sub" }] }]),
                "spec.jwtRules[0].outputClaimToHeaders[0].header",
                "set by the sidecar",
            ),
            (
                json!([{ "issuer": "a", "jwks": JWKS,
                         "outputClaimToHeaders": [{ "header": "x-user", "claim": "" }] }]),
                "spec.jwtRules[0].outputClaimToHeaders[0].claim",
                "required",
            ),
            (
                json!([{ "issuer": "a", "jwks": JWKS, "forwardToken": true }]),
                "spec.jwtRules[0]",
                "unknown field",
            ),
        ] {
            let e = parse_document(&doc(rules.clone())).unwrap_err();
            assert!(e.path.starts_with(path), "{rules}: {e}");
            assert!(e.message.contains(what), "{rules}: {e}");
        }
    }
}
