//! An operator's affiliates: the referral tree (each affiliate's parent) and each one's deal.
//! The request is checked here (the id, the body, the deal's terms); the tree's check and the
//! write happen in the operator's turn, ordered with its events
//! ([`crate::pipeline::Command::PutAffiliate`]): in a cluster, through the operator's log, so
//! every node's view holds the same tree and deals at the same place among the events.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Deserialize;

use super::answers::Affiliate;
use super::openapi::ErrorSchema;
use super::{ApiError, AppState, auth, read_body};
use crate::event::{affiliate_id_problem, now_ms};
use crate::pipeline::{Command, Done, IngestError};
use crate::store::records::AffiliateRecord;
use crate::terms::{self, WireTerms};

use super::operators::parse_json;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AffiliateBody {
    #[serde(default)]
    parent: Option<String>,
    /// Deal terms: at most 100, keys of 1 to 64 bytes, values of at most 1,024 (numbers and
    /// booleans are kept as text); `hold_days` is read by the host.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    deal: WireTerms,
}

/// `PUT /v1/operators/{op}/affiliates/{affiliate}`: creates or changes an affiliate.
#[utoipa::path(
    put,
    path = "/v1/operators/{op}/affiliates/{affiliate}",
    tag = "affiliates",
    security(("operator_key" = []), ("admin_token" = [])),
    params(("op" = String, Path), ("affiliate" = String, Path, pattern = r"^[a-z0-9][a-z0-9._-]{0,127}$", description = "1 to 128 of a-z, 0-9, -, _ and ., starting with a letter or digit")),
    request_body = AffiliateBody,
    responses(
        (status = 200, description = "stored", body = Affiliate),
        (status = 202, description = "`pending`, with `--cluster` only: the change is durable in the cluster's log, but the operator's owner had not applied it within `--cluster-answer-secs`; it will. Sending it again changes nothing twice", body = ErrorSchema),
        (status = 403, description = "`quota_exceeded`: the operator is at its quota of stored bytes", body = ErrorSchema),
    )
)]
pub async fn put_affiliate(
    State(state): State<Arc<AppState>>,
    Path((op, affiliate)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Affiliate>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    if let Some(problem) = affiliate_id_problem(&affiliate) {
        return Err(ApiError::field("affiliate", problem));
    }
    let body = read_body(body, state.limits.json()).await?;
    let request: AffiliateBody = parse_json(&body)?;
    let deal = terms::checked_deal("deal", request.deal)
        .map_err(|problems| ApiError::fields("invalid_affiliate", problems))?;
    if let Some(problem) = request.parent.as_deref().and_then(affiliate_id_problem) {
        return Err(ApiError::field("parent", problem));
    }
    let record = AffiliateRecord { id: affiliate, parent: request.parent, deal, updated_at: now_ms() };
    let command = Command::PutAffiliate { affiliate: record.clone() };
    match state.pipeline.command(&operator, command).await.and_then(Done::changed) {
        Ok(_) => {}
        Err(IngestError::Invalid(problems)) => return Err(ApiError::fields("invalid_field", problems)),
        Err(error) => return Err(super::events::ingest_error(error)),
    }
    Ok(Json(affiliate_json(&record)))
}

#[utoipa::path(
    get,
    path = "/v1/operators/{op}/affiliates/{affiliate}",
    tag = "affiliates",
    security(("operator_key" = []), ("admin_token" = [])),
    params(("op" = String, Path), ("affiliate" = String, Path)),
    responses((status = 200, description = "the affiliate", body = Affiliate))
)]
pub async fn get_affiliate(
    State(state): State<Arc<AppState>>,
    Path((op, affiliate)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Affiliate>, ApiError> {
    let operator = auth::operator(&state, &headers, &op)?;
    if let Some(problem) = affiliate_id_problem(&affiliate) {
        return Err(ApiError::field("affiliate", problem));
    }
    let record = state
        .pipeline
        .store()
        .affiliate(&operator.id, &affiliate)?
        .ok_or_else(|| ApiError::not_found(format!("no affiliate {affiliate:?}")))?;
    Ok(Json(affiliate_json(&record)))
}

fn affiliate_json(record: &AffiliateRecord) -> Affiliate {
    Affiliate { id: record.id.clone(), parent: record.parent.clone(), deal: record.deal.clone() }
}
