//! The keynote-2 transfer workload shared by the `transfer` binary's modes: the `accounts`
//! schema and `transfer` mutation, the Zipf(α) pair choice, and the `TransferClient` seam
//! that the in-process engine and the over-QUIC client (`quic`) both implement.

pub mod quic;

use std::future::Future;

use query_engine::engine::Engine;
use query_engine::error::FunctionError;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::{v, SchemaDefinition, TableDefinition};
use query_engine::value::{Object, Value};
use rand::rngs::StdRng;
use rand::Rng;

/// The message of the user error `transfer` refuses with when `from` lacks the amount.
pub const INSUFFICIENT: &str = "insufficient funds";
/// Most accounts inserted per seeding transaction.
pub const MAX_IDS_PER_TRANSACTION: usize = 8_000;
/// Accounts read per read transaction when checking balances: small enough to stay far below
/// the engine's per-call run-time limit on a loaded machine.
pub const IDS_PER_READ: usize = 1_000;

/// Zipf(α) over `0..n` by inverse CDF (binary search), rank 0 the most likely; α = 0 is
/// uniform. The same construction keynote-2 uses.
pub struct Zipf {
    n: usize,
    cdf: Option<Vec<f64>>,
}

impl Zipf {
    pub fn new(n: usize, alpha: f64) -> Zipf {
        if alpha <= 0.0 {
            return Zipf { n, cdf: None };
        }
        let weights: Vec<f64> = (1..=n).map(|k| (k as f64).powf(-alpha)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        Zipf { n, cdf: Some(cdf) }
    }

    pub fn sample(&self, rng: &mut StdRng) -> usize {
        match &self.cdf {
            None => rng.gen_range(0..self.n),
            Some(cdf) => {
                let u: f64 = rng.gen();
                cdf.partition_point(|c| *c < u).min(self.n - 1)
            }
        }
    }

    /// Two distinct accounts: `to` is redrawn up to twice, then moved to the next id (the
    /// pgbench script does exactly the same).
    pub fn pair(&self, rng: &mut StdRng) -> (usize, usize) {
        let from = self.sample(rng);
        let mut to = self.sample(rng);
        for _ in 0..2 {
            if to != from {
                break;
            }
            to = self.sample(rng);
        }
        if to == from {
            to = (from + 1) % self.n;
        }
        (from, to)
    }
}

/// What one transfer call came back with.
pub enum Outcome {
    /// Committed at this commit timestamp (unique, increasing in commit order).
    Done { ts: u64 },
    /// Refused: `from` lacked the amount.
    Refused,
}

/// A way to call `transfer`: the engine in process, or a client over QUIC.
pub trait TransferClient: Clone + Send + Sync + 'static {
    fn transfer(
        &self,
        from: usize,
        to: usize,
        amount: i64,
    ) -> impl Future<Output = Result<Outcome, FunctionError>> + Send;
}

pub fn schema() -> SchemaDefinition {
    SchemaDefinition::new().table(TableDefinition::new(
        "accounts",
        v::object([("balance", v::int64())]),
    ))
}

#[derive(serde::Deserialize)]
struct TransferArgs {
    from: String,
    to: String,
    amount: i64,
}

fn balance(doc: &Value) -> i64 {
    doc.get_path("balance").and_then(Value::as_i64).unwrap_or(0)
}

/// `transfer(from, to, amount)`: reads both accounts by id, refuses with a user error when
/// `from` lacks the amount, else patches both balances.
pub fn functions() -> Functions {
    let mut f = Functions::new();
    f.mutation(
        "transfer",
        Visibility::Public,
        v::object([
            ("from", v::id("accounts")),
            ("to", v::id("accounts")),
            ("amount", v::int64()),
        ]),
        v::null(),
        |ctx, a: TransferArgs| {
            let from = ctx
                .get("accounts", &a.from)?
                .ok_or_else(|| FunctionError::not_found("no such account"))?;
            let to = ctx
                .get("accounts", &a.to)?
                .ok_or_else(|| FunctionError::not_found("no such account"))?;
            if a.amount <= 0 {
                return Err(FunctionError::validation("amount must be positive"));
            }
            if balance(&from) < a.amount {
                return Err(FunctionError::validation(INSUFFICIENT));
            }
            for (id, new) in [
                (&a.from, balance(&from) - a.amount),
                (&a.to, balance(&to) + a.amount),
            ] {
                let mut o = Object::new();
                o.insert("balance".into(), Value::Int64(new));
                ctx.patch("accounts", id, o)?;
            }
            Ok(())
        },
    );
    f
}

/// Inserts `accounts` accounts holding `initial_balance` each, `batch` per transaction;
/// returns their ids in account order.
pub async fn seed_accounts(
    engine: &Engine,
    accounts: usize,
    initial_balance: i64,
    batch: usize,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(accounts);
    let batch = batch.clamp(1, MAX_IDS_PER_TRANSACTION);
    while ids.len() < accounts {
        let n = batch.min(accounts - ids.len());
        let created = engine
            .transact(move |ctx| {
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(Value::String(
                        ctx.insert("accounts", obj! {"balance" => initial_balance})?,
                    ));
                }
                Ok(Value::Array(out))
            })
            .await
            .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;
        let Value::Array(created) = created else {
            anyhow::bail!("seeding returned no ids");
        };
        for id in created {
            match id {
                Value::String(s) => ids.push(s),
                _ => anyhow::bail!("seeding returned a non-id"),
            }
        }
    }
    Ok(ids)
}

/// Every account's balance, in the order of `ids` (`i64::MIN` for a non-integer balance, so
/// that verification fails visibly).
pub async fn read_balances(engine: &Engine, ids: &[String]) -> anyhow::Result<Vec<i64>> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_READ) {
        let chunk: Vec<String> = chunk.to_vec();
        let v = engine
            .read(move |ctx| {
                let mut b = Vec::with_capacity(chunk.len());
                for id in &chunk {
                    let doc = ctx
                        .get("accounts", id)?
                        .ok_or_else(|| FunctionError::not_found("account vanished"))?;
                    b.push(Value::Int64(balance(&doc)));
                }
                Ok(Value::Array(b))
            })
            .await
            .map_err(|e| anyhow::anyhow!("reading balances: {e}"))?;
        let Value::Array(b) = v else {
            anyhow::bail!("balances: not an array")
        };
        out.extend(b.iter().map(|x| x.as_i64().unwrap_or(i64::MIN)));
    }
    Ok(out)
}

pub use crate::thread_cpu::{cpu_us_per_unit as cpu_us_per_transfer, thread_cpu_ns, CPU_GROUPS};
