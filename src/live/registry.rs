//! The live sockets of this node, by session: what the watcher re-checks and
//! what revocation ends. Each node knows only its own sockets; cross-node
//! operations go through Socket.IO rooms. Knows nothing of Socket.IO itself
//! (a socket is a `SocketHandle`), of HTTP or of the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use smallvec::SmallVec;

use crate::session::rules::{UserId, digest};

/// A socket the registry can tell something and then close, whatever the
/// adapter type behind it. Both go through the socket's own ordered channel,
/// so a notice queued before the close reaches the client first.
pub trait SocketHandle: Send + Sync + 'static {
    fn id(&self) -> String;
    fn notify(&self, event: &str, data: &Json) -> Result<(), CloseError>;
    fn close(&self) -> Result<(), CloseError>;
    fn connected(&self) -> bool;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CloseError {
    /// The socket's send buffer is full; try again once it drains.
    #[error("socket buffer full")]
    BufferFull,
    /// Already gone.
    #[error("socket already closed")]
    Closed,
}

struct Entry {
    user_id: UserId,
    /// Almost always one socket per session: kept inline.
    sockets: SmallVec<[Arc<dyn SocketHandle>; 1]>,
}

/// Held for every live session, so kept small: the session id is stored
/// once (shared by both maps) and the digest as raw bytes.
#[derive(Default)]
struct Inner {
    by_sid: HashMap<Arc<str>, Entry>,
    /// sha256(sid) → sid, for revocation notices that carry no sid.
    by_digest: HashMap<[u8; 32], Arc<str>>,
    /// Sockets per user, for the per-user limit at the handshake.
    by_user: HashMap<UserId, usize>,
}

impl Inner {
    fn count_user(&mut self, user: &UserId, delta: isize) {
        if delta > 0 {
            *self.by_user.entry(user.clone()).or_default() += delta as usize;
        } else if let Some(n) = self.by_user.get_mut(user) {
            *n = n.saturating_sub(delta.unsigned_abs());
            if *n == 0 {
                self.by_user.remove(user);
            }
        }
    }
}

#[derive(Default, Clone)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

/// A session with live sockets on this node.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub sid: String,
    pub user_id: UserId,
}

impl Registry {
    pub fn add(&self, sid: &str, user_id: &UserId, socket: Arc<dyn SocketHandle>) {
        let mut inner = self.inner.lock().unwrap();
        inner.count_user(user_id, 1);
        if let Some(entry) = inner.by_sid.get_mut(sid) {
            entry.sockets.push(socket);
            return;
        }
        let sid: Arc<str> = Arc::from(sid);
        inner.by_digest.insert(digest(&sid), sid.clone());
        inner.by_sid.insert(
            sid,
            Entry {
                user_id: user_id.clone(),
                sockets: smallvec::smallvec![socket],
            },
        );
    }

    pub fn remove(&self, sid: &str, socket_id: &str) {
        let mut inner = self.inner.lock().unwrap();
        let Some(entry) = inner.by_sid.get_mut(sid) else {
            return;
        };
        let before = entry.sockets.len();
        entry.sockets.retain(|s| s.id() != socket_id);
        let removed = (before - entry.sockets.len()) as isize;
        let user = entry.user_id.clone();
        let empty = entry.sockets.is_empty();
        inner.count_user(&user, -removed);
        if empty {
            inner.by_sid.remove(sid);
            inner.by_digest.remove(&digest(sid));
        }
    }

