//! Forwarding, in a cluster: a WebSocket, a request or a room-to-room call
//! for a room that another live node holds goes to that node, frames in
//! both directions. Browsers cannot follow a redirect on a WebSocket
//! handshake, so a node forwards instead of redirecting.
//!
//! A node's request to another carries a signed mark ([`FORWARDED`]); every
//! other `x-dormouse-*` header, from a client or a guest, is dropped at the
//! door ([`admit`]), so no client can pass for a node.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use hyper::HeaderMap;
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;

use crate::admin_token::constant_time_eq;
use crate::clock::now_ms;
use crate::cluster::Cluster;
use crate::http::{Body, full, header_pairs, read_body, text};
use crate::metrics::Metrics;
use crate::route::{RoomKey, node_header};
use crate::wit;

/// Marks a request one node forwarded to another. The owner serves it
/// (claiming the room if its own view is stale) and never forwards it again,
/// so two nodes that disagree cannot bounce a request between them. Its
/// value is `NODE;UNIX_MS;MAC`: the MAC (HMAC-SHA256 under the cluster's
/// secret) covers node, time, method, path and query, and the [`CHAIN`].
pub const FORWARDED: &str = "x-dormouse-forwarded";

/// How far a mark's time may be from this node's clock: it bounds how long
/// a captured mark can be replayed. Wide, because nodes' clocks are not
/// trusted to agree (the cluster tests run one 90 s ahead): nothing here
/// orders events by two machines' clocks.
const MARK_AGE_MS: u64 = 10 * 60_000;

