//! Authorization policies in Istio's `AuthorizationPolicy` shape, so that
//! Istio users can read and port them, with ward's zero-trust default.
//!
//! Policies are validated when they are applied ([`parse_policy`] gives the
//! field path of every error), then compiled into a [`PolicySet`] indexed
//! by target service, so a request is checked only against the policies
//! that can apply to it. Every [`Decision`] names the policy and rule that
//! decided it, or says that the mesh default did.
//!
//! Evaluation order (Istio's): any matching DENY denies; else, if ALLOW
//! policies apply to the target, one of them must match; else the mesh
//! default applies (ward: deny, unless the server says `allow`). AUDIT and
//! `dryRun` policies are evaluated and reported, never enforced.
//!
//! ```
//! use ward_policy::{parse_policy, DefaultAction, PolicySet, Request};
//!
//! let p = parse_policy(r#"{
//!   "apiVersion": "ward/v1", "kind": "AuthorizationPolicy",
//!   "metadata": {"name": "payments-from-frontend", "namespace": "default"},
//!   "spec": {"selector": {"service": "payments"}, "action": "ALLOW",
//!            "rules": [{"from": [{"source": {"principals": ["ward.internal/ns/default/sa/frontend"]}}]}]}
//! }"#).unwrap();
//! let set = PolicySet::new(vec![p], DefaultAction::Deny);
//! let mut req = Request::connection("default", "payments", 15006);
//! req.source_principal = Some("spiffe://ward.internal/ns/default/sa/frontend");
//! assert!(set.evaluate(&req).allowed());
//! req.source_principal = Some("spiffe://ward.internal/ns/default/sa/ledger");
//! let d = set.evaluate(&req);
//! assert!(!d.allowed());
//! assert_eq!(d.policy(), "default/payments-from-frontend");
//! ```
#![warn(missing_docs)]

mod authn;
mod eval;
mod model;

pub use authn::{
    parse_document, parse_documents_yaml, AuthnSpec, ClaimToHeader, Document, JwtHeader, JwtRule,
    RequestAuthentication,
};
pub use eval::{Decision, DecisionKind, HttpAttributes, Matched, PolicySet, Reason, Request};
pub use model::{
    parse_policy, Action, AuthorizationPolicy, Condition, DefaultAction, Metadata, Operation,
    PolicyError, Rule, RuleFrom, RuleTo, Selector, Source, Spec,
};