    /// The sessions with a live socket on this node. Sockets that closed
    /// without reaching their disconnect handler (closed during the
    /// handshake) are forgotten here.
    pub fn sessions(&self) -> Vec<LiveSession> {
        let mut inner = self.inner.lock().unwrap();
        let mut gone = Vec::new();
        let mut forgotten = Vec::new();
        for (sid, entry) in inner.by_sid.iter_mut() {
            let before = entry.sockets.len();
            entry.sockets.retain(|s| s.connected());
            if entry.sockets.len() < before {
                forgotten.push((
                    entry.user_id.clone(),
                    (before - entry.sockets.len()) as isize,
                ));
            }
            if entry.sockets.is_empty() {
                gone.push(sid.clone());
            }
        }
        for (user, n) in forgotten {
            inner.count_user(&user, -n);
        }
        for sid in gone {
            inner.by_sid.remove(&sid);
            inner.by_digest.remove(&digest(&sid));
        }
        inner
            .by_sid
            .iter()
            .map(|(sid, e)| LiveSession {
                sid: sid.to_string(),
                user_id: e.user_id.clone(),
            })
            .collect()
    }

    /// How many sockets `user` (across sessions) and session `sid` hold on
    /// this node.
    pub fn counts(&self, sid: &str, user: &UserId) -> (usize, usize) {
        let inner = self.inner.lock().unwrap();
        let session = inner.by_sid.get(sid).map_or(0, |e| e.sockets.len());
        let user = inner.by_user.get(user).copied().unwrap_or(0);
        (user, session)
    }

    pub fn socket_count(&self) -> usize {
        self.inner
            .lock()
            .unwrap()
            .by_sid
            .values()
            .map(|e| e.sockets.len())
            .sum()
    }

    pub fn sessions_user(&self, sid: &str) -> Option<UserId> {
        self.inner
            .lock()
            .unwrap()
            .by_sid
            .get(sid)
            .map(|e| e.user_id.clone())
    }

    /// The session whose SHA-256 is `key` (`session::rules::digest`), as
    /// the revocation trigger computes it in SQL.
    pub fn sid_for_digest(&self, key: &[u8; 32]) -> Option<String> {
        let inner = self.inner.lock().unwrap();
        inner.by_digest.get(key).map(|sid| sid.to_string())
    }

    /// Every socket of a user on this node, across their sessions.
    pub fn sockets_of_user(&self, user: &UserId) -> Vec<Arc<dyn SocketHandle>> {
        self.inner
            .lock()
            .unwrap()
            .by_sid
            .values()
            .filter(|e| &e.user_id == user)
            .flat_map(|e| e.sockets.iter().cloned())
            .collect()
    }

    /// The sockets of a session (removed from the registry by their own
    /// disconnect handlers once closed).
    pub fn sockets_of(&self, sid: &str) -> Vec<Arc<dyn SocketHandle>> {
        self.inner
            .lock()
            .unwrap()
            .by_sid
            .get(sid)
            .map(|e| e.sockets.to_vec())
            .unwrap_or_default()
    }
}

/// Tells every socket `event`, then closes it. A socket whose buffer is
/// full is retried in the background, phase by phase (the notice is never
/// sent twice), until it drains or its heartbeat ends it. Returns how many
/// were closed at once.
pub fn notify_and_disconnect_all(
    sockets: Vec<Arc<dyn SocketHandle>>,
    event: &'static str,
    data: Json,
) -> usize {
    let mut closed = 0;
    for socket in sockets {
        let notified = match socket.notify(event, &data) {
            Ok(()) => true,
            Err(CloseError::Closed) => continue,
            Err(CloseError::BufferFull) => false,
        };
        if notified && socket.close() == Ok(()) {
            closed += 1;
            continue;
        }
        let data = data.clone();
        tokio::spawn(async move {
            let mut notified = notified;
            let mut delay = Duration::from_millis(20);
            for _ in 0..60 {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
                if !notified {
                    match socket.notify(event, &data) {
                        Ok(()) => notified = true,
                        Err(CloseError::Closed) => return,
                        Err(CloseError::BufferFull) => continue,
                    }
                }
                match socket.close() {
                    Ok(()) | Err(CloseError::Closed) => return,
                    Err(CloseError::BufferFull) => {}
                }
            }
            tracing::error!(socket = %socket.id(), event, "could not close a socket whose buffer stays full");
        });
    }
    closed
}
