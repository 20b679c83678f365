//! sockgate patch: ending an engine.io session from outside the engine.
//!
//! A Socket.IO server built on this engine only ever sees a session's
//! socket.io half; when it refuses a client's CONNECT, nothing it holds can
//! end the engine.io session underneath, so the client could keep the session
//! and retry without limit. Every engine built from a config registers itself
//! with that config's [`SessionCloser`] (clones share one), and
//! [`SessionCloser::close`] ends a session by id in whichever engine holds it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use engineioxide_core::{Packet, Sid};

use crate::{DisconnectReason, engine::EngineIo, handler::EngineIoHandler};

trait CloseSession: Send + Sync {
    /// Closes `sid` if this engine holds it.
    fn close_session_if_held(self: Arc<Self>, sid: Sid, reason: DisconnectReason) -> bool;
    /// Drops what the client sends on `sid` from now on, if this engine
    /// holds it.
    fn stop_input_if_held(&self, sid: Sid) -> bool;
}

impl<H: EngineIoHandler> CloseSession for EngineIo<H> {
    fn stop_input_if_held(&self, sid: Sid) -> bool {
        let Some(socket) = self.get_socket(sid) else {
            return false;
        };
        socket.closing.store(true, Ordering::Release);
        true
    }

    fn close_session_if_held(self: Arc<Self>, sid: Sid, reason: DisconnectReason) -> bool {
        let Some(socket) = self.get_socket(sid) else {
            return false;
        };
        socket.closing.store(true, Ordering::Release);
        if socket.close_started.swap(true, Ordering::AcqRel) {
            return true;
        }
        if !socket.is_http() {
            // A websocket writes what is queued, then the close packet,
            // before it closes (see the connection loop).
            socket.close(reason);
            return true;
        }
        // Long-polling: removing the session now would answer the client's
        // next GET with an unknown-session error instead of what is queued,
        // and some clients (rust_socketio) act on a close packet before the
        // packets that came with it in one payload. So: take no more input,
        // let a GET take what is queued, then queue the close packet for the
        // next GET, and remove the session once that is taken (or after
        // `ping_timeout`, the time a live client has to poll).
        let timeout = self.config.ping_timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, async {
                taken(&socket).await;
                socket.send(Packet::Close).ok();
                taken(&socket).await;
            })
            .await;
            self.close_session(sid, reason);
        });
        true
    }
}

/// Resolves once a GET has taken everything queued and answered. A GET holds
/// the receiver until it has answered, but the client's next GET, idle until
/// there is something to send, holds it too: the wait for the receiver is
/// therefore bounded, long enough for an answer already taken to be written
/// out, and what is queued after it goes to that next GET.
async fn taken<D: Default + Send + Sync + 'static>(socket: &crate::Socket<D>) {
    socket.internal_tx.drained().await;
    let _ = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        socket.internal_rx.lock(),
    )
    .await;
}

/// A handle on every engine built from one config (a tower layer builds one
/// engine per service it wraps).
#[derive(Clone, Default)]
pub struct SessionCloser {
    engines: Arc<Mutex<Vec<Weak<dyn CloseSession>>>>,
}

impl std::fmt::Debug for SessionCloser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCloser").finish_non_exhaustive()
    }
}

impl SessionCloser {
    pub(crate) fn register<H: EngineIoHandler>(&self, engine: &Arc<EngineIo<H>>) {
        let weak: Weak<dyn CloseSession> = Arc::downgrade(engine) as Weak<dyn CloseSession>;
        let mut engines = self.engines.lock().unwrap();
        engines.retain(|e| e.strong_count() > 0);
        engines.push(weak);
    }

    /// From now on, what the client sends on `sid` is dropped unread (on
    /// either transport); what is queued for it still goes out. For a
    /// refusal about to be queued: the client may act on it at once, and
    /// must not be able to retry on the same session before
    /// [`Self::close`] runs. Returns whether an engine held it.
    pub fn stop_input(&self, sid: Sid) -> bool {
        self.engines()
            .into_iter()
            .any(|engine| engine.stop_input_if_held(sid))
    }

    /// Ends the engine.io session `sid`: what is queued still reaches the
    /// client, then a close packet (on long-polling, with the client's next
    /// GET). Returns whether an engine held it.
    pub fn close(&self, sid: Sid, reason: DisconnectReason) -> bool {
        self.engines()
            .into_iter()
            .any(|engine| engine.close_session_if_held(sid, reason.clone()))
    }

    /// The engines still alive, taken out of the lock before any is asked.
    fn engines(&self) -> Vec<Arc<dyn CloseSession>> {
        self.engines
            .lock()
            .unwrap()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }
}
