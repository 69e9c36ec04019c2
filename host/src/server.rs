//! The socket: hyper's HTTP/1 connections, with the protections hyper leaves off by default.
//!
//! - A header read timeout (it only works with a timer set on the builder; without one,
//!   slowloris protection is silently off). Bodies have their own deadline (`api::read_body`).
//! - A cap on the header buffer: larger headers get 431.
//! - A cap on open connections, in total and per peer address: a peer over its share has its
//!   new connections closed at once, so one flooding address can neither run the process out of
//!   file descriptors nor take the slots other clients (a load balancer's `/healthz`) need.
//! - Each request carries its peer's address (`ConnectInfo`), for the failed-credential limit.
//! - Graceful shutdown: on SIGTERM or Ctrl-C stop accepting, let requests in flight finish
//!   (their events commit and flush), then return.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_BYTES: usize = 64 * 1024;
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How many connections may be open at once.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub total: usize,
    pub per_peer: usize,
}

/// The open connections, counted in total and per peer address.
#[derive(Default)]
struct Slots {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open connection's place; given back when the connection ends.
struct Slot {
    slots: Arc<Slots>,
    peer: IpAddr,
}

impl Slots {
    fn take(self: &Arc<Self>, peer: IpAddr, limits: ConnectionLimits) -> Option<Slot> {
        let mut open = self.open.lock().expect("connection slots lock");
        let (total, per_peer) = &mut *open;
        let mine = per_peer.entry(peer).or_default();
        if *total >= limits.total || *mine >= limits.per_peer {
            if *mine == 0 {
                per_peer.remove(&peer);
            }
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(Slot { slots: self.clone(), peer })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("connection slots lock");
        let (total, per_peer) = &mut *open;
        *total -= 1;
        if let Some(mine) = per_peer.get_mut(&self.peer) {
            *mine -= 1;
            if *mine == 0 {
                per_peer.remove(&self.peer);
            }
        }
    }
}

/// The address a peer is counted under: an IPv4 address, or an IPv6 address's /64 (one host
/// usually has a whole /64, and would otherwise get a fresh share per address).
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

/// Serves until `shutdown` resolves, then drains; returns what `shutdown` resolved to.
pub async fn serve<T>(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = T>,
) -> T {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(MAX_HEADER_BYTES);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Slots::default());
    let mut shutdown = std::pin::pin!(shutdown);
    let stopped = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Over the cap: closed at once (dropped), which frees the descriptor; leaving it
                // in the backlog would make every other peer wait behind it.
                let Some(slot) = slots.take(peer_key(peer.ip()), limits) else {
                    tracing::debug!(%peer, "connection refused: over the connection cap");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let service = router.clone().map_request(move |mut request: axum::extract::Request<_>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
                let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    drop(slot);
                });
            }
            stopped = &mut shutdown => break stopped,
        }
    };
    drop(listener);
    tracing::info!("shutting down: finishing requests in flight");
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; stopping anyway");
    }
    stopped
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
