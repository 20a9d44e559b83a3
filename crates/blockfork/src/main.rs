//! `blockfork`: the server (`blockfork serve`) and the command-line client
//! for its REST API, in one binary.

mod cli;
mod export;
mod host;

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
    /// Capacity of a new pool, like 100G or 512M (ignored for an existing
    /// pool). Default: 90 % of the free space of the file system under --data.
    #[arg(long, value_parser = cli::parse_size, conflicts_with = "device")]
    capacity: Option<u64>,
    /// Keep the pool's data on this device (a file or a block device that
    /// exists; repeat for each). The first start labels them and makes a
    /// pool on devices, whose metadata stays in --data; later starts find
    /// its devices by their labels (name them again after they moved).
    /// Without it the pool is one data file in --data.
    #[arg(long, value_name = "PATH")]
    device: Vec<PathBuf>,
    /// The segment size of a new pool on devices (the unit of placement;
    /// decision 028), like 64M.
    #[arg(long, value_parser = cli::parse_size, default_value = "64M", value_name = "SIZE")]
    segment_size: u64,
    /// Label devices that carry another blockfork pool's label, destroying
    /// what they hold.
    #[arg(long, requires = "device")]
    force: bool,
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
    /// The scrub's pace in MB/s (10^6 bytes); 0 for none; a quarter of it
    /// while reads or writes arrive. Adjustable at run time
    /// (`pool set --scrub-rate`).
    #[arg(long, default_value_t = engine::scrub::SCRUB_RATE_DEFAULT / 1_000_000)]
    scrub_rate: u64,
    /// The pace of rebuilds, removals and levelling in MB/s (10^6 bytes);
    /// 0 for none; a quarter of it while reads or writes arrive.
    /// Adjustable at run time (`pool set --rebuild-rate`).
    #[arg(long, default_value_t = engine::reloc::REBUILD_RATE_DEFAULT / 1_000_000)]
    rebuild_rate: u64,
    /// Pool-wide mirror transfer rate limit in MB/s (10^6 bytes); 0 for
    /// none. Each mirror may have its own `--rate` too.
    #[arg(long, default_value_t = 0)]
    mirror_rate: u64,
    /// This server's API URL as mirror peers reach it (a `mirror reverse`
    /// gives it to the old source). Default: the --api address.
    #[arg(long, value_name = "URL")]
    advertise_url: Option<String>,
    /// Commit metadata at least this often when anything changed (FLUSH and
    /// FUA always commit at once).
    #[arg(long, default_value_t = 20)]
    commit_interval_ms: u64,
    /// TLS for NBD (NBD_OPT_STARTTLS): the server's certificate chain, PEM.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require a client certificate signed by this CA (PEM); its subject CN
    /// is what `igroup ... --cert-cn` matches.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Refuse NBD clients that do not start TLS (TCP only; the unix socket
    /// stays plain, guarded by its file permissions).
    #[arg(long, requires = "tls_cert")]
    tls_required: bool,
    /// Serve the REST API over HTTPS with --tls-cert and --tls-key (the CLI
    /// then takes --server https://... and --ca-cert).
    #[arg(long, requires = "tls_cert")]
    api_tls: bool,
    /// Create a new pool *open*: LUNs without maps are visible to every NBD
    /// client (convenient on one machine). Without it a new pool is closed:
    /// a LUN is visible only to the igroups it is mapped to. An existing
    /// pool keeps its mode (`blockfork pool set --access open|closed`).
    #[arg(long)]
    open: bool,
    /// Serve `GET /metrics` without the API token (for a Prometheus that
    /// scrapes without credentials). Everything else still needs it.
    #[arg(long)]
    metrics_public: bool,
    /// LUNs whose I/O is counted under a label of their own in /metrics;
    /// the I/O of any more is counted together under lun="_other".
    #[arg(long, default_value_t = telemetry::io::LUN_LABELS_DEFAULT, value_name = "N")]
    metrics_lun_limit: usize,
    /// Count no NBD requests (no per-LUN I/O metrics or dashboard rates);
    /// for measuring what counting costs.
    #[arg(long)]
    no_io_metrics: bool,
    /// How long (µs) an NBD connection whose requests are all answered
    /// polls its socket for the next one before sleeping: it saves a lone
    /// request the wake-up that is most of its latency, for at most this
    /// much CPU per request, and only while the client's pauses stay
    /// shorter (decision 026). 0 never polls.
    #[arg(long, default_value_t = nbd::proto::POLL_MICROS_DEFAULT, value_name = "US",
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    nbd_poll_us: u64,
    /// Log filter (tracing's EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info,fjall=warn,lsm_tree=warn")]
    log: String,
}

