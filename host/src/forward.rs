//! Forwarding, in a cluster: a WebSocket, a request or a room-to-room call
//! for a room that another live node holds goes to that node, frames in
//! both directions. Browsers cannot follow a redirect on a WebSocket
//! handshake, so a node forwards instead of redirecting.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::http::{Body, full, header_pairs, text};
use crate::route::RoomKey;
use crate::wit;

/// Marks a request one node forwarded to another. The owner serves it
/// (claiming the room if its own view is stale) and never forwards it again,
/// so two nodes that disagree cannot bounce a request between them.
pub const FORWARDED: &str = "x-dormouse-forwarded";

/// How long connecting to the owner may take before the client gets 503.
const CONNECT: Duration = Duration::from_secs(2);
/// How long the owner may take to answer (a room-to-room call is bounded
/// by its caller too): a node cut off mid-way must not hold the forward.
const ANSWER: Duration = Duration::from_secs(10);

/// An HTTP/1 connection to another node, driven in the background (with
/// upgrades, for a forwarded WebSocket); why not, as a line.
async fn connect(addr: &str) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = match tokio::time::timeout(CONNECT, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("connect timed out".into()),
    };
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "a connection to another node ended");
        }
    });
    Ok(sender)
}

/// Whether this request came from another node.
pub fn is_forwarded<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(FORWARDED)
}

/// Send the request to the node at `addr` and answer with its answer. A
/// WebSocket upgrade that the owner accepts is spliced: bytes are copied
/// both ways until either side closes. A request body is bounded by
/// `limit`, as the owner would bound it.
pub async fn forward(
    mut req: Request<Incoming>,
    addr: &str,
    from: &str,
    limit: usize,
) -> Response<Body> {
    let unavailable = |why: String| {
        warn!(%addr, "cannot forward to the room's node: {why}");
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the node serving this room ({addr}) cannot be reached; retry"),
        )
    };
    let mut sender = match connect(addr).await {
        Ok(sender) => sender,
        Err(e) => return unavailable(e),
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (mut parts, body) = req.into_parts();
    let body = match Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request bodies are limited to {limit} bytes"),
            );
        }
    };
    if let Ok(v) = HeaderValue::from_str(from) {
        parts.headers.insert(FORWARDED, v);
    }
    let sent = sender.send_request(Request::from_parts(parts, Full::new(body)));
    let mut resp = match tokio::time::timeout(ANSWER, sent).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return unavailable(e.to_string()),
        Err(_) => return unavailable("no answer in time".into()),
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let owner_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(client), Ok(owner)) = (client_upgrade.await, owner_upgrade.await) else {
                debug!("a forwarded upgrade did not complete");
                return;
            };
            let (mut client, mut owner) = (TokioIo::new(client), TokioIo::new(owner));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut owner).await;
        });
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, full(Bytes::new()));
    }
    let (parts, body) = resp.into_parts();
    match tokio::time::timeout(ANSWER, body.collect()).await {
        Ok(Ok(b)) => Response::from_parts(parts, full(b.to_bytes())),
        Ok(Err(e)) => unavailable(e.to_string()),
        Err(_) => unavailable("no answer in time".into()),
    }
}

/// Carries a forwarded room-to-room call's chain of waiting rooms
/// (`party/room,party/room`), so the deadlock check holds across nodes.
pub const CHAIN: &str = "x-dormouse-chain";

/// The chain of a forwarded call, as [`call`] wrote it.
pub fn chain<B>(req: &Request<B>) -> Vec<RoomKey> {
    let Some(v) = req.headers().get(CHAIN).and_then(|v| v.to_str().ok()) else {
        return Vec::new();
    };
    v.split(',')
        .filter_map(|k| k.split_once('/'))
        .map(|(p, r)| (p.into(), r.into()))
        .collect()
}

/// A room-to-room call for a room another node holds: its on-request runs
/// there. `None` when that node cannot be reached (the caller's `fetch`
/// then fails as for any unavailable room).
pub async fn call(
    addr: &str,
    target: &RoomKey,
    request: wit::Request,
    chain: &[RoomKey],
    from: &str,
) -> Option<wit::Response> {
    let mut sender = connect(addr).await.ok()?;
    // The callee's path is the room's; the query is the caller's.
    let query = request
        .uri
        .split_once('?')
        .map_or(String::new(), |(_, q)| format!("?{q}"));
    let mut out = Request::builder()
        .method(request.method.as_str())
        .uri(format!("/parties/{}/{}{query}", target.0, target.1));
    for (name, value) in &request.headers {
        out = out.header(name.as_str(), value.as_str());
    }
    let chain: Vec<String> = chain.iter().map(|(p, r)| format!("{p}/{r}")).collect();
    let out = out
        .header(FORWARDED, from)
        .header(CHAIN, chain.join(","))
        .header(hyper::header::HOST, addr)
        .body(Full::new(Bytes::from(request.body)))
        .ok()?;
    let resp = tokio::time::timeout(ANSWER, sender.send_request(out))
        .await
        .ok()?
        .ok()?;
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(ANSWER, body.collect())
        .await
        .ok()?
        .ok()?
        .to_bytes()
        .to_vec();
    Some(wit::Response {
        status: parts.status.as_u16(),
        headers: header_pairs(&parts.headers),
        body,
    })
}

/// A GET to another node whose answer streams (`/_dormouse/logs`): its
/// body, or `None` when the node cannot be reached or refuses.
pub async fn stream(
    addr: &str,
    path_and_query: &str,
    authorization: Option<&HeaderValue>,
    from: &str,
) -> Option<Incoming> {
    let mut sender = connect(addr).await.ok()?;
    let mut out = Request::builder()
        .uri(path_and_query)
        .header(hyper::header::HOST, addr)
        .header(FORWARDED, from);
    if let Some(a) = authorization {
        out = out.header(hyper::header::AUTHORIZATION, a);
    }
    let resp = sender
        .send_request(out.body(Full::new(Bytes::new())).ok()?)
        .await
        .ok()?;
    if !resp.status().is_success() {
        warn!(%addr, status = %resp.status(), "a node refused to stream its log");
        return None;
    }
    Some(resp.into_body())
}
