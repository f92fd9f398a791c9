//! The admin API under `/_dormouse/`: deploy, list and roll back versions,
//! delete a party, list rooms, stream room logs.
//!
//! Every request carries `Authorization: Bearer TOKEN`, compared in constant
//! time with the configured token. With no token configured, the API answers
//! only to loopback clients (the server says so in its log at start).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::broadcast::error::RecvError;

use crate::admin_token::constant_time_eq;
use crate::host::{AdminError, Host};
use crate::http::{Body, json, lines, read_body, text};
use crate::route::query_param;

/// The largest component an upload may carry.
const MAX_UPLOAD: usize = 64 << 20;

pub async fn handle(req: Request<Incoming>, host: Arc<Host>, peer: SocketAddr) -> Response<Body> {
    let token = match authorize(&req, &host, peer) {
        Ok(name) => name,
        Err(r) => return *r,
    };
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.split('/').skip(2).collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET, ["parties"]) => answer(
            host.blocking(|h| h.parties().map_err(AdminError::Failed))
                .await,
        ),
        (Method::PUT | Method::POST, ["parties", name]) => {
            let name = (*name).to_owned();
            let deadline = host.config().limits.body_timeout();
            let body = match read_body(req.into_body(), MAX_UPLOAD, deadline, host.metrics()).await
            {
                Ok(b) => b.to_vec(),
                Err(r) => return *r,
            };
            answer(host.upload(&name, body, &token).await)
        }
        (Method::POST, ["parties", name, "rollback"]) => {
            let to = query_param(&query, "version").and_then(|v| v.parse().ok());
            answer(host.rollback(name, to).await)
        }
        (Method::DELETE, ["parties", name]) => match host.delete_party(name).await {
            Ok(()) => text(StatusCode::OK, format!("party {name} deleted")),
            Err(e) => failure(e),
        },
        (Method::GET, ["rooms"]) => answer(host.rooms().await),
        (Method::GET, ["crons"]) => json(StatusCode::OK, &host.crons()),
        (Method::GET, ["logs"]) => logs(&req, &host, &query).await,
        _ => text(
            StatusCode::NOT_FOUND,
            "no such admin endpoint: see /_dormouse/{parties,rooms,crons,logs}".into(),
        ),
    }
}

/// An operation's result as JSON, or its failure.
fn answer<T: serde::Serialize>(result: Result<T, AdminError>) -> Response<Body> {
    match result {
        Ok(value) => json(StatusCode::OK, &value),
        Err(e) => failure(e),
    }
}