/// HMAC-SHA256 (RFC 2104), hex.
fn hmac(key: &[u8], message: &[u8]) -> String {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

fn mac(secret: &str, from: &str, at: u64, method: &str, uri: &str, chain: &str) -> String {
    let message = format!("{from}\n{at}\n{method}\n{uri}\n{chain}");
    hmac(secret.as_bytes(), message.as_bytes())
}

/// The [`FORWARDED`] value for a request from node `from`.
fn mark(secret: &str, from: &str, method: &str, uri: &str, chain: &str) -> String {
    let at = now_ms();
    let mac = mac(secret, from, at, method, uri, chain);
    format!("{from};{at};{mac}")
}

/// Whether the request carries a mark this cluster's secret made, recently.
fn verified<B>(req: &Request<B>, secret: &str) -> bool {
    let value = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let Some(mark) = value(FORWARDED) else {
        return false;
    };
    let mut parts = mark.splitn(3, ';');
    let (Some(from), Some(at), Some(given)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(at) = at.parse::<u64>() else {
        return false;
    };
    if now_ms().abs_diff(at) > MARK_AGE_MS {
        return false;
    }
    let uri = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let want = mac(
        secret,
        from,
        at,
        req.method().as_str(),
        uri,
        value(CHAIN).unwrap_or(""),
    );
    constant_time_eq(want.as_bytes(), given.as_bytes())
}

/// Drop every `x-dormouse-*` header of a request at the door, unless it is
/// a node's of this cluster (its mark verifies): the markers are trusted
/// by their presence after this.
pub fn admit<B>(req: &mut Request<B>, cluster: Option<&Cluster>) {
    if !req.headers().keys().any(|k| node_header(k.as_str())) {
        return;
    }
    if let Some(cluster) = cluster
        && verified(req, cluster.secret())
    {
        return;
    }
    strip(req.headers_mut());
}

/// Remove the headers only nodes may send.
fn strip(headers: &mut HeaderMap) {
    let names: Vec<_> = headers
        .keys()
        .filter(|k| node_header(k.as_str()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

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
/// `limit` and `deadline`, as the owner would bound it.
pub async fn forward(
    mut req: Request<Incoming>,
    addr: &str,
    cluster: &Cluster,
    (limit, deadline): (usize, Duration),
    metrics: &Metrics,
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
    let body = match read_body(body, limit, deadline, metrics).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let uri = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mark = mark(
        cluster.secret(),
        cluster.node_id(),
        parts.method.as_str(),
        uri,
        "",
    );
    if let Ok(v) = HeaderValue::from_str(&mark) {
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
        .filter_map(|(p, r)| {
            let room = percent_decode_str(r).decode_utf8().ok()?;
            Some((p.into(), room.as_ref().into()))
        })
        .collect()
}

/// A room id as one path segment (or chain entry): every byte but letters
/// and digits percent-encoded, so a '%', ',' or '/' in an id comes back as
/// itself (`a%41` stays `a%41`, never `aA`).
fn encode(room: &str) -> String {
    utf8_percent_encode(room, NON_ALPHANUMERIC).to_string()
}

/// A room-to-room call for a room another node holds: its on-request runs
/// there. `None` when that node cannot be reached (the caller's `fetch`
/// then fails as for any unavailable room).
pub async fn call(
    addr: &str,
    target: &RoomKey,
    request: wit::Request,
    chain: &[RoomKey],
    cluster: &Cluster,
) -> Option<wit::Response> {
    let mut sender = connect(addr).await.ok()?;
    // The callee's path is the room's; the query is the caller's.
    let query = request
        .uri
        .split_once('?')
        .map_or(String::new(), |(_, q)| format!("?{q}"));
    let uri = format!("/parties/{}/{}{query}", target.0, encode(&target.1));
    let mut out = Request::builder()
        .method(request.method.as_str())
        .uri(uri.as_str());
    for (name, value) in &request.headers {
        if !node_header(name) {
            out = out.header(name.as_str(), value.as_str());
        }
    }
    let chain: Vec<String> = chain
        .iter()
        .map(|(p, r)| format!("{p}/{}", encode(r)))
        .collect();
    let chain = chain.join(",");
    let mark = mark(
        cluster.secret(),
        cluster.node_id(),
        request.method.as_str(),
        &uri,
        &chain,
    );
    let out = out
        .header(FORWARDED, mark)
        .header(CHAIN, chain)
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
    cluster: &Cluster,
) -> Option<Incoming> {
    let mut sender = connect(addr).await.ok()?;
    let mark = mark(
        cluster.secret(),
        cluster.node_id(),
        "GET",
        path_and_query,
        "",
    );
    let mut out = Request::builder()
        .uri(path_and_query)
        .header(hyper::header::HOST, addr)
        .header(FORWARDED, mark);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(mark: &str, uri: &str, chain: Option<&str>) -> Request<()> {
        let mut r = Request::builder()
            .method("POST")
            .uri(uri)
            .header(FORWARDED, mark)
            .header("x-other", "kept");
        if let Some(chain) = chain {
            r = r.header(CHAIN, chain);
        }
        r.body(()).expect("a request")
    }

    #[test]
    fn a_mark_holds_only_for_its_secret_request_and_time() {
        let uri = "/parties/main/r?x=1";
        let good = mark("s3cret", "n1", "POST", uri, "main/a");
        assert!(verified(&request(&good, uri, Some("main/a")), "s3cret"));
        assert!(!verified(&request(&good, uri, Some("main/a")), "other"));
        assert!(!verified(
            &request(&good, "/parties/main/q?x=1", Some("main/a")),
            "s3cret"
        ));
        assert!(!verified(&request(&good, uri, Some("main/b")), "s3cret"));
        assert!(!verified(&request(&good, uri, None), "s3cret"));
        // A client's guesses.
        assert!(!verified(&request("n1", uri, None), "s3cret"));
        assert!(!verified(&request("n1;1;00", uri, None), "s3cret"));
        // A replay of a real mark, long after.
        let at = now_ms() - 2 * MARK_AGE_MS;
        let old = format!("n1;{at};{}", mac("s3cret", "n1", at, "POST", uri, ""));
        assert!(!verified(&request(&old, uri, None), "s3cret"));
    }

    #[test]
    fn a_client_loses_every_node_header_at_the_door() {
        let mut req = request("n1;1;00", "/parties/main/r", Some("main/a"));
        req.headers_mut()
            .insert("X-Dormouse-Anything", HeaderValue::from_static("1"));
        admit(&mut req, None);
        let names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-other"]);
        assert!(
            node_header("X-Dormouse-Chain") && !node_header("x-dormous") && !node_header("x-other")
        );
    }

    #[test]
    fn room_ids_cross_nodes_as_they_are() {
        let odd = "a%41,b c";
        let uri = format!("/parties/main/{}", encode(odd));
        match crate::route::parse(&uri) {
            Ok(crate::route::Route::Room(path)) => assert_eq!(path.room, odd),
            other => panic!("{other:?}"),
        }
        let chain = format!("main/{},other/x", encode(odd));
        let req = request("", "/", Some(&chain));
        let want: Vec<RoomKey> = vec![("main".into(), odd.into()), ("other".into(), "x".into())];
        assert_eq!(super::chain(&req), want);
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        assert_eq!(
            hmac(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
