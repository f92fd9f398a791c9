//! The CLI's side of the admin API: one HTTP/1.1 request per call, over
//! hyper, with the bearer token from `DORMOUSE_TOKEN` or the data dir
//! (`admin_token`).

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub struct Admin {
    /// `host:port`
    authority: String,
    token: Option<String>,
}

impl Admin {
    /// A client for the server at `url` (`http://127.0.0.1:1999` or `127.0.0.1:1999`).
    pub fn new(url: &str) -> anyhow::Result<Admin> {
        let url = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let uri: Uri = url
            .parse()
            .with_context(|| format!("bad server URL {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("only http:// servers are supported (put TLS in a proxy in front)");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("no host in {url:?}"))?
            .to_string();
        let token = dormouse_host::admin_token::find();
        Ok(Admin { authority, token })
    }

    /// Send one request; the status and body. A non-2xx status is an error
    /// whose text is the server's one-line reason.
    pub async fn call(&self, method: Method, path: &str, body: Vec<u8>) -> anyhow::Result<Bytes> {
        let (status, body) = self.send(method, path, body).await?;
        let bytes = body
            .collect()
            .await
            .context("the server closed the connection mid-answer")?
            .to_bytes();
        if !status.is_success() {
            let reason = String::from_utf8_lossy(&bytes).trim().to_owned();
            if status == StatusCode::UNAUTHORIZED {
                bail!(
                    "{reason} (set DORMOUSE_TOKEN to the server's token: the file admin-token in its data dir)"
                );
            }
            bail!("{status}: {reason}");
        }
        Ok(bytes)
    }

    /// Send one request and hand each line of the (streamed) answer to `line`.
    pub async fn stream(&self, path: &str, mut line: impl FnMut(&str)) -> anyhow::Result<()> {
        let (status, body) = self.send(Method::GET, path, Vec::new()).await?;
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            bail!("{status}: {}", String::from_utf8_lossy(&bytes).trim());
        }
        let mut lines = dormouse_host::http::lines(body);
        while let Some(l) = lines.next().await {
            line(l.context("the server's stream broke off")?.trim_end());
        }
        Ok(())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(StatusCode, hyper::body::Incoming)> {
        let tcp = TcpStream::connect(&self.authority).await.with_context(|| {
            format!(
                "cannot reach {} (is `dormouse serve` running?)",
                self.authority
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .context("HTTP handshake failed")?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority);
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        let res = sender.send_request(req).await.context("request failed")?;
        Ok((res.status(), res.into_body()))
    }
}
