//! The HTTP edge: accept loop, routing, WebSocket upgrades, on-request,
//! health, metrics and static files. `run(listener, host)` is what `main`
//! and the tests both drive.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tracing::{Instrument, debug, info, warn};

use crate::cluster::Owner;
use crate::cluster::forward;
use crate::edge::socket::Socket;
use crate::host::Host;
use crate::http::{Body, full, header_pairs, read_body, text};
use crate::room::instance::Before;
use crate::room::outbound::Outbound;
use crate::room::{Accepted, ConnRef, Connect, Event};
use crate::route::RoomKey;
use crate::route::{self, RoomPath, Route, RouteError};
use crate::wit;

/// How long shutdown waits for rooms and sockets to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Which listener a request came in on.
#[derive(Clone, Copy, PartialEq)]
enum Port {
    /// Rooms, admin, health; metrics too unless they have their own port.
    Public { metrics: bool },
    /// Metrics and health only (`metrics_listen`).
    Metrics,
}

/// Serve until `host.shutdown()` is cancelled, then close every socket with
/// 1001, let rooms finish their current event, and return.
pub async fn run(listener: TcpListener, host: Arc<Host>) -> anyhow::Result<()> {
    serve(listener, None, host).await
}

/// As [`run`], with `/_dormouse/metrics` served only on `metrics` (a
/// private port for the scraper) and health on both.
pub async fn run_with_metrics(
    listener: TcpListener,
    metrics: TcpListener,
    host: Arc<Host>,
) -> anyhow::Result<()> {
    serve(listener, Some(metrics), host).await
}

async fn serve(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    host: Arc<Host>,
) -> anyhow::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "dormouse listening");
    }
    if let Some(addr) = metrics.as_ref().and_then(|m| m.local_addr().ok()) {
        info!(%addr, "metrics and health listening");
    }
    if host.config().admin_token.is_none() {
        info!(
            "no admin token: the admin API (/_dormouse/parties, rooms, logs) answers only on loopback"
        );
    }
    host.start();
    let public = Port::Public {
        metrics: metrics.is_none(),
    };
    if let Some(metrics) = metrics {
        host.tasks()
            .spawn(accept(metrics, Port::Metrics, host.clone()));
    }
    accept(listener, public, host.clone()).await;
    host.tasks().close();
    if tokio::time::timeout(SHUTDOWN_GRACE, host.tasks().wait())
        .await
        .is_err()
    {
        warn!("some tasks were still running at shutdown");
    }
    host.leave().await;
    info!("dormouse stopped");
    Ok(())
}

/// One open TCP connection, counted against `max_connections` until the
/// last of its holders drops it: the HTTP connection's task, and for a
/// WebSocket the socket's task, which takes it over at the upgrade (the
/// request carries it there in its extensions).
#[derive(Clone)]
struct Open {
    _held: Arc<OpenInner>,
}

struct OpenInner(Arc<AtomicUsize>);

