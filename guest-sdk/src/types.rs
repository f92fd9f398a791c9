//! `dormouse:room/types`: messages, requests, responses and errors, with helpers.

use crate::bindings::dormouse::room::types as wit;

/// A WebSocket message: `Text(String)` or `Binary(Vec<u8>)`.
///
/// ```
/// let m = dormouse_sdk::Message::Text("hi".into());
/// assert!(matches!(m, dormouse_sdk::Message::Text(_)));
/// ```
pub type Message = wit::Message;

/// An HTTP request: method, uri (path and query), headers, body.
pub type Request = wit::Request;

/// An HTTP response: status, headers, body.
pub type Response = wit::Response;

/// Why the host refused an import call.
pub type Error = wit::Error;

/// A log level for [`crate::context::log`].
pub type Level = wit::Level;

impl wit::Response {
    /// A response with a `text/plain` body.
    ///
    /// ```
    /// let r = dormouse_sdk::Response::text(200, "ok");
    /// assert_eq!(r.body, b"ok");
    /// ```
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        wit::Response {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: body.into().into_bytes(),
        }
    }

    /// A response with a body and a content type.
    ///
    /// ```
    /// let r = dormouse_sdk::Response::with_type(200, "text/html", "<p>hi</p>");
    /// assert_eq!(r.headers[0].1, "text/html");
    /// ```
    pub fn with_type(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        wit::Response {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// `404 Not Found`, the default answer of [`crate::Room::on_request`].
    ///
    /// ```
    /// assert_eq!(dormouse_sdk::Response::not_found().status, 404);
    /// ```
    pub fn not_found() -> Self {
        Self::text(404, "not found")
    }
}

impl wit::Request {
    /// The path of the request, without the query.
    ///
    /// ```
    /// let r = dormouse_sdk::Request { method: "GET".into(), uri: "/parties/main/a?x=1".into(), headers: vec![], body: vec![] };
    /// assert_eq!(r.path(), "/parties/main/a");
    /// ```
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or(&self.uri)
    }

    /// A query parameter's raw value (not percent-decoded).
    ///
    /// ```
    /// let r = dormouse_sdk::Request { method: "GET".into(), uri: "/a?name=bo&x".into(), headers: vec![], body: vec![] };
    /// assert_eq!(r.query("name"), Some("bo"));
    /// assert_eq!(r.query("y"), None);
    /// ```
    pub fn query(&self, name: &str) -> Option<&str> {
        let (_, query) = self.uri.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// A header's value, by case-insensitive name.
    ///
    /// ```
    /// let r = dormouse_sdk::Request { method: "GET".into(), uri: "/".into(), headers: vec![("Origin".into(), "x".into())], body: vec![] };
    /// assert_eq!(r.header("origin"), Some("x"));
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
