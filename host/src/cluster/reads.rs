//! Reads in a cluster: an operator's reads are answered by its owner, and so are the writes
//! worked out from its data ([`owners_write`]).
//!
//! Every node's sled is a view of the ledger, but only the owner's is sure to hold everything
//! the ledger acknowledged: a node that never owned the operator has nothing of it, and one
//! that owned it earlier stops where it handed over. So a `GET` under
//! `/v1/operators/{op}/...` received by another node is forwarded to the owner (its address is
//! in the lease) and its answer passed back as it is. Every answer a client got for an event
//! was given after the owner committed and flushed it, so a read that follows it, on whichever
//! node, sees it: read-your-writes without a position to carry.
//!
//! A new owner answers once its view has caught up with the ledger (it took over with).
//! When no node holds the lease (a handover or a failover in progress) or the owner cannot be
//! reached, the node answers from its own view once that has applied the ledger up to its last
//! entry, which holds every event a client was answered but for one answered in the same few
//! milliseconds (an answer comes from the entry as it is written, a moment before the stream
//! serves it).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::Cluster;
use super::ownership::Holder;

/// How long a read waits for the owner's view to catch up after a takeover.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Marks a forwarded request, so that it is never forwarded again.
const FORWARDED: &str = "commission-host-forwarded-by";

/// The most a forwarded write's body may be (its handler's own limit applies on the owner).
const WRITE_BODY_LIMIT: usize = 4 << 20;

/// Whether `rest` (the path after `/v1/operators/{op}/`) is a write its handler works out from
/// the operator's data, and answers from it after its command: an approval run, a payment, a
/// commission's move, an affiliate key's issue or revocation. Such a write is answered by the
/// owner, whose view holds what the ledger holds; the command it sends still travels through
/// the log, so every view makes it.
fn owners_write(rest: &str) -> bool {
    let parts: Vec<&str> = rest.split('/').collect();
    matches!(
        parts.as_slice(),
        ["periods", _, "approve"]
            | ["payouts"]
            | ["commissions", _, "status"]
            | ["affiliates", _, "keys"]
            | ["affiliates", _, "keys", _]
    )
}

/// Middleware over the whole router in cluster mode.
pub async fn forward_to_owner(State(cluster): State<Arc<Cluster>>, request: Request, next: Next) -> Response {
    let Some((operator, rest)) =
        request.uri().path().strip_prefix("/v1/operators/").and_then(|rest| rest.split_once('/'))
    else {
        return next.run(request).await;
    };
    // Not a warning: any client can name an operator that does not exist.
    if let Err(error) = cluster.hold_operator(operator).await {
        tracing::debug!(%operator, %error, "looking the operator up in the cluster");
    }
    if request.headers().contains_key(FORWARDED) {
        return next.run(request).await;
    }
    let write = request.method() != Method::GET;
    if write && !owners_write(rest) {
        return next.run(request).await;
    }
    let operator = operator.to_owned();
    let holder = match cluster.log.owners.get(&operator).await {
        Ok(Some(value)) => serde_json::from_slice::<Holder>(&value).ok(),
        _ => None,
    };
    if write && holder.is_none() {
        // Worked out here, it would be from a view that may be behind, and answered in ids
        // the new owner's ledger does not share.
        let message = format!("no node owns operator {operator} at this moment (it is moving); send it again");
        return refusal(StatusCode::SERVICE_UNAVAILABLE, "owner_unavailable", &message);
    }
    let Some(holder) = holder.filter(|holder| holder.node != cluster.node) else {
        // This node owns it: once its view has caught up with the ledger. No node owns it (it
        // is moving): once this node's view has applied the ledger as it stands.
        let owned = cluster.owned.lock().expect("owned lock").get(&operator).cloned();
        match owned {
            Some(owned) => {
                if tokio::time::timeout(CATCH_UP_WAIT, owned.caught_up()).await.is_err() {
                    tracing::warn!(%operator, "answering before this node's view caught up with the ledger");
                }
            }
            None => apply_ledger_before_answering(&cluster, &operator).await,
        }
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, WRITE_BODY_LIMIT).await {
        Ok(body) => body,
        Err(_) => return refusal(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the body is over 4 MiB"),
    };
    let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let sent = cluster
        .http
        .request(parts.method.clone(), format!("{}{path}", holder.address))
        .headers(parts.headers.clone())
        .header(FORWARDED, &cluster.node)
        .body(body)
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        // A write is not made here instead: the owner may have made it.
        Err(error) if write => {
            tracing::warn!(%operator, owner = %holder.node, %error, "the owner did not answer a write");
            return refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "owner_unavailable",
                &format!("node {} owns operator {operator} and did not answer; send it again", holder.node),
            );
        }
        Err(error) => {
            tracing::warn!(%operator, owner = %holder.node, %error, "the owner did not answer a read; answering from this node's view");
            apply_ledger_before_answering(&cluster, &operator).await;
            return next.run(Request::from_parts(parts, Body::empty())).await;
        }
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        // The body is passed back whole: its framing is this connection's own.
        if !matches!(name.as_str(), "transfer-encoding" | "content-length" | "connection") {
            response = response.header(name, value);
        }
    }
    match answer.bytes().await {
        Ok(body) => response.body(Body::from(body)).unwrap_or_else(|_| Response::new(Body::empty())),
        Err(error) if write => {
            tracing::warn!(%operator, owner = %holder.node, %error, "the owner's answer to a write was cut off");
            refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "owner_unavailable",
                "the owner's answer was cut off; send it again (a payment's reference pays once)",
            )
        }
        Err(error) => {
            tracing::warn!(%operator, owner = %holder.node, %error, "the owner's answer to a read was cut off");
            next.run(Request::from_parts(parts, Body::empty())).await
        }
    }
}

/// Brings this node's view of the operator up to the ledger's last entry before it answers a
/// read itself (no owner now, or the owner not answering): every event a client was answered
/// is in the ledger, so the answer then holds it. Past [`CATCH_UP_WAIT`], or with the log out
/// of reach, the view answers as it is.
async fn apply_ledger_before_answering(cluster: &Arc<Cluster>, operator: &str) {
    // Not for an id this node does not know: that answers 404 (or 401) with nothing to apply,
    // and a view would be started for any id a client names.
    if !matches!(cluster.pipeline.store().operator(operator), Ok(Some(_))) {
        return;
    }
    match tokio::time::timeout(CATCH_UP_WAIT, cluster.apply_ledger_now(operator)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%operator, %error, "answering a read from this node's view, which could not apply the ledger")
        }
        Err(_) => tracing::warn!(%operator, "answering a read before this node's view applied the ledger"),
    }
}

/// A refusal in the API's shape, with `Retry-After: 1`.
fn refusal(status: StatusCode, error: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": error, "message": message }).to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::RETRY_AFTER, "1")
        .body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}
