//! An operator's affiliates: the referral tree (each affiliate's parent) and each one's deal.
//! A move is checked against the tree as it stands (no loop, no chain deeper than the engine
//! pays up), so evaluation never meets a tree it cannot walk. The check and the write are one
//! step per operator ([`TreeLocks`]): two moves checked at once against the same tree could each
//! pass and together make a loop (A under B and B under A).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
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
use crate::pipeline::MAX_CHAIN_DEPTH;
use crate::store::records::AffiliateRecord;
use crate::terms::{self, WireTerms};

use super::operators::{durable, parse_json};

/// One lock per stripe of operators, held from a write's check of the affiliate tree to the
/// write. Striped rather than one per operator so that it costs a fixed few KiB whatever the
/// number of operators; operators sharing a stripe only wait for each other's tree writes,
/// which are rare and short.
pub struct TreeLocks {
    stripes: [tokio::sync::Mutex<()>; 64],
}

impl Default for TreeLocks {
    fn default() -> Self {
        Self { stripes: std::array::from_fn(|_| tokio::sync::Mutex::new(())) }
    }
}

impl TreeLocks {
    async fn lock(&self, operator: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(operator);
        self.stripes[(hash % self.stripes.len() as u64) as usize].lock().await
    }
}

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
    let store = state.pipeline.store();
    let tree_unchanged_until_written = state.affiliate_trees.lock(&operator.id).await;
    if let Some(parent) = &request.parent {
        if let Some(problem) = affiliate_id_problem(parent) {
            return Err(ApiError::field("parent", problem));
        }
        // The deepest chain the move makes: the parent's chain, this affiliate, and the
        // longest branch below it, which moves with it.
        let below = match store.affiliate(&operator.id, &affiliate)? {
            Some(_) => subtree_height(store, &operator.id, &affiliate)?,
            None => 0,
        };
        // Walk up from the new parent: meeting this affiliate would close a loop.
        let mut depth = 1 + below;
        let mut cursor = Some(parent.clone());
        while let Some(id) = cursor {
            if id == affiliate {
                return Err(ApiError::field(
                    "parent",
                    format!("{parent:?} is {affiliate:?} or below it: that would make a loop"),
                ));
            }
            let record = store.affiliate(&operator.id, &id)?.ok_or_else(|| {
                ApiError::field("parent", format!("unknown affiliate {id:?}: create the parent first"))
            })?;
            depth += 1;
            if depth > MAX_CHAIN_DEPTH {
                return Err(ApiError::field(
                    "parent",
                    format!(
                        "the chain would be deeper than {MAX_CHAIN_DEPTH} levels: {parent:?} and its parents, {affiliate:?}, and {below} levels below {affiliate:?}"
                    ),
                ));
            }
            cursor = record.parent;
        }
    }
    let record = AffiliateRecord { id: affiliate, parent: request.parent, deal, updated_at: now_ms() };
    store
        .put_affiliate(&operator.id, &record, operator.limits.stored_bytes)?
        .map_err(|refused| ApiError::quota_exceeded(&operator.id, None, refused))?;
    drop(tree_unchanged_until_written);
    durable(&state).await?;
    Ok(Json(affiliate_json(&record)))
}

/// How many levels of affiliates are below `root` (0 for none). Reads every affiliate of the
/// operator: only a move of an existing affiliate under a parent pays for it.
fn subtree_height(store: &crate::store::Store, operator: &str, root: &str) -> Result<usize, ApiError> {
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in store.affiliate_ids(operator)? {
        if let Some(parent) = store.affiliate(operator, &id)?.and_then(|record| record.parent) {
            children.entry(parent).or_default().push(id);
        }
    }
    let mut height = 0;
    let mut level = vec![root.to_owned()];
    // Bounded: a level past the limit already refuses the move (and a loop in old data ends there).
    while height <= MAX_CHAIN_DEPTH {
        level = level.iter().filter_map(|id| children.get(id)).flatten().cloned().collect();
        if level.is_empty() {
            break;
        }
        height += 1;
    }
    Ok(height)
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
