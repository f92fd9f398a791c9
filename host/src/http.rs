//! HTTP answers the host writes itself: plain one-line text, JSON, and the
//! body type the edge (`server`, `admin`) answers with.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::io::StreamReader;

use std::sync::atomic::Ordering::Relaxed;

use crate::metrics::Metrics;
use crate::wit;

/// The longest line [`lines`] takes: a room log line is far shorter.
const MAX_LINE: usize = 1 << 20;

/// The lines of a streamed body (NDJSON: `/_dormouse/logs`, read by another
/// node and by `dormouse tail`), without their newlines.
pub fn lines(
    body: hyper::body::Incoming,
) -> FramedRead<impl tokio::io::AsyncRead + Unpin, LinesCodec> {
    let data = http_body_util::BodyStream::new(body).filter_map(|frame| {
        std::future::ready(match frame {
            Ok(frame) => frame.into_data().ok().map(Ok),
            Err(e) => Some(Err(std::io::Error::other(e))),
        })
    });
    FramedRead::new(
        StreamReader::new(data),
        LinesCodec::new_with_max_length(MAX_LINE),
    )
}

/// A request's whole body, bounded in size and in time (the client has
/// `deadline` from the end of its headers to send it): else the one-line
/// 413 or 408 to answer with.
pub async fn read_body(
    body: hyper::body::Incoming,
    limit: usize,
    deadline: std::time::Duration,
    metrics: &Metrics,
) -> Result<Bytes, Box<Response<Body>>> {
    match tokio::time::timeout(
        deadline,
        http_body_util::Limited::new(body, limit).collect(),
    )
    .await
    {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(_)) => Err(Box::new(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request bodies are limited to {limit} bytes"),
        ))),
        Err(_) => {
            metrics.body_timeouts.fetch_add(1, Relaxed);
            Err(Box::new(text(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} ms (body_timeout_ms)",
                    deadline.as_millis()
                ),
            )))
        }
    }
}

/// Response bodies: whole (most) or streamed (`/_dormouse/logs`).
pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// Headers as (name, value) pairs, as WIT carries them (a value that is
/// not UTF-8 is kept lossily).
pub fn header_pairs(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The one content type of the host's plain-text answers.
const TEXT: &str = "text/plain; charset=utf-8";

/// A one-line plain-text answer.
pub fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body + "\n"));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT));
    r
}

/// The same answer as a room's response (what a room-to-room call or the
/// lobby gets when the host answers for a room).
pub fn text_response(status: u16, line: &str) -> wit::Response {
    wit::Response {
        status,
        headers: vec![("content-type".into(), TEXT.into())],
        body: format!("{line}\n").into_bytes(),
    }
}

/// A JSON answer.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
