//! Reads in a cluster: an operator's reads are answered by its owner.
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
//! When no node holds the lease (a failover in progress) or the owner cannot be reached, the
//! node answers from its own view, which may be behind.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use super::Cluster;
use super::ownership::Holder;

/// How long a read waits for the owner's view to catch up after a takeover.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Marks a forwarded request, so that it is never forwarded again.
const FORWARDED: &str = "commission-host-forwarded-by";

/// Middleware over the whole router in cluster mode.
pub async fn forward_to_owner(State(cluster): State<Arc<Cluster>>, request: Request, next: Next) -> Response {
    if request.method() != Method::GET || request.headers().contains_key(FORWARDED) {
        return next.run(request).await;
    }
    let Some(operator) = request
        .uri()
        .path()
        .strip_prefix("/v1/operators/")
        .and_then(|rest| rest.split_once('/'))
        .map(|(operator, _)| operator.to_owned())
    else {
        return next.run(request).await;
    };
    let holder = match cluster.log.owners.get(&operator).await {
        Ok(Some(value)) => serde_json::from_slice::<Holder>(&value).ok(),
        _ => None,
    };
    let Some(holder) = holder.filter(|holder| holder.node != cluster.node) else {
        // This node owns it: once its view has caught up with the ledger.
        let owned = cluster.owned.lock().expect("owned lock").get(&operator).cloned();
        if let Some(owned) = owned
            && tokio::time::timeout(CATCH_UP_WAIT, owned.caught_up()).await.is_err()
        {
            tracing::warn!(%operator, "answering a read before this node's view caught up with the ledger");
        }
        return next.run(request).await;
    };
    let path = request.uri().path_and_query().map_or("/", |path| path.as_str());
    let sent = cluster
        .http
        .get(format!("{}{path}", holder.address))
        .headers(request.headers().clone())
        .header(FORWARDED, &cluster.node)
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(error) => {
            tracing::warn!(%operator, owner = %holder.node, %error, "the owner did not answer a read; answering from this node's view");
            return next.run(request).await;
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
        Err(error) => {
            tracing::warn!(%operator, owner = %holder.node, %error, "the owner's answer to a read was cut off");
            next.run(request).await
        }
    }
}
