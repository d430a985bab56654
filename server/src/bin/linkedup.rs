//! The `linkedup` command-line tool: mints development tokens from a dev server's data
//! directory, runs one function and prints its JSON result, or watches a query and prints each
//! new result as a JSON line (a thin layer over the `linkedup_client` SDK); and, on the
//! database of a stopped server, applies this build's schema (`schema push`), imports
//! documents into a table, all or nothing (`import`), or erases an account (`erase`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use linkedup_client::{
    fingerprint_from_pem, parse_fingerprint, CallKind, Client, ClientError, ClientOptions, Trust,
};
use linkedup_server::auth::{DevClaims, DevIssuer};
use linkedup_server::config::{DATABASE_FILE, DEV_AUDIENCE, DEV_ISSUER};
use linkedup_server::linkedup::{self, erasure, LinkedUpConfig};
use linkedup_server::transport::tls::DEV_CERT_FILE;
use query_engine::engine::{Engine, EngineConfig, OpenError};
use query_engine::functions::Functions;
use query_engine::import::{self, ImportError, LineErrors, MAX_IMPORT_DOCUMENTS};
use query_engine::json::{from_json, to_json};
use query_engine::storage::StorageError;
use query_engine::value::Value;
use serde_json::json;

/// Largest certificate file read for pinning.
const MAX_CERT_FILE_BYTES: u64 = 1 << 20;

