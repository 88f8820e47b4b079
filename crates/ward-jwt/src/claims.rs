use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

/// The verified claims of a token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims(pub Map<String, Value>);

impl Claims {
    fn str(&self, k: &str) -> Option<&str> {
        self.0.get(k).and_then(Value::as_str)
    }
    /// `iss`.
    pub fn iss(&self) -> Option<&str> {
        self.str("iss")
    }
    /// `sub`.
    pub fn sub(&self) -> Option<&str> {
        self.str("sub")
    }
    /// `jti`.
    pub fn jti(&self) -> Option<&str> {
        self.str("jti")
    }
    /// `client_id`.
    pub fn client_id(&self) -> Option<&str> {
        self.str("client_id")
    }
    /// `exp`, seconds.
    pub fn exp(&self) -> Option<i64> {
        self.0.get("exp").and_then(Value::as_f64).map(|v| v as i64)
    }
    /// `aud` as a list (a single string is a list of one).
    pub fn aud(&self) -> Vec<&str> {
        match self.0.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
    /// `scope` split on spaces.
    pub fn scopes(&self) -> Vec<&str> {
        self.str("scope")
            .map(|s| s.split(' ').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }
    /// Any claim.
    pub fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k)
    }
}

/// A JSON object whose keys must be unique (RFC 7519 §4: a JWT with
/// duplicate claim names must be rejected, since parsers disagree on which
/// one wins).
pub(crate) struct StrictObject(pub Map<String, Value>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<StrictObject, A::Error> {
                let mut out = Map::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    if out.contains_key(&k) {
                        return Err(de::Error::custom(format!("duplicate member {k:?}")));
                    }
                    out.insert(k, v);
                }
                Ok(StrictObject(out))
            }
        }
        d.deserialize_map(V)
    }
}
