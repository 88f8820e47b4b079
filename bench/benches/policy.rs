//! Authorization decision time with 10,000 policies across 1,000 services
//! (10 per service: ALLOW by principal and path, DENY by path, AUDIT, a
//! claim rule, a namespace-wide DENY), measured with criterion (mean) and,
//! before it, per-decision percentiles over 200,000 decisions on random
//! services.
//!
//! `cargo bench -p ward-bench --bench policy`
use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;
use serde_json::json;
use ward_policy::{parse_policy, DefaultAction, HttpAttributes, PolicySet, Request};

const SERVICES: usize = 1_000;

fn policies() -> Vec<ward_policy::AuthorizationPolicy> {
    let mut out = Vec::new();
    for s in 0..SERVICES {
        let svc = format!("svc-{s}");
        let caller = format!("ward.internal/ns/default/sa/svc-{}", (s + 1) % SERVICES);
        let docs = [
            json!({ "action": "ALLOW", "rules": [{ "from": [{ "source": { "principals": [caller] } }],
                     "to": [{ "operation": { "methods": ["GET"], "paths": ["/api/*"] } }] }] }),
            json!({ "action": "ALLOW", "rules": [{ "from": [{ "source": { "namespaces": ["ops"] } }] }] }),
            json!({ "action": "ALLOW", "rules": [{ "to": [{ "operation": { "methods": ["POST"] } }],
                     "when": [{ "key": "request.auth.claims[scope]", "values": [format!("{svc}:write")] }] }] }),
            json!({ "action": "DENY", "rules": [{ "to": [{ "operation": { "paths": ["/admin/*"] } }] }] }),
            json!({ "action": "DENY", "rules": [{ "from": [{ "source": { "ipBlocks": ["192.0.2.0/24"] } }] }] }),
            json!({ "action": "DENY", "rules": [{ "when": [{ "key": "request.headers[x-debug]", "values": ["*"] }] }] }),
            json!({ "action": "AUDIT", "rules": [{ "to": [{ "operation": { "paths": ["/api/refunds/*"] } }] }] }),
            json!({ "action": "ALLOW", "dryRun": true, "rules": [{ "from": [{ "source": { "principals": ["*"] } }] }] }),
            json!({ "action": "ALLOW", "rules": [{ "to": [{ "operation": { "hosts": [format!("{svc}.internal")], "ports": ["8443"] } }] }] }),
        ];
        for (i, spec) in docs.into_iter().enumerate() {
            let mut spec = spec;
            spec["selector"] = json!({ "service": svc });
            let p = json!({ "apiVersion": "ward/v1", "kind": "AuthorizationPolicy",
                            "metadata": { "name": format!("{svc}-{i}"), "namespace": "default" },
                            "spec": spec });
            out.push(parse_policy(&p.to_string()).expect("valid policy"));
        }
        // One namespace-wide DENY per 100 services' worth (10 in all).
        if s.is_multiple_of(100) {
            let p = json!({ "apiVersion": "ward/v1", "kind": "AuthorizationPolicy",
                "metadata": { "name": format!("ns-deny-{s}"), "namespace": "default" },
                "spec": { "action": "DENY", "rules": [{ "to": [{ "operation": { "paths": [format!("/blocked-{s}/*")] } }] }] } });
            out.push(parse_policy(&p.to_string()).expect("valid policy"));
        }
    }
    out
}

fn main() {
    let mut policies = policies();
    // Pad to exactly 10,000 with service policies.
    let mut extra = 0;
    while policies.len() < 10_000 {
        let p = json!({ "apiVersion": "ward/v1", "kind": "AuthorizationPolicy",
            "metadata": { "name": format!("extra-{extra}"), "namespace": "default" },
            "spec": { "selector": { "service": format!("svc-{}", extra % SERVICES) }, "action": "DENY",
                      "rules": [{ "to": [{ "operation": { "paths": ["/never/*"] } }] }] } });
        policies.push(parse_policy(&p.to_string()).expect("valid policy"));
        extra += 1;
    }
    let n = policies.len();
    let set = PolicySet::new(policies, DefaultAction::Deny);
    let names: Vec<(String, String, String)> = (0..SERVICES)
        .map(|s| {
            (
                format!("svc-{s}"),
                format!(
                    "spiffe://ward.internal/ns/default/sa/svc-{}",
                    (s + 1) % SERVICES
                ),
                format!("svc-{s}.internal"),
            )
        })
        .collect();
    let claims = json!({ "iss": "https://ward", "sub": "x", "scope": "svc-1:write other:read" });
    let claims = claims.as_object().expect("object");
    let headers = [
        ("content-type", "application/json"),
        ("x-request-id", "abc"),
    ];
    let request = |i: usize| {
        let (svc, caller, host) = &names[i % SERVICES];
        Request {
            namespace: "default",
            service: svc,
            destination_port: 15006,
            source_principal: Some(caller),
            source_ip: Some([10, 0, 0, 1].into()),
            http: Some(HttpAttributes {
                method: if i.is_multiple_of(3) { "POST" } else { "GET" },
                path: "/api/orders/42",
                host,
                headers: headers.to_vec(),
                request_principal: Some("https://ward/x"),
                claims: Some(claims),
            }),
        }
    };

    // Per-decision latency distribution.
    let mut samples = Vec::with_capacity(200_000);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..200_000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let req = request(rng as usize);
        let t = Instant::now();
        black_box(set.evaluate(black_box(&req)));
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "{}",
        json!({
            "policies": n, "services": SERVICES,
            "decision_ns": { "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": samples[samples.len() - 1] },
            "target_p99_ns": 5000,
        })
    );

    let mut c = Criterion::default().configure_from_args();
    let mut i = 0usize;
    c.bench_function("policy/evaluate_10k_policies", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            black_box(set.evaluate(&request(i)))
        })
    });
    c.final_summary();
}
