//! `blockfork`: the server (`blockfork serve`) and the command-line client
//! for its REST API, in one binary.

mod cli;
mod export;

use clap::{Parser, Subcommand};
use engine::{Engine, EngineConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "blockfork",
    version,
    about = "Thin LUNs over NBD with instant snapshots and clones",
    long_about = "blockfork serves thin-provisioned LUNs over NBD and makes point-in-time copies cheap.\n\n\
                  `blockfork serve` starts the server; every other command talks to a running server's REST API."
)]
struct Args {
    #[command(flatten)]
    global: cli::GlobalOpts,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand, Debug)]
enum Top {
    /// Start the server: NBD data path and REST API over one pool.
    Serve(ServeArgs),
    #[command(flatten)]
    Client(cli::Command),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Data directory holding the pool (created on first start).
    #[arg(long, default_value = "./blockfork-data")]
    data: PathBuf,
    /// Capacity of a new pool, like 100G or 512M (ignored for an existing
    /// pool). Default: 90 % of the free space of the file system under --data.
    #[arg(long, value_parser = cli::parse_size)]
    capacity: Option<u64>,
    /// NBD listen address.
    #[arg(long, default_value = "127.0.0.1:10809")]
    nbd: SocketAddr,
    /// Also serve NBD on this unix socket.
    #[arg(long)]
    nbd_unix: Option<PathBuf>,
    /// REST API listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    api: SocketAddr,
    /// Pool-wide clone split rate limit in MB/s (10^6 bytes); 0 for none.
    /// Adjustable at run time through the API.
    #[arg(long, default_value_t = 128)]
    split_rate: u64,
    /// Commit metadata at least this often when anything changed (FLUSH and
    /// FUA always commit at once).
    #[arg(long, default_value_t = 20)]
    commit_interval_ms: u64,
    /// Log filter (tracing's EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info,fjall=warn,lsm_tree=warn")]
    log: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Top::Serve(serve_args) => match serve(serve_args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("blockfork serve: {message}");
                ExitCode::FAILURE
            }
        },
        Top::Client(command) => cli::run(&args.global, command),
    }
}

/// Free bytes of the file system holding `dir` (or its nearest existing parent).
fn free_space(dir: &Path) -> Option<u64> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        probe = probe.parent()?.to_path_buf();
        if probe.as_os_str().is_empty() {
            probe = PathBuf::from(".");
        }
    }
    let c = CString::new(probe.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| args.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .map_err(|e| format!("bad --log filter: {e}"))?,
        )
        .with_writer(std::io::stderr)
        .init();
    let existing = args.data.join("meta").exists();
    let capacity = match args.capacity {
        Some(c) => c,
        None => {
            let free = free_space(&args.data)
                .ok_or("cannot read the free space under --data; pass --capacity")?;
            (free / 10 * 9) / engine::BLOCK_SIZE * engine::BLOCK_SIZE
        }
    };
    let config = EngineConfig {
        commit_interval_ms: args.commit_interval_ms.max(1),
        split_rate_bytes: args.split_rate.saturating_mul(1_000_000),
        ..EngineConfig::default()
    };
    let engine = Engine::open_dir(&args.data, Some(capacity), config).map_err(|e| e.to_string())?;
    let status = engine.pool_status().map_err(|e| e.to_string())?;
    tracing::info!(
        "blockfork {} serving the pool in {} ({}; capacity {} bytes, {} used, {} LUNs): NBD on {}, REST API on http://{}; every LUN is visible to every client (no access control yet)",
        env!("CARGO_PKG_VERSION"),
        args.data.display(),
        if existing { "existing pool" } else { "new pool" },
        status.capacity_bytes,
        status.used_bytes,
        status.luns,
        args.nbd,
        args.api
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("blockfork-io")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let result = runtime.block_on(run_servers(&args, engine.clone()));
    // Stop accepting was done above; now make everything durable.
    let closed = engine
        .close()
        .map_err(|e| format!("final flush failed: {e}"));
    tracing::info!("blockfork stopped");
    result.and(closed)
}

async fn run_servers(args: &ServeArgs, engine: Arc<Engine>) -> Result<(), String> {
    let shutdown = CancellationToken::new();
    let nbd_listener = tokio::net::TcpListener::bind(args.nbd)
        .await
        .map_err(|e| format!("cannot listen for NBD on {}: {e}", args.nbd))?;
    let api_listener = tokio::net::TcpListener::bind(args.api)
        .await
        .map_err(|e| format!("cannot listen for the REST API on {}: {e}", args.api))?;
    let backend: Arc<dyn nbd::Backend> = Arc::new(export::EngineBackend::new(engine.clone()));
    let nbd_server = nbd::Server::new(backend);
    let mut tasks = tokio::task::JoinSet::new();
    {
        let server = nbd_server.clone();
        let token = shutdown.clone();
        tasks.spawn(async move {
            server.serve(nbd_listener, token).await;
            Ok::<(), String>(())
        });
    }
    if let Some(path) = &args.nbd_unix {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)
            .map_err(|e| format!("cannot listen for NBD on {}: {e}", path.display()))?;
        let server = nbd_server.clone();
        let token = shutdown.clone();
        tasks.spawn(async move {
            server.serve(listener, token).await;
            Ok(())
        });
    }
    {
        let token = shutdown.clone();
        let engine = engine.clone();
        tasks.spawn(async move {
            api::serve(api_listener, engine, async move { token.cancelled().await })
                .await
                .map_err(|e| format!("REST API failed: {e}"))
        });
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        Some(done) = tasks.join_next() => {
            shutdown.cancel();
            return done.map_err(|e| e.to_string()).and_then(|r| r).and(Err("a listener stopped unexpectedly".into()));
        }
    }
    shutdown.cancel();
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done.map_err(|e| e.to_string()).and_then(|r| r) {
            result = Err(e);
        }
    }
    if let Some(path) = &args.nbd_unix {
        let _ = std::fs::remove_file(path);
    }
    result
}
