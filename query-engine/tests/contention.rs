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

/// How many times each `bump` call (by its tag) has run its handler.
static BUMP_RUNS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

#[derive(serde::Deserialize)]
struct Bump {
    id: String,
    tag: usize,
}

/// A handler that panics whenever it runs again for the same call, which a conflict makes the
/// committer do on its own thread: the panic fails that call alone with INTERNAL, and the
/// committer goes on committing (it used to die with it, and every later write with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_on_re_execution_fails_alone() {
    const CALLS: usize = 96;
    let dir = tempfile::tempdir().unwrap();
    let schema = SchemaDefinition::new().table(TableDefinition::new(
        "accounts",
        v::object([("balance", v::int64())]),
    ));
    let mut f = functions();
    f.mutation(
        "bump",
        Visibility::Public,
        v::object([("id", v::id("accounts")), ("tag", v::int64())]),
        v::null(),
        |ctx, a: Bump| {
            let runs = {
                let mut runs = BUMP_RUNS.lock().unwrap();
                if runs.len() <= a.tag {
                    runs.resize(a.tag + 1, 0);
                }
                runs[a.tag] += 1;
                runs[a.tag]
            };
            let doc = ctx
                .get("accounts", &a.id)?
                .ok_or_else(|| FunctionError::not_found("no such account"))?;
            assert!(runs == 1, "bump {} re-executed", a.tag);
            let mut o = Object::new();
            o.insert("balance".into(), Value::Int64(balance(&doc) + 1));
            ctx.patch("accounts", &a.id, o)?;
            Ok(())
        },
    );
    let engine = Engine::open(
        &dir.path().join("db.redb"),
        schema,
        f,
        EngineConfig::default(),
    )
    .unwrap();
    let id = engine
        .transact(|ctx| {
            ctx.insert("accounts", obj! {"balance" => 0i64})
                .map(Value::String)
        })
        .await
        .unwrap();
    let id = id.as_str().unwrap().to_string();

    let mut tasks = Vec::new();
    for tag in 0..CALLS {
        let (engine, id) = (engine.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let args = obj! {"id" => id, "tag" => tag as i64};
            engine.mutation("bump", args, None).await.map(|_| ())
        }));
    }
    let (mut applied, mut panicked) = (0i64, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => applied += 1,
            Err(e) if e.code == "INTERNAL" && e.message == "bump failed" => panicked += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert!(panicked > 0, "no call conflicted; nothing was re-executed");
    // A call that panicked wrote nothing, and the committer still commits.
    let after = engine
        .transact(move |ctx| {
            let doc = ctx.get("accounts", &id)?.unwrap();
            let mut o = Object::new();
            o.insert("balance".into(), Value::Int64(-1));
            ctx.patch("accounts", &id, o)?;
            Ok(Value::Int64(balance(&doc)))
        })
        .await
        .unwrap();
    assert_eq!(after, Value::Int64(applied));
}
