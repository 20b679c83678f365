//! What every request and socket handler shares: the state the server
//! assembles at start. Below every handler and above nothing that handles a
//! request, so the handlers and the server that mounts them never import
//! each other.

use std::sync::Arc;

use crate::audit::event::Events;
use crate::background::watcher::Watcher;
use crate::config::Config;
use crate::db::tables::Tables;
use crate::limits::PerClientRate;
use crate::live::fleet::FleetCell;
use crate::live::registry::Registry;
use crate::metrics::Metrics;
use crate::origin::Allowlist;
use crate::session::auth::Authenticator;

/// Everything a request or socket handler needs. Cloned for every request,
/// middleware and handler call, so a clone is one reference count: cloning
/// and dropping the parts one by one (about sixty reference counts) was 12%
/// of the server's CPU in a long-polling handshake.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub db: sea_orm::DatabaseConnection,
    /// Guests, members and the audit target, as checked at start.
    pub tables: Arc<Tables>,
    pub auth: Authenticator,
    /// The audit log, the metrics and the refusal budgets: where every
    /// handler reports what happened.
    pub events: Events,
    pub registry: Registry,
    pub watcher: Watcher,
    pub metrics: Metrics,
    pub allowlist: Arc<Allowlist>,
    /// New engine.io sessions per client IP.
    pub handshakes: Arc<PerClientRate>,
    /// This node's view of every node's sockets; set when the Socket.IO
    /// layer is built.
    pub fleet: FleetCell,
    /// Where allowed client events go (EVENT_PROXY_URL); `None`: nowhere.
    pub proxy: Option<Arc<crate::proxy::client::Proxy>>,
    /// This node's sockets for the emitter listeners; set with the fleet.
    pub(crate) local_sockets: crate::emitter::apply::LocalSocketsCell,
}
