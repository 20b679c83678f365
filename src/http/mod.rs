//! The HTTP side, thin: the routes, the admin's guest-lock route, the
//! browser client and development sign-in, and the Origin guard in front of
//! the engine. Calls into the domain; holds no rules of its own.

pub(crate) mod admin;
pub(crate) mod origin_guard;
pub(crate) mod router;
pub(crate) mod web;
