//! sea-orm entities shared by the server, the migrations and the tests.
//!
//! `session` maps connect-pg-simple's table (owned by the Node app in
//! production); the others are sockgate's own tables, created by
//! `sockgate migrate`.

pub mod app_user;
pub mod audit_log;
pub mod guest;
pub mod member;
pub mod organization;
pub mod session;
