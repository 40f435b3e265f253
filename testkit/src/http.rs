//! Plain HTTP/1.1 requests over a fresh connection each, as a browser or a script makes them to
//! a node or a backend: enough for status, headers, cookies and a JSON body.

use std::io::{Read as _, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::deadline::WAIT;

/// What a server answered.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    /// Header names in lower case, in the order they came.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The value of the cookie `name` the answer sets, if it sets it.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .filter_map(|(_, v)| v.split(';').next()?.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_owned())
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .map_err(|e| anyhow!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// GET `path`; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let answer = http_request(addr, "GET", path, &[], None).await?;
    Ok((answer.status, answer.body))
}

/// `method` on `path` with extra `headers`, and with `body` sent as JSON when given.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> Result<HttpAnswer> {
    let body = body.map(serde_json::Value::to_string);
    exchange(
        addr,
        method,
        path,
        headers,
        body.as_deref(),
        Duration::from_secs(5),
    )
    .await
}

/// `method` on `path` with extra `headers` and `body` as it is (malformed JSON included),
/// labelled as JSON with its length even when empty; waits up to [`WAIT`] for the answer.
pub async fn http_request_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<HttpAnswer> {
    exchange(addr, method, path, headers, Some(body), WAIT).await
}

/// [`http_request_text`] waiting up to `wait` for the answer (a long poll).
pub async fn http_request_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    wait: Duration,
) -> Result<HttpAnswer> {
    exchange(addr, method, path, headers, Some(body), wait).await
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    wait: Duration,
) -> Result<HttpAnswer> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or_default());
    tokio::task::spawn_blocking(move || -> Result<HttpAnswer> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(wait))?;
        s.write_all(request.as_bytes())?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("bad response"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
            .collect();
        Ok(HttpAnswer {
            status,
            headers,
            body: body.to_owned(),
        })
    })
    .await?
}
