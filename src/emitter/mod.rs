//! App → sockets through the official Node emitters: every node listens
//! for what `@socket.io/postgres-emitter` (or, with `ADAPTER=redis`,
//! `@socket.io/redis-emitter`) publishes and applies each operation to its
//! own sockets. `message` decodes the wire formats, `apply` acts on this
//! node's sockets, `postgres` and `redis` listen. Knows nothing
//! of sessions, of the audit log or of the adapter that links the nodes.

pub(crate) mod apply;
pub(crate) mod message;
pub(crate) mod postgres;
pub(crate) mod redis;