impl Drop for OpenInner {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Accept connections on one listener until shutdown.
async fn accept(listener: TcpListener, port: Port, host: Arc<Host>) {
    let open = Arc::new(AtomicUsize::new(0));
    let cap = host.config().limits.max_connections.unwrap_or(usize::MAX);
    loop {
        tokio::select! {
            () = host.shutdown().cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    if open.fetch_add(1, Relaxed) >= cap {
                        open.fetch_sub(1, Relaxed);
                        host.metrics().connections_refused.fetch_add(1, Relaxed);
                        host.tasks().spawn(refuse(tcp));
                        continue;
                    }
                    let guard = Open {
                        _held: Arc::new(OpenInner(open.clone())),
                    };
                    let _ = tcp.set_nodelay(true);
                    let h = host.clone();
                    host.tasks().spawn(serve_connection(tcp, peer, h, port, guard));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: back off, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// A connection past `max_connections`: one line of 503, then closed. The
/// open ones are kept; a client retries later, as after any 503.
async fn refuse(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 55\r\nconnection: close\r\nretry-after: 1\r\n\r\nthis server holds as many connections as it may; retry\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(ANSWER)).await;
    let _ = tcp.shutdown().await;
    // Read what the client sent until it closes too (briefly): closing with
    // its request unread would reset the connection, and the client could
    // lose the answer.
    let drain = async {
        let mut buf = [0u8; 1024];
        while let Ok(1..) = tcp.read(&mut buf).await {}
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    host: Arc<Host>,
    port: Port,
    open: Open,
) {
    let io = TokioIo::new(tcp);
    let h = host.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        let h = h.clone();
        req.extensions_mut().insert(open.clone());
        async move { Ok::<_, Infallible>(handle(req, h, peer, port).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(
            host.config().limits.header_timeout_ms,
        ))
        .max_buf_size(64 << 10)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(error = %e, "http connection ended with an error");
            }
        }
        () = host.shutdown().cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

async fn handle(
    mut req: Request<Incoming>,
    host: Arc<Host>,
    peer: SocketAddr,
    port: Port,
) -> Response<Body> {
    // A client cannot pass for a node: from here on, the node markers are
    // trusted by their presence.
    forward::admit(&mut req, host.cluster().map(|c| &**c));
    let route = route::parse(req.uri().path());
    match (&route, port) {
        (Ok(Route::Health | Route::Metrics), Port::Metrics) => {}
        (_, Port::Metrics) => {
            return text(
                StatusCode::NOT_FOUND,
                "this port serves /_dormouse/metrics and /_dormouse/health only".into(),
            );
        }
        (Ok(Route::Metrics), Port::Public { metrics: false }) => {
            return text(
                StatusCode::NOT_FOUND,
                "metrics are served on the metrics address (metrics_listen)".into(),
            );
        }
        _ => {}
    }
    match route {
        Err(e) => {
            let status = match e {
                RouteError::MissingRoom => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_REQUEST,
            };
            text(status, e.to_string())
        }
        Ok(Route::Health) => health(&host),
        Ok(Route::Metrics) => {
            let mut r = text(StatusCode::OK, host.render_metrics());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        Ok(Route::Admin) => crate::edge::admin::handle(req, host, peer).await,
        Ok(Route::Static) => static_file(&host, req).await,
        Ok(Route::Room(path)) => {
            if !host.serves(&path.party) {
                let msg = format!("no party named {:?} is deployed", path.party);
                return text(StatusCode::NOT_FOUND, msg);
            }
            if let Some(cluster) = host.cluster()
                && !forward::is_forwarded(&req)
            {
                let key: RoomKey = (path.party.as_str().into(), path.room.as_str().into());
                match cluster.owner(&key).await {
                    Ok(Owner::Local) => {}
                    Ok(Owner::Remote(addr)) => {
                        cluster.metrics.forwards.fetch_add(1, Relaxed);
                        let limit = host.limits_for(&path.party).message_bytes;
                        let bounds = (limit, host.config().limits.body_timeout());
                        return forward::forward(req, &addr, cluster, bounds, host.metrics()).await;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot route a room's request");
                        return text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "this node cannot serve rooms right now (it cannot reach the cluster's database); retry".into(),
                        );
                    }
                }
            }
            if is_upgrade(&req) {
                upgrade(req, host, path).await
            } else {
                request(req, host, path).await
            }
        }
    }
}

/// `/_dormouse/health`: 200 `ok` while this node can serve rooms, else 503
/// with the reason, so a balancer's check (HAProxy's `httpchk`) sends the
/// clients elsewhere: a node shutting down, or in a cluster one that is not
/// a live member (joining, or self-fenced when its lease lapsed).
fn health(host: &Host) -> Response<Body> {
    let why = if host.shutdown().is_cancelled() {
        Some("draining: this node is shutting down")
    } else if host.cluster().is_some_and(|c| !c.is_live()) {
        Some(
            "not a live member of the cluster (joining, or fenced: its lease lapsed); it serves no room",
        )
    } else {
        None
    };
    match why {
        Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, why.into()),
        None => text(StatusCode::OK, "ok".into()),
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")
}

/// The request as the room sees it.
fn wit_request<B>(req: &Request<B>, body: Vec<u8>) -> wit::Request {
    wit::Request {
        method: req.method().to_string(),
        uri: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.to_string()),
        headers: header_pairs(req.headers()),
        body,
    }
}

fn room_key(path: RoomPath) -> RoomKey {
    (path.party.into(), path.room.into())
}

async fn upgrade(mut req: Request<Incoming>, host: Arc<Host>, path: RoomPath) -> Response<Body> {
    if req.method() != Method::GET {
        return text(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade must be a GET".into(),
        );
    }
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let Some(ws_key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key".into());
    };
    if !version_ok {
        let mut r = text(
            StatusCode::UPGRADE_REQUIRED,
            "only WebSocket version 13 is spoken".into(),
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let id = match route::connection_id(req.uri().query()) {
        Ok(Some(id)) => id,
        Ok(None) => uuid::Uuid::new_v4().to_string(),
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let conn = ConnRef {
        id: id.into(),
        serial: host.next_serial(),
    };
    let limits = host.limits_for(&path.party);
    let key = room_key(path);
    let request = wit_request(&req, Vec::new());
    let request = match host.lobby(&key, Before::Connect, request).await {
        Ok(request) => request,
        Err(refusal) if refusal.status == 101 => {
            return accept_and_close(req, &host, &ws_key, &refusal.body);
        }
        Err(refusal) => return response(refusal),
    };
    let (outbound, outbound_rx) = Outbound::new(limits.outbound_queue_bytes);
    let (reply, verdict) = oneshot::channel();
    let connect = Connect {
        conn: conn.clone(),
        request,
        outbound,
        forwarded: forward::is_forwarded(&req),
        reply,
    };
    if !host.dispatch(&key, Event::Connect(Box::new(connect))).await {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down".into(),
        );
    }
    let Accepted { room, status } = match verdict.await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(refusal)) => return response(refusal),
        Err(_) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the room is unavailable".into(),
            );
        }
    };

    let on_upgrade = hyper::upgrade::on(&mut req);
    // The socket's task holds the connection's place in max_connections.
    let open = req.extensions_mut().remove::<Open>();
    let socket = Socket {
        conn: conn.clone(),
        room: room.clone(),
        outbound: outbound_rx,
        shutdown: host.shutdown().clone(),
        status,
        pings: host.pings().clone(),
    };
    let config = ws_config(limits.message_bytes);
    let span = tracing::info_span!("connection", party = %key.0, room = %key.1, id = %conn.id);
    let task = async move {
        let _open = open;
        // The socket itself, not hyper's boxed IO: the room writes to it
        // directly (`outbound`). Hyper serves only `TokioIo<TcpStream>`s,
        // so the downcast fails only if that changes.
        let tcp = match on_upgrade.await {
            Ok(upgraded) => upgraded
                .downcast::<TokioIo<TcpStream>>()
                .map_err(|_| "the upgraded connection is not a TCP stream".to_string()),
            Err(e) => Err(e.to_string()),
        };
        match tcp {
            Ok(hyper::upgrade::Parts { io, read_buf, .. }) => {
                let wire = socket.outbound.attach(io.into_inner());
                // What the client sent after its upgrade request, which hyper
                // read. Copied out: `read_buf` is a slice of hyper's whole
                // read buffer (8 KiB), which it would keep for the socket's life.
                let early = read_buf.to_vec();
                drop(read_buf);
                let ws =
                    WebSocketStream::from_partially_read(wire, early, Role::Server, Some(config))
                        .await;
                socket.run(ws).await;
            }
            Err(e) => {
                debug!(error = %e, "upgrade failed");
                let _ = room
                    .send(Event::Closed {
                        conn,
                        code: 1006,
                        reason: String::new(),
                        was_clean: false,
                    })
                    .await;
            }
        }
    };
    host.tasks().spawn(task.instrument(span));
    switching_protocols(&ws_key)
}

/// The lobby accepted the socket only to close it (a `WebSocketPair`
/// closed in `onBeforeConnect`, PartyKit's way to refuse with a close code
/// a browser can read): the upgrade completes, and the close frame goes out
/// at once, with `payload`'s code and reason. A code a server may not send
/// becomes 1011.
fn accept_and_close(
    mut req: Request<Incoming>,
    host: &Arc<Host>,
    ws_key: &HeaderValue,
    payload: &[u8],
) -> Response<Body> {
    let (code, reason) = match payload {
        [hi, lo, reason @ ..] => (u16::from_be_bytes([*hi, *lo]), reason),
        _ => (1000, &[][..]),
    };
    let code = if code == 1000 || (3000..=4999).contains(&code) {
        code
    } else {
        1011
    };
    let mut reason = String::from_utf8_lossy(reason).into_owned();
    while reason.len() > 123 {
        reason.pop();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let open = req.extensions_mut().remove::<Open>();
    host.tasks().spawn(async move {
        let _open = open;
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let io = TokioIo::new(upgraded);
        let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        let frame = CloseFrame {
            code: code.into(),
            reason: reason.into(),
        };
        if ws.close(Some(frame)).await.is_ok() {
            // The client's close answers ours; then the TCP connection ends.
            let drained = async { while let Some(Ok(_)) = ws.next().await {} };
            let _ = tokio::time::timeout(CLOSE_WAIT, drained).await;
        }
    });
    switching_protocols(ws_key)
}

/// How long a socket closed by the lobby waits for the client's close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The 101 that completes a WebSocket upgrade.
fn switching_protocols(ws_key: &HeaderValue) -> Response<Body> {
    let accept = derive_accept_key(ws_key.as_bytes());
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

fn ws_config(message_bytes: usize) -> WebSocketConfig {
    // tungstenite's defaults reserve 128 KiB to read into per socket, and
    // buffer writes up to 128 KiB: at tens of thousands of idle sockets that
    // is most of the server's memory. The read buffer grows when a frame
    // needs it; each message is written out at once (the socket task
    // flushes every message anyway).
    WebSocketConfig::default()
        .max_message_size(Some(message_bytes))
        .max_frame_size(Some(message_bytes))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
}

/// Bytes reserved to read a socket's frames into; grows for larger frames.
const READ_BUFFER: usize = 256;

async fn request(req: Request<Incoming>, host: Arc<Host>, path: RoomPath) -> Response<Body> {
    let limit = host.limits_for(&path.party).message_bytes;
    let (parts, body) = req.into_parts();
    let body = match read_body(
        body,
        limit,
        host.config().limits.body_timeout(),
        host.metrics(),
    )
    .await
    {
        Ok(b) => b.to_vec(),
        Err(r) => return *r,
    };
    let head = Request::from_parts(parts, ());
    let key = room_key(path);
    // A room-to-room call forwarded by another node carries its chain; it
    // goes to the room itself, as a local one does, not through the lobby.
    let call = forward::is_forwarded(&head) && head.headers().contains_key(forward::CHAIN);
    let chain = if call {
        forward::chain(&head)
    } else {
        Vec::new()
    };
    let mut request = wit_request(&head, body);
    if !call {
        request = match host.lobby(&key, Before::Request, request).await {
            Ok(request) => request,
            Err(answer) => return response(answer),
        };
    }
    let (reply, answer) = oneshot::channel();
    let event = Event::Request {
        request: Box::new(request),
        chain,
        reply,
    };
    if !host.dispatch(&key, event).await {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down".into(),
        );
    }
    match answer.await {
        Ok(r) => response(r),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the room is unavailable".into(),
        ),
    }
}

/// A guest's response as HTTP; what HTTP cannot carry is refused with a
/// 500 or dropped. Public for the fuzz target.
pub fn response(r: wit::Response) -> Response<Body> {
    // 1xx are not final answers (101 would claim an upgrade that never happens).
    let status = match StatusCode::from_u16(r.status) {
        Ok(s) if !s.is_informational() => s,
        _ => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the room answered with an invalid status {}", r.status),
            );
        }
    };
    let length = r.body.len().to_string();
    let mut out = Response::new(full(r.body));
    *out.status_mut() = status;
    for (name, value) in r.headers {
        match (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            // What the host sets anyway (a JavaScript `Response` always
            // carries its body's length): nothing to say.
            (Ok(n), Ok(_)) if n == header::CONTENT_LENGTH && value.trim() == length => {}
            // The host frames the body and owns the connection: a guest's
            // length or hop-by-hop headers could desynchronise the stream.
            (Ok(n), Ok(_)) if HOST_HEADERS.contains(&n) => {
                warn!(header = %name, "the room may not set this header; dropped");
            }
            (Ok(n), Ok(v)) => {
                out.headers_mut().append(n, v);
            }
            _ => warn!(header = %name, "the room sent an invalid header; dropped"),
        }
    }
    out
}

