//! Read-only keys an operator issues to one affiliate, for an affiliate portal:
//! `POST /v1/operators/{op}/affiliates/{aff}/keys` (the key is shown once; only its sha256 is
//! kept) and `DELETE /v1/operators/{op}/affiliates/{aff}/keys/{id}`. What such a key opens is
//! decided in [`super::auth`]: the affiliate's own commissions, period statements and payout
//! report lines, and nothing else (403 on every other operator route). Issues and revocations
//! are commands in the operator's turn: in a cluster every node's view holds the same keys.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;

use super::auth::{self, AFFILIATE_KEY_PREFIX};
use super::events::ingest_error;
use super::openapi::ErrorSchema;
use super::operators::durable;
use super::{ApiError, AppState};
use crate::event::{affiliate_id_problem, format_time, now_ms};
use crate::pipeline::{Command, Done};
use crate::secrets::{random_text, sha256_hex};
use crate::store::records::AffiliateKeyRecord;

#[derive(Serialize, utoipa::ToSchema)]
pub struct AffiliateKey {
    /// The key's public id: part of the key, and the name to revoke it by.
    pub id: String,
    pub affiliate: String,
    /// The key itself, shown only when it is issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, once revoked.
    pub revoked_at: Option<String>,
}

fn key_json(record: &AffiliateKeyRecord, key: Option<String>) -> AffiliateKey {
    AffiliateKey {
        id: record.id.clone(),
        affiliate: record.affiliate.clone(),
        key,
        created_at: format_time(record.created_at),
        revoked_at: record.revoked_at.map(format_time),
    }
}

/// `POST /v1/operators/{op}/affiliates/{affiliate}/keys`.
#[utoipa::path(
    post,
    path = "/v1/operators/{op}/affiliates/{affiliate}/keys",
    tag = "affiliates",
    params(("op" = String, Path, description = "operator id"), ("affiliate" = String, Path, description = "affiliate id")),
    responses(
        (status = 201, description = "the key, shown once", body = AffiliateKey),
        (status = 401, description = "not the operator's key"),
        (status = 403, description = "an affiliate key"),
        (status = 404, description = "no such affiliate"),
        (status = 422, description = "a malformed affiliate id"),
        (status = 202, description = "`pending`, with `--cluster` only: the change is durable in the cluster's log, but the operator's owner had not applied it within `--cluster-answer-secs`; it will", body = ErrorSchema),
        (status = 503, description = "with `--cluster` only: `owner_unavailable` (the node that owns the operator, which answers this, did not answer, or none owns it this moment) or `log_unavailable` (the cluster's log did not take the change). Retry after `Retry-After`", body = ErrorSchema),
    ),
    security(("operator_key" = []), ("admin_token" = []))
)]
pub async fn issue(
    State(state): State<Arc<AppState>>,
    Path((op, affiliate)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<AffiliateKey>), ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    existing_affiliate(&state, &operator.id, &affiliate)?;
    // The id is 64 random bits (found by it, a key is still checked whole); one taken is drawn again.
    for _ in 0..3 {
        let id = sha256_hex(&random_text())[..16].to_owned();
        let key = format!("{AFFILIATE_KEY_PREFIX}{id}_{}", random_text());
        let record = AffiliateKeyRecord {
            id,
            affiliate: affiliate.clone(),
            sha256: sha256_hex(&key),
            created_at: now_ms(),
            revoked_at: None,
        };
        let issuing = Command::IssueAffiliateKey { key: record.clone() };
        if state.pipeline.command(&operator, issuing).await.and_then(Done::changed).map_err(ingest_error)? {
            durable(&state).await?;
            tracing::info!(operator = %operator.id, affiliate, key_id = %record.id, "affiliate key issued");
            return Ok((StatusCode::CREATED, Json(key_json(&record, Some(key)))));
        }
    }
    Err(ApiError::internal("three random key ids in a row were taken"))
}

/// `DELETE /v1/operators/{op}/affiliates/{affiliate}/keys/{id}`: the key opens nothing from now on.
#[utoipa::path(
    delete,
    path = "/v1/operators/{op}/affiliates/{affiliate}/keys/{id}",
    tag = "affiliates",
    params(
        ("op" = String, Path, description = "operator id"),
        ("affiliate" = String, Path, description = "affiliate id"),
        ("id" = String, Path, description = "the key's id"),
    ),
    responses(
        (status = 200, description = "the key, revoked", body = AffiliateKey),
        (status = 401, description = "not the operator's key"),
        (status = 403, description = "an affiliate key"),
        (status = 404, description = "no such key of the affiliate"),
        (status = 202, description = "`pending`, with `--cluster` only: the change is durable in the cluster's log, but the operator's owner had not applied it within `--cluster-answer-secs`; it will", body = ErrorSchema),
        (status = 503, description = "with `--cluster` only: `owner_unavailable` (the node that owns the operator, which answers this, did not answer, or none owns it this moment) or `log_unavailable` (the cluster's log did not take the change). Retry after `Retry-After`", body = ErrorSchema),
    ),
    security(("operator_key" = []), ("admin_token" = []))
)]
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    Path((op, affiliate, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<AffiliateKey>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    existing_affiliate(&state, &operator.id, &affiliate)?;
    let missing = || ApiError::not_found(format!("affiliate {affiliate:?} has no key {id:?}"));
    let revoking = Command::RevokeAffiliateKey { affiliate: affiliate.clone(), id: id.clone(), now: now_ms() };
    if !state.pipeline.command(&operator, revoking).await.and_then(Done::changed).map_err(ingest_error)? {
        return Err(missing());
    }
    durable(&state).await?;
    let record = state.pipeline.store().affiliate_key(&operator.id, &id)?.ok_or_else(missing)?;
    tracing::info!(operator = %operator.id, affiliate, key_id = %record.id, "affiliate key revoked");
    Ok(Json(key_json(&record, None)))
}

fn existing_affiliate(state: &AppState, operator: &str, affiliate: &str) -> Result<(), ApiError> {
    if let Some(problem) = affiliate_id_problem(affiliate) {
        return Err(ApiError::field("affiliate", problem));
    }
    match state.pipeline.store().affiliate(operator, affiliate)? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("no affiliate {affiliate:?}"))),
    }
}
