//! Rust client SDK for the LinkedUp server: connects over QUIC (TLS 1.3, ALPN `linkedup/1`),
//! calls queries, mutations and actions, and turns subscriptions into `Stream`s that survive
//! reconnects. The wire protocol is `docs/protocol.md`; its types come from `query_engine`.

pub mod client;
mod connection;
pub mod error;
pub mod note_editor;
pub mod notes;
mod outbox;
pub mod subscription;
pub mod tls;
pub mod transcripts;
mod transition_parts;

pub use client::{
    new_mutation_id, CallReply, Client, ClientOptions, ReconnectPolicy, TokenFuture,
    TokenRefresher, DEFAULT_PORT,
};
pub use connection::ServerInfo;
pub use error::ClientError;
pub use query_engine::protocol::CallKind;
pub use query_engine::value::Value;
pub use subscription::{Subscription, TypedSubscription};
pub use tls::{fingerprint_from_pem, fingerprint_hex, parse_fingerprint, Trust};