#[derive(Parser, Debug)]
#[command(name = "linkedup", version, about = "LinkedUp command-line client")]
struct Cli {
    /// Server QUIC address.
    #[arg(
        long,
        global = true,
        env = "LINKEDUP_SERVER",
        default_value = "127.0.0.1:7443"
    )]
    server: String,
    /// SHA-256 fingerprint of the server certificate to pin (64 hex digits). Without it (and
    /// without --ca), the development certificate in --data-dir is pinned.
    #[arg(long, global = true, env = "LINKEDUP_FINGERPRINT")]
    fingerprint: Option<String>,
    /// PEM file of CA certificates to verify the server with (production servers).
    #[arg(long, global = true, env = "LINKEDUP_CA")]
    ca: Option<PathBuf>,
    /// The development server's data directory (dev certificate and token issuer key).
    #[arg(long, global = true, default_value = "./data")]
    data_dir: PathBuf,
    /// Access token to authenticate with.
    #[arg(long, global = true, env = "LINKEDUP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Development-mode helpers.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
    /// Runs a function once and prints its result as JSON.
    Run {
        function: String,
        /// Arguments as JSON (the project's JSON form: `{"$float": ...}` etc.).
        #[arg(long, default_value = "{}")]
        args: String,
        #[arg(long, value_enum, default_value_t = Kind::Query)]
        kind: Kind,
    },
    /// Imports documents into a table of a stopped server's database, all or nothing: one
    /// JSON object per line (the project's JSON form; `_id` and `_creationTime` are kept when
    /// given). Prints {"table", "imported"}; an invalid line fails the whole import.
    Import {
        table: String,
        /// The JSON-lines file.
        file: PathBuf,
        /// The database file [default: <data-dir>/linkedup.redb].
        #[arg(long)]
        db: Option<PathBuf>,
        /// Make the database if there is none (else a missing one is refused, so a mistyped
        /// path cannot import into a new, empty database).
        #[arg(long)]
        create: bool,
    },
    /// Erases an account's personal data on a stopped server's database, as the user's own
    /// `users.requestErasure` would (for a request that reached operators another way, seed
    /// §20), running the erasure job to the end here. Prints the request: {"requestId",
    /// "status", "documents", "runs", ...}; a job not done after --max-runs is finished by the
    /// server when it starts.
    Erase {
        /// The account's `users` id.
        #[arg(long)]
        user: String,
        /// The database file [default: <data-dir>/linkedup.redb].
        #[arg(long)]
        db: Option<PathBuf>,
        /// Most runs of the job (each erases up to a page of documents).
        #[arg(long, default_value_t = 100_000)]
        max_runs: usize,
    },
    /// The schema of this build, applied to a stopped server's database.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Subscribes to a query and prints each new result as one JSON line.
    Watch {
        function: String,
        #[arg(long, default_value = "{}")]
        args: String,
        /// Stop after this many results.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum DevCommand {
    /// Mints a development access token signed by the server's dev issuer key.
    Token {
        /// The user's subject (`sub`).
        #[arg(long)]
        sub: String,
        #[arg(long)]
        email: Option<String>,
        /// Organization id (`org_id`).
        #[arg(long)]
        org: Option<String>,
        /// Role in the organization (`role`).
        #[arg(long)]
        role: Option<String>,
        /// Further roles (`roles`), comma-separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

#[derive(Subcommand, Debug)]
enum SchemaCommand {
    /// Applies the schema (refused, naming the offending documents, if stored documents
    /// violate it), builds new indexes and purges dropped ones, then prints what it did.
    Push {
        /// The database file [default: <data-dir>/linkedup.redb].
        #[arg(long)]
        db: Option<PathBuf>,
        /// Make the database if there is none (else a missing one is refused).
        #[arg(long)]
        create: bool,
        /// How long to wait for index backfills and purges before leaving them to the server.
        #[arg(long, default_value_t = 3600)]
        wait_secs: u64,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    Query,
    Mutation,
    Action,
}

impl From<Kind> for CallKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Query => CallKind::Query,
            Kind::Mutation => CallKind::Mutation,
            Kind::Action => CallKind::Action,
        }
    }
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        if let Some(ClientError::Function { data, .. } | ClientError::Server { data, .. }) =
            e.downcast_ref::<ClientError>()
        {
            if *data != Value::Null {
                eprintln!("data: {}", to_json(data));
            }
        }
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Dev {
            command:
                DevCommand::Token {
                    sub,
                    email,
                    org,
                    role,
                    roles,
                    ttl_secs,
                },
        } => {
            let claims = DevClaims {
                subject: sub.clone(),
                email: email.clone(),
                org_id: org.clone(),
                org_role: role.clone(),
                roles: roles.clone(),
                ttl: Duration::from_secs(*ttl_secs),
            };
            let dir = cli.data_dir.clone();
            let issuer = tokio::task::spawn_blocking(move || {
                DevIssuer::load_or_generate(&dir, DEV_ISSUER, DEV_AUDIENCE)
            })
            .await
            .context("token issuer task")?
            .with_context(|| {
                format!("loading the dev issuer key from {}", cli.data_dir.display())
            })?;
            println!("{}", issuer.mint(claims));
            Ok(())
        }
        Command::Run {
            function,
            args,
            kind,
        } => {
            let args = parse_args(args)?;
            let client = connect(&cli).await?;
            let mutation_id = matches!(kind, Kind::Mutation).then(linkedup_client::new_mutation_id);
            let reply = client
                .call((*kind).into(), function, args, mutation_id)
                .await?;
            let text = serde_json::to_string_pretty(&to_json(&reply.value))?;
            println!("{text}");
            client.close().await;
            Ok(())
        }
        Command::Import {
            table,
            file,
            db,
            create,
        } => {
            let db = database(&cli, db);
            require_database(&db, *create)?;
            let new_database = NewDatabase::reserve(&db, *create)?;
            let report = import_file(&db, table, file);
            // Another process that has the database open owns it now (a server started
            // meanwhile on the file this command reserved): never removed.
            let in_use = matches!(
                &report,
                Ok(Err(ImportError::Storage(StorageError::InUse(_))
                    | ImportError::Open(OpenError::Storage(
                        StorageError::InUse(_)
                    ))))
            );
            if !matches!(report, Ok(Ok(_))) && !in_use {
                new_database.remove();
            }
            match report? {
                Ok(r) => {
                    println!("{}", json!({ "table": r.table, "imported": r.imported }));
                    Ok(())
                }
                Err(ImportError::Invalid { count, errors }) => {
                    for e in &errors {
                        eprintln!("{e}");
                    }
                    bail!("VALIDATION_ERROR: {count} invalid documents; nothing was imported")
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Erase { user, db, max_runs } => {
            let db = database(&cli, db);
            // An empty database would hold no account anyway.
            require_database(&db, false)?;
            let mut functions = Functions::new();
            linkedup::register(&mut functions, &LinkedUpConfig::default());
            let engine = open_offline(&db, functions, true)?;
            let erased = erasure::erase_offline(&engine, user, *max_runs).await;
            close_offline(engine).await?;
            let (request, runs) =
                erased.map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.message))?;
            let mut out = serde_json::to_value(&request)?;
            out["userId"] = json!(user);
            out["runs"] = json!(runs);
            println!("{out}");
            Ok(())
        }
        Command::Schema {
            command:
                SchemaCommand::Push {
                    db,
                    create,
                    wait_secs,
                },
        } => {
            let db = database(&cli, db);
            require_database(&db, *create)?;
            let engine = open_offline(&db, Functions::new(), false)?;
            let checked = engine
                .metrics()
                .open_documents_checked
                .load(std::sync::atomic::Ordering::Relaxed);
            let index_jobs = engine.index_work_pending();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(*wait_secs);
            while engine.index_work_pending() > 0 {
                if tokio::time::Instant::now() > deadline {
                    bail!(
                        "{} index backfills or purges still running after {wait_secs} s; \
                         the server finishes them when it starts",
                        engine.index_work_pending()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The application's tables: the schema's, not the engine's own (`_`-named) ones.
            let tables = engine
                .catalog()
                .tables()
                .filter(|t| !t.name.starts_with('_'))
                .count();
            close_offline(engine).await?;
            println!(
                "{}",
                json!({ "tables": tables, "documentsChecked": checked, "indexJobs": index_jobs })
            );
            Ok(())
        }
        Command::Watch {
            function,
            args,
            count,
        } => {
            let args = parse_args(args)?;
            let client = connect(&cli).await?;
            let mut subscription = client.subscribe(function, &args)?;
            let mut printed = 0u64;
            let stdout = std::io::stdout();
            loop {
                if count.is_some_and(|n| printed >= n) {
                    break;
                }
                let item = tokio::select! {
                    item = subscription.next() => item,
                    _ = tokio::signal::ctrl_c() => break,
                };
                match item {
                    Some(Ok(value)) => {
                        let mut out = stdout.lock();
                        writeln!(out, "{}", to_json(&value))?;
                        out.flush()?;
                        printed += 1;
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("the subscription ended"),
                }
            }
            drop(subscription);
            client.close().await;
            Ok(())
        }
    }
}

/// Most bytes of an import file.
const MAX_IMPORT_FILE_BYTES: u64 = 4 << 30;
/// Longest line of an import file: a document's JSON may be a few times its stored size
/// (at most 1 MiB), so a longer line is no document and is refused before it is parsed.
const MAX_IMPORT_LINE_BYTES: usize = 16 << 20;

/// The documents of a JSON-lines file with their line numbers (blank lines skipped), or, if
/// any line is not a JSON document, those lines as an import refused whole.
fn read_json_lines(path: &Path) -> Result<Result<Vec<(usize, Value)>, ImportError>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    if file.metadata()?.len() > MAX_IMPORT_FILE_BYTES {
        bail!(
            "{} is larger than {MAX_IMPORT_FILE_BYTES} bytes",
            path.display()
        );
    }
    // The length above is 0 for a pipe (`/dev/stdin`, a FIFO): the bytes read count too.
    parse_json_lines(std::io::BufReader::new(file), path, MAX_IMPORT_FILE_BYTES)
}

/// The documents of the JSON lines `reader` gives (named `path` in errors), refused once it
/// has given more than `max_bytes`.
fn parse_json_lines(
    mut reader: impl std::io::BufRead,
    path: &Path,
    max_bytes: u64,
) -> Result<Result<Vec<(usize, Value)>, ImportError>> {
    use std::io::{BufRead, Read};
    let mut docs = Vec::new();
    let mut not_json = LineErrors::default();
    let mut line = Vec::new();
    let mut total: u64 = 0;
    for number in 1.. {
        line.clear();
        // One byte past the bound tells a line that is too long from one that fits.
        let read = (&mut reader)
            .take(MAX_IMPORT_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        total += read as u64;
        if total > max_bytes {
            bail!("{} is larger than {max_bytes} bytes", path.display());
        }
        if line.len() > MAX_IMPORT_LINE_BYTES && line.last() != Some(&b'\n') {
            bail!("line {number} is longer than {MAX_IMPORT_LINE_BYTES} bytes");
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            not_json.push(number, "not UTF-8 text".into());
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        // Counted while reading, so a file of too many documents is refused before they
        // are all in memory.
        if docs.len() >= MAX_IMPORT_DOCUMENTS {
            return Ok(Err(ImportError::TooMany));
        }
        let parsed = serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| e.to_string())
            .and_then(|j| from_json(&j).map_err(|e| e.to_string()));
        match parsed {
            Ok(v) => docs.push((number, v)),
            Err(e) => not_json.push(number, format!("not a JSON document: {e}")),
        }
    }
    Ok(not_json.or(docs))
}

/// Reads `file` and imports it into `table` of `db`: an error reading it, else the import's
/// outcome.
fn import_file(
    db: &Path,
    table: &str,
    file: &Path,
) -> Result<Result<import::ImportReport, ImportError>> {
    let docs = match read_json_lines(file)? {
        Ok(docs) => docs,
        Err(not_json) => return Ok(Err(not_json)),
    };
    // Offline work on redb: a plain thread, outside the runtime.
    let (path, table) = (db.to_path_buf(), table.to_string());
    std::thread::spawn(move || import::import(&path, linkedup_schema::schema(), &table, docs))
        .join()
        .map_err(|_| anyhow::anyhow!("the import panicked"))
}

/// A stopped server's database opened here with this build's schema and `functions`, and no
/// scheduler: nothing runs but what the command itself starts. With `keep_schema` (every
/// command but `schema push`) the database's schema must already be this build's.
fn open_offline(db: &Path, functions: Functions, keep_schema: bool) -> Result<Engine> {
    let config = EngineConfig {
        run_scheduler: false,
        require_stored_schema: keep_schema,
        ..EngineConfig::default()
    };
    Ok(Engine::open(
        db,
        linkedup_schema::schema(),
        functions,
        config,
    )?)
}

/// Closes an engine from `open_offline`, waiting up to a minute; an error when it did not
/// close cleanly, so the command does not report success over work the server must redo.
async fn close_offline(engine: Engine) -> Result<()> {
    let closed = tokio::task::spawn_blocking(move || engine.close(Duration::from_secs(60))).await?;
    if !closed {
        bail!("the database did not close cleanly; the server replays its log on start");
    }
    Ok(())
}

/// Refuses a path without a database unless `create`: opening it would make a new, empty one,
/// and an operator who mistyped the path would see the command succeed on it.
fn require_database(db: &Path, create: bool) -> Result<()> {
    if !create && !db.exists() {
        bail!(
            "no database at {} (pass --create to make a new one)",
            db.display()
        );
    }
    Ok(())
}

/// A database file that `--create` made: removed again (with its log segments) when the
/// command fails, so a refused import leaves no empty database behind for a later run without
/// `--create` to take as the intended one. Made (empty, which redb takes as a new database)
/// before the input is read, with `create_new`, so it is this command's only if no one else
/// made it first: a file that appeared while the input was read was someone else's, and was
/// deleted under them.
struct NewDatabase(Option<PathBuf>);

impl NewDatabase {
    fn reserve(db: &Path, create: bool) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        if !create {
            return Ok(NewDatabase(None));
        }
        let made = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(db);
        match made {
            Ok(_) => Ok(NewDatabase(Some(db.to_path_buf()))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(NewDatabase(None)),
            Err(e) => Err(e).with_context(|| format!("creating {}", db.display())),
        }
    }

    fn remove(self) {
        let Some(db) = self.0 else { return };
        let (Some(dir), Some(name)) = (db.parent(), db.file_name()) else {
            return;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let log_prefix = format!("{}.wal", name.to_string_lossy());
        let mut files = vec![db.clone()];
        if let Ok(entries) = std::fs::read_dir(dir) {
            files.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&log_prefix))
                    .map(|e| e.path()),
            );
        }
        for file in files {
            if let Err(e) = std::fs::remove_file(&file) {
                eprintln!("could not remove {}: {e}", file.display());
            }
        }
    }
}

/// The database file: `--db`, else the data directory's.
fn database(cli: &Cli, db: &Option<PathBuf>) -> PathBuf {
    db.clone()
        .unwrap_or_else(|| cli.data_dir.join(DATABASE_FILE))
}

fn parse_args(text: &str) -> Result<Value> {
    let json: serde_json::Value = serde_json::from_str(text).context("--args is not JSON")?;
    let value = from_json(&json).context("--args")?;
    if !matches!(value, Value::Object(_)) {
        bail!("--args must be a JSON object");
    }
    Ok(value)
}

async fn connect(cli: &Cli) -> Result<Client> {
    let trust = trust(cli)?;
    let mut options = ClientOptions::new(trust)
        .with_client_name(format!("linkedup-cli/{}", env!("CARGO_PKG_VERSION")));
    // An empty LINKEDUP_TOKEN means no token.
    options.token = cli.token.clone().filter(|t| !t.is_empty());
    Client::connect(&cli.server, options)
        .await
        .with_context(|| format!("connecting to {}", cli.server))
}

fn trust(cli: &Cli) -> Result<Trust> {
    if let Some(hex) = &cli.fingerprint {
        return Ok(Trust::PinnedSha256(parse_fingerprint(hex)?));
    }
    if let Some(path) = &cli.ca {
        let pem = read_limited(path)?;
        return Ok(Trust::CaPem(
            String::from_utf8(pem).with_context(|| format!("{} is not text", path.display()))?,
        ));
    }
    let path = cli.data_dir.join(DEV_CERT_FILE);
    let pem = read_limited(&path).with_context(|| {
        "no --fingerprint or --ca given, and the development certificate cannot be read"
    })?;
    Ok(Trust::PinnedSha256(fingerprint_from_pem(&pem)?))
}

fn read_limited(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > MAX_CERT_FILE_BYTES {
        bail!(
            "{} is larger than {MAX_CERT_FILE_BYTES} bytes",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe's input is bounded as a file's is: its length is 0 to the size check, so the
    /// bytes read are counted (before, a pipe was read on without bound).
    #[test]
    fn json_lines_past_the_bound_are_refused_while_read() {
        let line = "{\"key\": \"go\"}\n";
        let input = line.repeat(4);
        let read = |max| parse_json_lines(input.as_bytes(), Path::new("/dev/stdin"), max);
        assert_eq!(read(input.len() as u64).unwrap().unwrap().len(), 4);
        let e = read(input.len() as u64 - 1).unwrap_err().to_string();
        assert!(e.contains("/dev/stdin is larger than"), "{e}");
    }
}
