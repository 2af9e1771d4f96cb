//! What happens to an accepted message: discard, keep in memory, or spool to disk.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::config::{Config, StoreKind};

/// An accepted message with its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The reverse-path from MAIL FROM (empty for the null sender `<>`).
    pub mail_from: String,
    /// The forward-paths from RCPT TO, in order.
    pub rcpt_to: Vec<String>,
    /// The message content as received, after dot-unstuffing, without the final
    /// `.<CRLF>`.
    pub data: Vec<u8>,
    pub peer: SocketAddr,
    pub received_at: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("spool I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool task failed: {0}")]
    Task(String),
}

/// The configured message store.
#[derive(Debug)]
pub enum Store {
    Discard,
    Memory {
        capacity: usize,
        messages: Mutex<VecDeque<StoredMessage>>,
    },
    Spool {
        dir: PathBuf,
        sequence: AtomicU64,
    },
}

impl Store {
    /// Creates the store; for `spool`, creates `<dir>/tmp` and `<dir>/new`.
    pub fn open(config: &Config) -> Result<Self, StoreError> {
        Ok(match config.store {
            StoreKind::Discard => Store::Discard,
            StoreKind::Memory => Store::Memory {
                capacity: config.memory_store_capacity,
                messages: Mutex::new(VecDeque::new()),
            },
            StoreKind::Spool => {
                let dir = config.spool_dir.clone();
                for sub in ["tmp", "new"] {
                    let path = dir.join(sub);
                    std::fs::create_dir_all(&path)
                        .map_err(|source| StoreError::Io { path, source })?;
                }
                Store::Spool {
                    dir,
                    sequence: AtomicU64::new(0),
                }
            }
        })
    }

    /// Whether the session must keep the message content (discard only counts it).
    pub fn keeps_content(&self) -> bool {
        !matches!(self, Store::Discard)
    }

    /// Stores a message. Returns only when the message is safe as promised by the
    /// store kind (for `spool`: on disk and fsynced, file and directory).
    pub async fn store(&self, message: StoredMessage) -> Result<(), StoreError> {
        match self {
            Store::Discard => Ok(()),
            Store::Memory { capacity, messages } => {
                let mut messages = messages.lock().unwrap_or_else(|p| p.into_inner());
                while messages.len() >= *capacity {
                    messages.pop_front();
                }
                messages.push_back(message);
                Ok(())
            }
            Store::Spool { dir, sequence } => {
                let seq = sequence.fetch_add(1, Ordering::Relaxed);
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || spool_write(&dir, seq, &message))
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))?
            }
        }
    }

    /// The messages kept by `store = memory`, oldest first (empty for other stores).
    pub fn messages(&self) -> Vec<StoredMessage> {
        match self {
            Store::Memory { messages, .. } => messages
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Writes one message crash-safely, Maildir style: the content goes to
/// `<dir>/tmp/<name>`, is fsynced, renamed to `<dir>/new/<name>.eml`, and the `new`
/// directory is fsynced, so after a crash a file in `new/` is always complete and an
/// acknowledged message is always in `new/`.
///
/// The file starts with the envelope as header lines (`Return-Path: <from>` and one
/// `X-Stampede-Envelope-To: <rcpt>` per recipient), then the message as received.
fn spool_write(dir: &Path, seq: u64, message: &StoredMessage) -> Result<(), StoreError> {
    let since_epoch = message
        .received_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let name = format!(
        "{}.{:09}.{}.{}",
        since_epoch.as_secs(),
        since_epoch.subsec_nanos(),
        std::process::id(),
        seq
    );
    let tmp = dir.join("tmp").join(&name);
    let fin = dir.join("new").join(format!("{name}.eml"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };

    let mut head = format!("Return-Path: <{}>\r\n", message.mail_from);
    for rcpt in &message.rcpt_to {
        head.push_str(&format!("X-Stampede-Envelope-To: <{rcpt}>\r\n"));
    }
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(head.as_bytes()).map_err(io(&tmp))?;
    file.write_all(&message.data).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, &fin).map_err(io(&fin))?;
    let new_dir = dir.join("new");
    std::fs::File::open(&new_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&new_dir))?;
    Ok(())
}
