pub mod ai;
pub mod auth;
pub mod config;
pub mod http;
pub mod metrics;
pub mod server;
pub mod transport;

pub use config::ServerConfig;
pub use server::{RunningServer, Server, StartError};
pub mod linkedup;
pub mod stream;