/// Headers the host sets itself, never taken from a room's response.
const HOST_HEADERS: [header::HeaderName; 6] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
];

/// A file from the public folder, if the host serves one: GET and HEAD,
/// `Range`, `ETag` and `Last-Modified` with their conditional requests
/// (hyper-staticfile, which also keeps every path inside the folder); no
/// hidden files.
async fn static_file(host: &Host, req: Request<Incoming>) -> Response<Body> {
    let not_found = || {
        text(
            StatusCode::NOT_FOUND,
            "nothing here; rooms live at /parties/:party/:room".into(),
        )
    };
    let Some(public) = &host.config().public else {
        return not_found();
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "static files answer GET and HEAD".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let decoded = percent_encoding::percent_decode_str(req.uri().path()).decode_utf8_lossy();
    if decoded
        .split('/')
        .any(|s| s.starts_with('.') || s.contains('\\'))
    {
        return not_found();
    }
    let (parts, _) = req.into_parts();
    let head = Request::from_parts(parts, ());
    let cached = head.headers().get(header::IF_NONE_MATCH).cloned();
    let Ok(served) = hyper_staticfile::Static::new(public.clone())
        .serve(head)
        .await
    else {
        return not_found();
    };
    let (mut parts, body) = served.into_parts();
    if parts.status == StatusCode::NOT_FOUND {
        return not_found();
    }
    // hyper-staticfile answers If-Modified-Since; If-None-Match is here.
    let etag = parts.headers.get(header::ETAG);
    if let (Some(etag), Some(cached)) = (etag, &cached)
        && etag_matches(cached, etag)
    {
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, full(Bytes::new()));
    }
    // A read error mid-file ends the body early (the client sees it short).
    let frames = http_body_util::BodyStream::new(body)
        .filter_map(|frame| std::future::ready(frame.ok().map(Ok::<_, Infallible>)));
    let body = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(frames));
    Response::from_parts(parts, body)
}

/// Whether an `If-None-Match` names this entity tag (weak comparison).
fn etag_matches(cached: &HeaderValue, etag: &HeaderValue) -> bool {
    let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let (Ok(cached), Ok(etag)) = (cached.to_str(), etag.to_str()) else {
        return false;
    };
    let etag = weak(etag);
    cached
        .split(',')
        .any(|t| t.trim() == "*" || weak(t) == etag)
}
