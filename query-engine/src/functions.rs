//! The function registry: queries (read-only, deterministic), mutations (transactional,
//! deterministic) and actions (may reach the outside world, not transactional), each with a
//! name, visibility, argument and return validators and a handler, registered at startup.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::Ctx;
use crate::error::{FunctionError, FunctionResult};
use crate::json::{from_value, to_value};
use crate::schema::Validator;
use crate::value::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FunctionKind {
    Query,
    Mutation,
    Action,
}

/// Public functions can be called by clients; internal ones only by the scheduler, crons,
/// actions and the embedding program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    Public,
    Internal,
}

pub type TxnHandler = Arc<dyn Fn(&mut Ctx<'_, '_>, Value) -> FunctionResult<Value> + Send + Sync>;
/// What a mutation's failure leaves behind. A mutation that fails commits nothing, so a
/// refusal cannot count itself (against a rate limit, say) where it happens; when the
/// mutation's own handler fails, this runs after it in a transaction of its own, with the
/// caller's identity and the error the caller gets, and its writes commit. It runs once per
/// call whose handler failed (not when the call was refused before running, e.g. as
/// overloaded, nor when the mutation runs inside another transaction, `Engine::run_in`); its
/// own failure is logged and never replaces the mutation's error.
pub type FailureRecorder =
    Arc<dyn Fn(&mut Ctx<'_, '_>, &FunctionError) -> FunctionResult<()> + Send + Sync>;
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
pub type ActionHandler =
    Arc<dyn Fn(crate::engine::ActionCtx, Value) -> BoxFuture<FunctionResult<Value>> + Send + Sync>;

#[derive(Clone)]
pub enum Handler {
    Query(TxnHandler),
    Mutation(TxnHandler),
    Action(ActionHandler),
}

/// How a subscribed query's result may be shared between callers.
#[derive(Clone)]
pub enum Sharing {
    /// The result may depend on the caller: one execution per (function, args, identity).
    PerIdentity,
    /// The result does not depend on the caller beyond `access`, which runs per caller (and
    /// is re-checked on every re-run); `body` runs once per (function, args) for everyone.
    /// (The function's own handler runs both, for plain calls.)
    AfterAccessCheck {
        access: TxnHandler,
        body: TxnHandler,
    },
}

#[derive(Clone)]
pub struct FunctionDef {
    pub name: String,
    pub kind: FunctionKind,
    pub visibility: Visibility,
    pub args: Validator,
    pub returns: Validator,
    pub handler: Handler,
    pub sharing: Sharing,
    /// Mutations only: see `FailureRecorder`.
    pub on_failure: Option<FailureRecorder>,
}

#[derive(Clone, Default)]
pub struct Functions {
    map: HashMap<String, Arc<FunctionDef>>,
}

impl Functions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<FunctionDef>> {
        self.map.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<FunctionDef>> {
        self.map.values()
    }

    /// Registers a function. Panics on a duplicate name: that is a startup programming error.
    pub fn register(&mut self, def: FunctionDef) -> &mut Self {
        assert!(
            !self.map.contains_key(&def.name),
            "function {} registered twice",
            def.name
        );
        self.map.insert(def.name.clone(), Arc::new(def));
        self
    }

    fn txn_def(
        name: &str,
        kind: FunctionKind,
        visibility: Visibility,
        args: Validator,
        returns: Validator,
        handler: TxnHandler,
    ) -> FunctionDef {
        FunctionDef {
            name: name.to_string(),
            kind,
            visibility,
            args,
            returns,
            handler: if kind == FunctionKind::Query {
                Handler::Query(handler)
            } else {
                Handler::Mutation(handler)
            },
            sharing: Sharing::PerIdentity,
            on_failure: None,
        }
    }

    /// Registers a query whose handler takes and returns serde types.
    pub fn query<A, R, F>(
        &mut self,
        name: &str,
        visibility: Visibility,
        args: Validator,
        returns: Validator,
        f: F,
    ) -> &mut Self
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(&mut Ctx<'_, '_>, A) -> FunctionResult<R> + Send + Sync + 'static,
    {
        let h = typed(f);
        self.register(Self::txn_def(
            name,
            FunctionKind::Query,
            visibility,
            args,
            returns,
            h,
        ))
    }

