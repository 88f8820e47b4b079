//! Table-driven conformance cases (conformance.json), derived from the
//! documented semantics of Istio's AuthorizationPolicy, with ward's
//! default action where it deliberately differs.
use serde_json::Value;
use ward_policy::{parse_policy, Action, DefaultAction, HttpAttributes, PolicySet, Request};

#[test]
fn conformance_cases() {
    let data: Value = serde_json::from_str(include_str!("conformance.json")).unwrap();
    let cases = data["cases"].as_array().unwrap();
    assert!(cases.len() >= 150, "{} cases", cases.len());
    let mut header_blind = 0;
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let policies = c["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p["apiVersion"] = "ward/v1".into();
                p["kind"] = "AuthorizationPolicy".into();
                parse_policy(&p.to_string()).unwrap_or_else(|e| panic!("{name}: {e}"))
            })
            .collect();
        let default = match c["default"].as_str().unwrap() {
            "allow" => DefaultAction::Allow,
            _ => DefaultAction::Deny,
        };
        let set = PolicySet::new(policies, default);
        let r = &c["request"];
        let headers: Vec<(&str, &str)> = r["http"]["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        // A validated token: its claims, and iss/sub as the request principal.
        let claims = r["http"]["claims"].as_object();
        let request_principal = claims.map(|c| {
            format!(
                "{}/{}",
                c["iss"].as_str().unwrap_or_default(),
                c["sub"].as_str().unwrap_or_default()
            )
        });
        let http = r["http"].as_object().map(|h| HttpAttributes {
            method: h["method"].as_str().unwrap(),
            path: h["path"].as_str().unwrap(),
            host: h["host"].as_str().unwrap(),
            headers: headers.clone(),
            request_principal: request_principal.as_deref(),
            claims,
        });
        let req = Request {
            namespace: r["namespace"].as_str().unwrap(),
            service: r["service"].as_str().unwrap(),
            destination_port: r["port"].as_u64().unwrap() as u16,
            source_principal: r["principal"].as_str(),
            source_ip: r["ip"].as_str().map(|s| s.parse().unwrap()),
            http,
        };
        let d = set.evaluate(&req);
        // A set that reads no header decides the same without them (the
        // sidecar then skips collecting them).
        if !set.reads_headers() && req.http.is_some() {
            header_blind += 1;
            for extra in [vec![], vec![("x-probe", "1"), ("user-agent", "curl")]] {
                let mut other = req.clone();
                if let Some(h) = other.http.as_mut() {
                    h.headers = extra;
                }
                let o = set.evaluate(&other);
                assert_eq!(
                    (o.allowed(), o.policy()),
                    (d.allowed(), d.policy()),
                    "{name}"
                );
            }
        }
        let want = &c["expect"];
        assert_eq!(d.allowed(), want["decision"] == "allow", "{name}: {d:?}");
        assert_eq!(
            d.policy(),
            want["policy"].as_str().unwrap(),
            "{name}: {d:?}"
        );
        if let Some(reported) = want["reported"].as_array() {
            let got: Vec<(String, Action, bool)> = d
                .reported
                .iter()
                .map(|m| (m.policy.clone(), m.action, m.dry_run))
                .collect();
            let want: Vec<(String, Action, bool)> = reported
                .iter()
                .map(|m| {
                    let action = serde_json::from_value(m["action"].clone()).unwrap();
                    (
                        m["policy"].as_str().unwrap().to_string(),
                        action,
                        m["dry_run"].as_bool().unwrap(),
                    )
                })
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }
    assert!(header_blind > 50, "{header_blind}");
}

#[test]
fn validation_errors_name_the_field() {
    let base = |spec: &str| {
        format!(
            r#"{{"apiVersion":"ward/v1","kind":"AuthorizationPolicy","metadata":{{"name":"p"}},"spec":{spec}}}"#
        )
    };
    let cases = [
        (r#"{"rulez":[]}"#, "spec.rulez", "unknown field"),
        (
            r#"{"rules":[{"from":[{"source":{"principalz":["a"]}}]}]}"#,
            "spec.rules[0].from[0].source.principalz",
            "unknown field",
        ),
        (
            r#"{"rules":[{"from":[{"source":{"principals":["not a principal"]}}]}]}"#,
            "spec.rules[0].from[0].source.principals[0]",
            "principal",
        ),
        (
            r#"{"rules":[{"from":[{"source":{"ipBlocks":["10.0.0.0/33"]}}]}]}"#,
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "CIDR",
        ),
        (
            r#"{"rules":[{"to":[{"operation":{"paths":["/a/*/b"]}}]}]}"#,
            "spec.rules[0].to[0].operation.paths[0]",
            "'*'",
        ),
        (
            r#"{"rules":[{"to":[{"operation":{"ports":["99999"]}}]}]}"#,
            "spec.rules[0].to[0].operation.ports[0]",
            "port",
        ),
        (
            r#"{"rules":[{"when":[{"key":"request.nothing","values":["x"]}]}]}"#,
            "spec.rules[0].when[0].key",
            "unknown key",
        ),
        (
            r#"{"rules":[{"when":[{"key":"request.auth.claims[]","values":["x"]}]}]}"#,
            "spec.rules[0].when[0].key",
            "unknown key",
        ),
        (
            r#"{"rules":[{"when":[{"key":"request.auth.claims[a]b]","values":["x"]}]}]}"#,
            "spec.rules[0].when[0].key",
            "unknown key",
        ),
        (
            r#"{"rules":[{"when":[{"key":"request.headers[a][b]","values":["x"]}]}]}"#,
            "spec.rules[0].when[0].key",
            "unknown key",
        ),
        (
            r#"{"rules":[{"when":[{"key":"request.auth.claims[scope]","values":["a*b"]}]}]}"#,
            "spec.rules[0].when[0].values[0]",
            "'*'",
        ),
        (r#"{"action":"PERMIT"}"#, "spec.action", "unknown variant"),
        (
            r#"{"selector":{"service":"a/b"}}"#,
            "spec.selector.service",
            "not a valid name",
        ),
    ];
    for (spec, path, needle) in cases {
        let e = parse_policy(&base(spec)).expect_err(spec);
        assert_eq!(e.path, path, "{spec}: {e}");
        assert!(e.message.contains(needle), "{spec}: {e}");
    }
    let e =
        parse_policy(r#"{"apiVersion":"v2","kind":"AuthorizationPolicy","metadata":{"name":"p"}}"#)
            .unwrap_err();
    assert_eq!(e.path, "apiVersion");
    // HTTP-only fields are detected, so a TCP target can refuse them.
    let p = parse_policy(&base(
        r#"{"rules":[{"to":[{"operation":{"methods":["GET"]}}]}]}"#,
    ))
    .unwrap();
    assert!(p.uses_http_fields());
    let p = parse_policy(&base(
        r#"{"rules":[{"to":[{"operation":{"ports":["80"]}}]}]}"#,
    ))
    .unwrap();
    assert!(!p.uses_http_fields());
}