fn main() -> ExitCode {
    let args = Args::parse_from(cli::peer_create_flags(std::env::args_os()));
    match args.command {
        Top::Serve(serve_args) => match serve(serve_args, &args.global.data) {
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

/// Serves the pool in `data` (`--data`, created on first start).
fn serve(args: ServeArgs, data: &Path) -> Result<(), String> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| args.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .map_err(|e| format!("bad --log filter: {e}"))?,
        )
        .with_writer(std::io::stderr)
        .init();
    let existing = data.join("meta").exists();
    let on_devices = !args.device.is_empty() || (existing && !data.join("data").exists());
    let capacity = match args.capacity {
        Some(c) => c,
        None if on_devices => 0,
        None => {
            let free = free_space(data)
                .ok_or("cannot read the free space under --data; pass --capacity")?;
            (free / 10 * 9) / engine::BLOCK_SIZE * engine::BLOCK_SIZE
        }
    };
    let config = EngineConfig {
        commit_interval_ms: args.commit_interval_ms.max(1),
        split_rate_bytes: args.split_rate.saturating_mul(1_000_000),
        scrub_rate_bytes: args.scrub_rate.saturating_mul(1_000_000),
        rebuild_rate_bytes: args.rebuild_rate.saturating_mul(1_000_000),
        open_access: args.open,
        ..EngineConfig::default()
    };
    let engine = if on_devices {
        let opts = engine::DeviceOptions {
            segment_bytes: args.segment_size,
            force: args.force,
        };
        Engine::open_devices(data, &args.device, opts, config)
    } else {
        Engine::open_dir(data, Some(capacity), config)
    }
    .map_err(|e| e.to_string())?;
    let status = engine.pool_status().map_err(|e| e.to_string())?;
    if existing && args.open && status.access != "open" {
        tracing::warn!("--open applies to new pools only; this pool stays closed (change it with `blockfork pool set --access open`)");
    }
    let token = api_token(data)?;
    let access = if status.access == "open" {
        "access OPEN: LUNs without maps are visible to every NBD client"
    } else {
        "access CLOSED: a LUN is visible only to the igroups it is mapped to"
    };
    tracing::info!(
        "blockfork {} serving the pool in {} ({}; capacity {} bytes, {} used, {} LUNs): NBD on {}, REST API on {}://{} (bearer token in {}); {access}",
        env!("CARGO_PKG_VERSION"),
        data.display(),
        if existing { "existing pool" } else { "new pool" },
        status.capacity_bytes,
        status.used_bytes,
        status.luns,
        args.nbd,
        if args.api_tls { "https" } else { "http" },
        args.api,
        data.join(API_TOKEN_FILE).display(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("blockfork-io")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let mirrors = mirror::Mirrors::open(data, engine.clone())?;
    if args.mirror_rate > 0 {
        mirrors
            .set_mirror_rate(args.mirror_rate.saturating_mul(1_000_000))
            .map_err(|e| e.to_string())?;
    }
    let result = runtime.block_on(run_servers(&args, engine.clone(), token, mirrors.clone()));
    // Transfers stop at their checkpoints; the next start resumes them.
    mirrors.shutdown();
    // Stop accepting was done above; now make everything durable.
    let closed = engine
        .close()
        .map_err(|e| format!("final flush failed: {e}"));
    tracing::info!("blockfork stopped");
    result.and(closed)
}

/// The API token's file in the data directory.
pub const API_TOKEN_FILE: &str = "api-token";

/// Reads the API token from DATA/api-token, creating it (mode 0600, 256
/// random bits) on first start. A file readable by others is refused: the
/// token is the pool's master key.
fn api_token(data: &Path) -> Result<String, String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = data.join(API_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mode = std::fs::metadata(&path)
                .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(format!(
                    "{} is readable by others (mode {:o}); run `chmod 600 {}`",
                    path.display(),
                    mode & 0o777,
                    path.display()
                ));
            }
            let token = text.trim().to_string();
            if token.len() < 16 {
                return Err(format!(
                    "{} holds no usable token (at least 16 characters); delete it to get a new one",
                    path.display()
                ));
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes)
                .map_err(|e| format!("no randomness for the API token: {e}"))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            tracing::info!("created the API token in {}", path.display());
            Ok(token)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

async fn run_servers(
    args: &ServeArgs,
    engine: Arc<Engine>,
    token: String,
    mirrors: Arc<mirror::Mirrors>,
) -> Result<(), String> {
    let token_value = token;
    let shutdown = CancellationToken::new();
    let nbd_listener = tokio::net::TcpListener::bind(args.nbd)
        .await
        .map_err(|e| format!("cannot listen for NBD on {}: {e}", args.nbd))?;
    let api_listener = tokio::net::TcpListener::bind(args.api)
        .await
        .map_err(|e| format!("cannot listen for the REST API on {}: {e}", args.api))?;
    let telemetry = telemetry::Telemetry::new(args.metrics_lun_limit, !args.no_io_metrics);
    let backend: Arc<dyn nbd::Backend> = Arc::new(export::EngineBackend::new(
        engine.clone(),
        telemetry.clone(),
    ));
    // Both listeners count into the telemetry's NBD counters.
    let poll = std::time::Duration::from_micros(args.nbd_poll_us);
    let unix_server = nbd::Server::new(backend.clone())
        .with_stats(telemetry.nbd.clone())
        .with_poll_budget(poll);
    let mut nbd_server = nbd::Server::new(backend)
        .with_stats(telemetry.nbd.clone())
        .with_poll_budget(poll);
    let mut api_tls = None;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let settings = nbd::tls::load(cert, key, args.tls_client_ca.as_deref(), args.tls_required)?;
        nbd_server = nbd_server.with_tls(settings);
        tracing::info!(
            required = args.tls_required,
            client_certificates = args.tls_client_ca.is_some(),
            "NBD TLS enabled"
        );
        if args.api_tls {
            let config = nbd::tls::load_config(cert, key, None)?;
            api_tls = Some(Arc::unwrap_or_clone(config));
        }
    }
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
        let server = unix_server.clone();
        let token = shutdown.clone();
        tasks.spawn(async move {
            server.serve(listener, token).await;
            Ok(())
        });
    }
    {
        let token = shutdown.clone();
        let engine = engine.clone();
        let scheme = if api_tls.is_some() { "https" } else { "http" };
        let config = api::ApiConfig {
            token: Some(token_value),
            mirrors: Some(mirrors),
            self_url: Some(
                args.advertise_url
                    .clone()
                    .unwrap_or_else(|| format!("{scheme}://{}", args.api)),
            ),
            telemetry: Some(telemetry),
            metrics_public: args.metrics_public,
            secure_cookies: false,
        };
        tasks.spawn(async move {
            let stop = async move { token.cancelled().await };
            match api_tls {
                None => api::serve(api_listener, engine, config, stop).await,
                Some(tls) => api::serve_tls(api_listener, tls, engine, config, stop).await,
            }
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
