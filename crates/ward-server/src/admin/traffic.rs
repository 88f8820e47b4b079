//! `GET /api/v1/traffic`: who calls whom, as the sidecars report it, and
//! the sidecars and agents connected (`ward top`, the dashboard).
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

pub(super) async fn show(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(snapshot(&s))
}

/// The traffic graph and the watchers, as one JSON document.
pub(crate) fn snapshot(s: &AppState) -> Value {
    let now_ms = (ward_ca::now().unix_timestamp_nanos() / 1_000_000) as i64;
    json!({
        "edges": s.traffic.edges(now_ms),
        "watchers": s.watchers.list(),
        "at": now_ms / 1000,
    })
}
