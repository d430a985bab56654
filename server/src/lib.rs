pub mod ai;
pub mod auth;
pub mod config;
mod files;
pub mod hex;
pub mod http;
mod http_serve;
pub mod linkedup;
mod log_limit;
pub mod metrics;
pub mod metrics_access;
pub mod provider_http;
pub mod secret;
pub mod server;
pub mod stream;
pub mod transport;

pub use config::ServerConfig;
pub use server::{RunningServer, Server, StartError};
