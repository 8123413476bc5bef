//! The handlers, one module per area.

pub(crate) mod account;
pub(crate) mod audit;
pub(crate) mod cron;
pub(crate) mod health;
pub(crate) mod jobs;
pub(crate) mod operator;
pub(crate) mod sessions;
