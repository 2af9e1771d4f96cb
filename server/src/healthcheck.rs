//! `smtp-server healthcheck`: a tiny HTTP/1.0 GET over plain TCP, so container health
//! checks need no curl in the image.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("unsupported URL {0:?} (expected http://host:port/path)")]
    BadUrl(String),
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("I/O error talking to {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("malformed HTTP response from {0}")]
    BadResponse(String),
}

/// Splits `http://host:port/path` into (`host:port`, `/path`).
pub fn split_url(url: &str) -> Result<(String, String), ProbeError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ProbeError::BadUrl(url.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(ProbeError::BadUrl(url.to_string()));
    }
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_string()))
}

/// GETs `url` and returns the HTTP status code.
pub fn probe(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let (authority, path) = split_url(url)?;
    let addr = authority
        .to_socket_addrs()
        .map_err(|source| ProbeError::Connect {
            addr: authority.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| ProbeError::BadUrl(url.to_string()))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|source| ProbeError::Connect {
            addr: authority.clone(),
            source,
        })?;
    let io = |source| ProbeError::Io {
        addr: authority.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).map_err(io)?;
        if n == 0 || head.len() > 4096 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    // "HTTP/1.1 200 OK"
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or(ProbeError::BadResponse(authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/health").unwrap(),
            ("127.0.0.1:8080".into(), "/health".into())
        );
        assert_eq!(
            split_url("http://example.invalid").unwrap(),
            ("example.invalid:80".into(), "/".into())
        );
        assert!(split_url("https://x/health").is_err());
    }
}