/// The caller's mistakes are 4xx and theirs to read; the host's own
/// failures are 500 and logged here, once.
fn failure(e: AdminError) -> Response<Body> {
    let status = match &e {
        AdminError::Refused(_) => StatusCode::BAD_REQUEST,
        AdminError::NotFound(_) => StatusCode::NOT_FOUND,
        AdminError::Failed(error) => {
            tracing::error!(error = format!("{error:#}"), "admin operation failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    text(status, e.to_string())
}

/// The token's name, or the refusal.
fn authorize(
    req: &Request<Incoming>,
    host: &Host,
    peer: SocketAddr,
) -> Result<String, Box<Response<Body>>> {
    // A browser names the page that made a request: a page of another
    // origin (a cross-site form or fetch) reaches nothing here, token or
    // not. The CLI sends no Origin.
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let own = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| format!("http://{h}"));
        if own
            .as_deref()
            .is_none_or(|own| origin.as_bytes() != own.as_bytes())
        {
            return Err(Box::new(text(
                StatusCode::FORBIDDEN,
                "the admin API answers no web page of another origin".into(),
            )));
        }
    }
    let Some(expected) = &host.config().admin_token else {
        // No token: loopback only, and by a loopback name, so a page whose
        // DNS name was rebound to 127.0.0.1 is not taken for the user.
        let host_name = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        if peer.ip().is_loopback() && host_name.is_some_and(loopback_name) {
            return Ok("local".into());
        }
        return Err(Box::new(text(
            StatusCode::FORBIDDEN,
            "the admin API has no token configured, so it answers only on loopback".into(),
        )));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "a valid DORMOUSE_TOKEN is needed (Authorization: Bearer TOKEN)".into(),
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Err(Box::new(r));
    }
    Ok(token_name(expected).to_owned())
}

/// Whether a Host header names this machine's loopback: `localhost` (and
/// `*.localhost`), `127.x.x.x` or `[::1]`, with or without a port.
fn loopback_name(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `NAME:SECRET` is named NAME; a bare secret is `default`.
pub fn token_name(token: &str) -> &str {
    token.split_once(':').map_or("default", |(name, _)| name)
}

/// Stream log lines (JSON, one per line) for the rooms the query selects.
/// Stream room log lines as NDJSON. In a cluster, the node asked also
/// streams every other live node's lines (asking each with the caller's
/// token), and each line names the node it comes from.
async fn logs(req: &Request<Incoming>, host: &Host, query: &str) -> Response<Body> {
    let party = query_param(query, "party");
    let room = query_param(query, "room");
    let node = host.cluster().map(|c| c.node_id().to_owned());
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(256);
    let mut local = host.logs().subscribe();
    let shutdown = host.shutdown().clone();
    let out = tx.clone();
    tokio::spawn(async move {
        loop {
            let line = tokio::select! {
                () = shutdown.cancelled() => return,
                () = out.closed() => return,
                line = local.recv() => line,
            };
            let text = match line {
                Ok(l) => {
                    if party.as_deref().is_some_and(|p| p != &*l.party)
                        || room.as_deref().is_some_and(|r| r != &*l.room)
                    {
                        continue;
                    }
                    let mut v = serde_json::to_value(&*l).unwrap_or_default();
                    if let (Some(n), Some(o)) = (&node, v.as_object_mut()) {
                        o.insert("node".into(), n.clone().into());
                    }
                    v.to_string()
                }
                Err(RecvError::Lagged(n)) => format!("{{\"missed\":{n}}}"),
                Err(RecvError::Closed) => return,
            };
            if out.send(text).await.is_err() {
                return;
            }
        }
    });
    if let Some(cluster) = host.cluster()
        && !crate::cluster::forward::is_forwarded(req)
    {
        let peers = cluster.peers().await.unwrap_or_default();
        let path = format!("/_dormouse/logs?{query}");
        let auth = req.headers().get(header::AUTHORIZATION).cloned();
        for (id, addr) in peers {
            let (out, path, auth, cluster) =
                (tx.clone(), path.clone(), auth.clone(), cluster.clone());
            tokio::spawn(async move {
                let Some(body) =
                    crate::cluster::forward::stream(&addr, &path, auth.as_ref(), &cluster).await
                else {
                    let _ = out.send(format!("{{\"unreachable\":{:?}}}", id)).await;
                    return;
                };
                let mut lines = lines(body);
                loop {
                    let line = tokio::select! {
                        () = out.closed() => return,
                        l = lines.next() => l,
                    };
                    let Some(Ok(text)) = line else { return };
                    if out.send(text).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
    drop(tx);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let text = rx.recv().await?;
        let frame = Frame::data(Bytes::from(text + "\n"));
        Some((Ok::<_, std::convert::Infallible>(frame), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert_eq!(token_name("ci:s3cret"), "ci");
        assert_eq!(token_name("s3cret"), "default");
        assert_eq!(
            query_param("a=1&version=3", "version").as_deref(),
            Some("3")
        );
        assert_eq!(query_param("room=a%2Fb&x", "room").as_deref(), Some("a/b"));
    }

    #[test]
    fn loopback_names() {
        for name in [
            "localhost",
            "localhost:1999",
            "LOCALHOST",
            "app.localhost:80",
            "127.0.0.1:1999",
            "127.1.2.3",
            "[::1]:1999",
            "[::1]",
        ] {
            assert!(loopback_name(name), "{name}");
        }
        for name in [
            "evil.example:1999",
            "localhost.evil.example",
            "10.0.0.1:1999",
            "[::2]:1",
            "",
            "0.0.0.0:1999",
        ] {
            assert!(!loopback_name(name), "{name}");
        }
    }
}
