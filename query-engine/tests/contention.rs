//! Hot-key contention: 64 tasks transfer between 10 accounts with the refuse-if-insufficient
//! rule. The committer re-executes conflicting transactions itself, so callers never see
//! CONFLICT; the total is exact and no balance goes negative.

use std::sync::atomic::Ordering;

use query_engine::engine::{Engine, EngineConfig};
use query_engine::error::FunctionError;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::{v, SchemaDefinition, TableDefinition};
use query_engine::value::{Object, Value};
use rand::{Rng, SeedableRng};

const ACCOUNTS: usize = 10;
const INITIAL_BALANCE: i64 = 1_000;
const TASKS: usize = 64;
const TRANSFERS_PER_TASK: usize = 40;

#[derive(serde::Deserialize)]
struct Transfer {
    from: String,
    to: String,
    amount: i64,
}

fn balance(doc: &Value) -> i64 {
    doc.get_path("balance").and_then(Value::as_i64).unwrap_or(0)
}

fn functions() -> Functions {
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
        |ctx, a: Transfer| {
            let from = ctx
                .get("accounts", &a.from)?
                .ok_or_else(|| FunctionError::not_found("no such account"))?;
            let to = ctx
                .get("accounts", &a.to)?
                .ok_or_else(|| FunctionError::not_found("no such account"))?;
            if balance(&from) < a.amount {
                return Err(FunctionError::validation("insufficient funds"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contended_transfers_keep_the_total_without_conflict_errors() {
    let dir = tempfile::tempdir().unwrap();
    let schema = SchemaDefinition::new().table(TableDefinition::new(
        "accounts",
        v::object([("balance", v::int64())]),
    ));
    let engine = Engine::open(
        &dir.path().join("db.redb"),
        schema,
        functions(),
        EngineConfig::default(),
    )
    .unwrap();
    let ids = engine
        .transact(|ctx| {
            let mut ids = Vec::new();
            for _ in 0..ACCOUNTS {
                ids.push(Value::String(
                    ctx.insert("accounts", obj! {"balance" => INITIAL_BALANCE})?,
                ));
            }
            Ok(Value::Array(ids))
        })
        .await
        .unwrap();
    let ids: Vec<String> = ids
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (engine, ids) = (engine.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
            let (mut done, mut refused) = (0, 0);
            for _ in 0..TRANSFERS_PER_TASK {
                let from = rng.gen_range(0..ACCOUNTS);
                let to = (from + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
                // Large enough that some transfers are refused.
                let amount = rng.gen_range(1..=400i64);
                let args =
                    obj! {"from" => ids[from].clone(), "to" => ids[to].clone(), "amount" => amount};
                match engine.mutation("transfer", args, None).await {
                    Ok(_) => done += 1,
                    Err(e) if e.code == "VALIDATION_ERROR" && e.message == "insufficient funds" => {
                        refused += 1
                    }
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            (done, refused)
        }));
    }
    let (mut done, mut refused) = (0, 0);
    for t in tasks {
        let (d, r) = t.await.unwrap();
        done += d;
        refused += r;
    }
    assert_eq!(done + refused, TASKS * TRANSFERS_PER_TASK);
    assert!(done > 0);

    let balances = engine
        .read(|ctx| ctx.full_table_scan("accounts", 100).map(Value::Array))
        .await
        .unwrap();
    let balances: Vec<i64> = balances
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| {
            ids.contains(
                &d.get_path("_id")
                    .and_then(Value::as_str)
                    .unwrap()
                    .to_string(),
            )
        })
        .map(balance)
        .collect();
    assert_eq!(balances.len(), ACCOUNTS);
    assert_eq!(
        balances.iter().sum::<i64>(),
        INITIAL_BALANCE * ACCOUNTS as i64
    );
    assert!(balances.iter().all(|b| *b >= 0), "{balances:?}");
    let m = engine.metrics();
    eprintln!(
        "{done} transfers, {refused} refused; {} conflicts re-executed in {} batches",
        m.reexecutions.load(Ordering::Relaxed),
        m.batches.load(Ordering::Relaxed)
    );
}