    /// Registers a query shared by all callers who pass `access` (see `Sharing`).
    pub fn shared_query<A, R, C, F>(
        &mut self,
        name: &str,
        args: Validator,
        returns: Validator,
        access: C,
        f: F,
    ) -> &mut Self
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        C: Fn(&mut Ctx<'_, '_>, A) -> FunctionResult<()> + Send + Sync + 'static,
        F: Fn(&mut Ctx<'_, '_>, A) -> FunctionResult<R> + Send + Sync + 'static,
    {
        let access = typed(access);
        let body = typed(f);
        let checked: TxnHandler = {
            let (access, body) = (access.clone(), body.clone());
            Arc::new(move |ctx, args: Value| {
                access(ctx, args.clone())?;
                body(ctx, args)
            })
        };
        let mut def = Self::txn_def(
            name,
            FunctionKind::Query,
            Visibility::Public,
            args,
            returns,
            checked,
        );
        def.sharing = Sharing::AfterAccessCheck { access, body };
        self.register(def)
    }

    pub fn mutation<A, R, F>(
        &mut self,
        name: &str,
        visibility: Visibility,
        args: Validator,
        returns: Validator,
        f: F,
    ) -> &mut Self
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(&mut Ctx<'_, '_>, A) -> FunctionResult<R> + Send + Sync + 'static,
    {
        let h = typed(f);
        self.register(Self::txn_def(
            name,
            FunctionKind::Mutation,
            visibility,
            args,
            returns,
            h,
        ))
    }

    /// `mutation` whose failures are recorded by `on_failure` (see `FailureRecorder`).
    pub fn mutation_recording_failures<A, R, F, G>(
        &mut self,
        name: &str,
        visibility: Visibility,
        args: Validator,
        returns: Validator,
        f: F,
        on_failure: G,
    ) -> &mut Self
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(&mut Ctx<'_, '_>, A) -> FunctionResult<R> + Send + Sync + 'static,
        G: Fn(&mut Ctx<'_, '_>, &FunctionError) -> FunctionResult<()> + Send + Sync + 'static,
    {
        let mut def = Self::txn_def(
            name,
            FunctionKind::Mutation,
            visibility,
            args,
            returns,
            typed(f),
        );
        def.on_failure = Some(Arc::new(on_failure));
        self.register(def)
    }

    pub fn action<A, R, F, Fut>(
        &mut self,
        name: &str,
        visibility: Visibility,
        args: Validator,
        returns: Validator,
        f: F,
    ) -> &mut Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(crate::engine::ActionCtx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = FunctionResult<R>> + Send + 'static,
    {
        let f = Arc::new(f);
        let h: ActionHandler = Arc::new(move |ctx, args: Value| {
            let f = f.clone();
            Box::pin(async move {
                let a: A = decode_args(args)?;
                let r = f(ctx, a).await?;
                encode_result(r)
            })
        });
        self.register(FunctionDef {
            name: name.to_string(),
            kind: FunctionKind::Action,
            visibility,
            args,
            returns,
            handler: Handler::Action(h),
            sharing: Sharing::PerIdentity,
            on_failure: None,
        })
    }
}

fn typed<A, R, F>(f: F) -> TxnHandler
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
    F: Fn(&mut Ctx<'_, '_>, A) -> FunctionResult<R> + Send + Sync + 'static,
{
    Arc::new(move |ctx, args| {
        let a: A = decode_args(args)?;
        encode_result(f(ctx, a)?)
    })
}

/// Arguments as the handler's type. A handler taking `Value` gets them as they are; other
/// types go through serde (MessagePack, lossless).
fn decode_args<A: DeserializeOwned + 'static>(args: Value) -> FunctionResult<A> {
    let mut slot = Some(args);
    if let Some(same) = (&mut slot as &mut dyn Any).downcast_mut::<Option<A>>() {
        if let Some(a) = same.take() {
            return Ok(a);
        }
    }
    let args = slot.unwrap_or(Value::Null);
    from_value(&args).map_err(|e| FunctionError::validation(format!("invalid arguments: {e}")))
}

/// A handler's result as a `Value`, without a serde round trip when it already is one.
fn encode_result<R: Serialize + 'static>(r: R) -> FunctionResult<Value> {
    let mut slot = Some(r);
    if let Some(same) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Value>>() {
        if let Some(v) = same.take() {
            return Ok(v);
        }
    }
    match &slot {
        Some(r) => {
            to_value(r).map_err(|e| FunctionError::internal(format!("cannot encode result: {e}")))
        }
        None => Ok(Value::Null),
    }
}
