//! `GET /v1/cluster`: the nodes of a cluster and where each operator is served (admin only).
//! On the embedded default there is no cluster: 404 `not_a_cluster`, saying how to join one.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

use super::error::ApiError;
use super::{AppState, auth};
use crate::cluster::ClusterStatus;

/// `GET /v1/cluster`: the live nodes, and each operator's owner, preferred node and this node's
/// view position (platform admin only).
#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "cluster",
    responses(
        (status = 200, description = "The cluster as the answering node sees it", body = ClusterStatus),
        (status = 401, description = "Not the admin token (an operator's key is refused too)"),
        (status = 404, description = "`not_a_cluster`: the host runs on its embedded default (no `--cluster`)"),
        (status = 503, description = "`log_unavailable`: the NATS servers did not answer"),
    ),
    security(("admin_token" = [])),
)]
pub async fn cluster_status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<ClusterStatus>, ApiError> {
    auth::require_admin(&state, &headers)?;
    let Some(cluster) = &state.cluster else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_a_cluster",
            "this host runs on its embedded default, not in a cluster: start it with `serve --cluster \
             nats://...,... --node NAME` to join one",
        ));
    };
    cluster.status().await.map(Json).map_err(|error| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "log_unavailable", format!("the cluster's state: {error}"))
    })
}
