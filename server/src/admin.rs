//! The admin HTTP listener: `/health`, `/metrics`, `/api/stats`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Shared;

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/stats", get(stats))
        .with_state(shared)
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let app = router(shared);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin listener failed");
    }
}

/// 200 `{"status":"ok"}` when the server takes mail; 503 with `"draining"` or
/// `"memory critical"` as the status otherwise. The body names only the state, as
/// the README documents it: a container health check reads the code, a person the
/// reason; the figures are in `/api/stats` and `/metrics`.
async fn health(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let stats = shared.stats();
    let (code, status) = if stats.draining {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if stats.memory.level == crate::memory::MemoryLevel::Critical {
        (StatusCode::SERVICE_UNAVAILABLE, "memory critical")
    } else {
        (StatusCode::OK, "ok")
    };
    (code, axum::Json(serde_json::json!({ "status": status })))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared.refresh_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
}

async fn stats(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    axum::Json(shared.stats())
}

/// The admin address written to `admin_addr_file` when the system picked the port, so
/// that `smtp-server healthcheck` can find it (see [`crate::healthcheck`]).
#[derive(Debug)]
pub struct PublishedAddr {
    path: PathBuf,
    content: String,
}

impl PublishedAddr {
    /// Writes `addr` to `path` atomically (a reader never sees half a line), creating
    /// the directory when missing.
    pub fn write(path: &Path, addr: SocketAddr) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let content = format!("{addr}\n");
        let mut tmp = OsString::from(path.as_os_str());
        tmp.push(format!(".{}.tmp", std::process::id()));
        std::fs::write(&tmp, &content)?;
        std::fs::rename(&tmp, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
        })
    }

    /// Removes the file, unless another server has written its own address since.
    pub fn remove(self) {
        if std::fs::read_to_string(&self.path).is_ok_and(|c| c == self.content) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
