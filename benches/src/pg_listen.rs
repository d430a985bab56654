//! LISTEN/NOTIFY on the throwaway cluster of `pg`: a connection whose asynchronous messages
//! (notifications) are handed to a callback as they arrive, and where the cluster keeps its
//! data directory (for the postmaster's pid). Kept apart from `pg` so that file stays as its
//! author wrote it.

use std::path::PathBuf;

use anyhow::Context;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Notification};

use crate::pg::PgCluster;

/// The cluster's data directory (`postmaster.pid` lives there).
pub fn data_dir(cluster: &PgCluster) -> PathBuf {
    cluster.socket_dir().join("data")
}

/// A connection that receives notifications: `on_notify` runs on the connection's task for
/// each one, in arrival order. Returns the client (keep it: dropping it closes the
/// connection) and the task driving the connection.
pub async fn connect_listener<F>(
    cluster: &PgCluster,
    mut on_notify: F,
) -> anyhow::Result<(tokio_postgres::Client, JoinHandle<()>)>
where
    F: FnMut(Notification) + Send + 'static,
{
    let (client, mut conn) = tokio_postgres::connect(&cluster.conn_string(), tokio_postgres::NoTls)
        .await
        .context("connecting a listener to the benchmark cluster")?;
    let task = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => on_notify(n),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("postgres listener connection ended: {e}");
                    return;
                }
            }
        }
    });
    Ok((client, task))
}
