//! `smtp-server healthcheck`: a tiny HTTP/1.0 GET over plain TCP, so container health
//! checks need no curl in the image.
//!
//! The probe reads the server's own configuration (file and `SMTP_*` environment) to
//! find the admin listener: a fixed `admin_port` is probed on the admin address (the
//! loopback address when the listener binds to all addresses); with `admin_port =
//! auto` the port is only known to the running server, which writes the address it
//! bound to `admin_addr_file` (see [`crate::admin::PublishedAddr`]).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;

/// Why the configuration leaves nothing to probe.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("the admin listener is disabled (admin_port = 0), so there is no /health to probe")]
    AdminDisabled,
    #[error(
        "admin_port is auto and admin_addr_file is empty, so the admin port cannot be \
         found; set admin_addr_file or give --url"
    )]
    NoAddrFile,
    #[error(
        "admin_port is auto, but the admin address file {path} cannot be read ({source}); \
         is the server running with the same admin_addr_file?"
    )]
    AddrFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the admin address file {path} holds {content:?}, not an address")]
    AddrFileContent { path: PathBuf, content: String },
}

/// The `/health` URL of the admin listener that `config` describes.
pub fn health_url(config: &Config) -> Result<String, TargetError> {
    let addr = match config.admin_port {
        None => return Err(TargetError::AdminDisabled),
        Some(0) => published_addr(config)?,
        Some(port) => SocketAddr::new(config.admin_bind.unwrap_or(config.bind), port),
    };
    Ok(format!("http://{}/health", reachable(addr)))
}

fn published_addr(config: &Config) -> Result<SocketAddr, TargetError> {
    let path = config
        .admin_addr_file
        .clone()
        .ok_or(TargetError::NoAddrFile)?;
    let content = match std::fs::read_to_string(&path) {
        Ok(content) => content,
        Err(source) => return Err(TargetError::AddrFile { path, source }),
    };
    content
        .trim()
        .parse()
        .map_err(|_| TargetError::AddrFileContent { path, content })
}

/// A listener bound to all addresses is probed on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

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
pub fn probe_health(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
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

    #[test]
    fn a_fixed_admin_port_is_probed_on_loopback_when_bound_to_all_addresses() {
        let config = Config {
            admin_port: Some(8081),
            ..Config::default()
        };
        assert_eq!(health_url(&config).unwrap(), "http://127.0.0.1:8081/health");
        let config = Config {
            admin_bind: Some("127.0.0.5".parse().unwrap()),
            ..config
        };
        assert_eq!(health_url(&config).unwrap(), "http://127.0.0.5:8081/health");
    }
}
