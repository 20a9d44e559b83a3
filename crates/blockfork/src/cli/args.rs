//! The client commands' arguments, as clap parses them.

use super::*;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Aligned tables with human sizes.
    Text,
    /// The API's JSON, pretty-printed.
    Json,
}

/// The client commands; each talks to the server given by `--server`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Create, list, show, resize and delete LUNs (thin volumes), and clone
    /// snapshots into new LUNs.
    Lun {
        #[command(subcommand)]
        command: LunCommand,
    },
    /// Take, list, delete and restore snapshots of LUNs.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Consistency groups: snapshots of several LUNs at one point in time.
    Cg {
        #[command(subcommand)]
        command: CgCommand,
    },
    /// Show or grow the storage pool, and change its runtime settings.
    Pool {
        #[command(subcommand)]
        command: PoolCommand,
    },
    /// List background jobs, such as reclaiming a deleted snapshot's space.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Host groups (igroups): the hosts, by address or TLS certificate CN,
    /// that LUNs can be mapped to.
    Igroup {
        #[command(subcommand)]
        command: IgroupCommand,
    },
    /// Mirroring peers: replication tokens on a source, sources on a
    /// destination.
    Peer {
        #[command(subcommand)]
        command: super::mirror::PeerCommand,
    },
    /// Mirrors: a disaster-recovery copy of LUNs from a peer, kept current
    /// by transferring only what changed; break, resync and reverse.
    Mirror {
        #[command(subcommand)]
        command: super::mirror::MirrorCommand,
    },
    /// On a host that mounts LUNs: attach LUNs as block devices, and clone
    /// files of their file systems without copying bytes.
    Host(crate::host::HostArgs),
    /// Show what happened: LUNs, snapshots and clones created or deleted,
    /// splits, refused access, a filling pool, failed jobs, mirror lag.
    Events {
        /// Keep printing events as they happen (Ctrl-C stops).
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only events after this id.
        #[arg(long, value_name = "ID")]
        since: Option<u64>,
        /// Print at most the newest N of the past events (default 50; with
        /// --since, every event after it).
        #[arg(long, short = 'n', value_name = "N")]
        last: Option<u64>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum IgroupCommand {
    /// Create an igroup.
    Create {
        /// igroup name: letters, digits, '.', '_' and '-'.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
        /// A member by source address: a CIDR like 10.0.0.0/24 or one
        /// address. Repeat for more.
        #[arg(long = "address", value_name = "CIDR")]
        addresses: Vec<String>,
        /// A member by TLS client-certificate subject CN. Repeat for more.
        #[arg(long = "cert-cn", value_name = "CN")]
        cert_cns: Vec<String>,
    },
    /// Add one member to an igroup.
    Add {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
        #[command(flatten)]
        member: MemberArg,
    },
    /// Remove one member from an igroup.
    Remove {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
        #[command(flatten)]
        member: MemberArg,
    },
    /// List igroups, their members and the LUNs mapped to them.
    List,
    /// Show one igroup.
    Show {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
    },
    /// Delete an igroup; refused while LUNs are mapped to it.
    Delete {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
    },
}

/// Exactly one igroup member.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct MemberArg {
    /// A CIDR like 10.0.0.0/24, or one address.
    #[arg(long, value_name = "CIDR")]
    pub(super) address: Option<String>,
    /// A TLS client-certificate subject CN.
    #[arg(long = "cert-cn", value_name = "CN")]
    pub(super) cert_cn: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum LunCommand {
    /// Create a thin LUN; it takes no space until written.
    Create {
        /// LUN name: a path like vol0/db, of segments made of letters,
        /// digits, '.', '_' and '-'.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
        /// Size, like 10G, 512M or 1.5T (binary units: K, M, G, T, P, with
        /// optional B or iB), or bytes; a multiple of 4 KiB.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// How its blocks are kept on a pool on devices: none (one copy),
        /// mirror (two, on different devices), mirror3 (three), parity:K+M
        /// (stripes of K data and M parity blocks on K+M devices). Default:
        /// the pool's (`pool status` shows it: none on one device, mirror
        /// on two, mirror3 on three or more).
        #[arg(long, value_name = "CLASS")]
        redundancy: Option<String>,
        /// Thick: reserve the whole size now, so that this LUN never gets
        /// ENOSPC (other LUNs get it first).
        #[arg(long)]
        reserve: bool,
        /// Reserve this share of the size for what the LUN's snapshots
        /// keep, in per cent (0 to 100).
        #[arg(long, value_name = "PERCENT", default_value_t = 0)]
        snapshot_reserve: u32,
    },
    /// List LUNs, by name.
    List {
        /// Only LUNs whose name starts with this, like vol0/.
        prefix: Option<String>,
    },
    /// Show one LUN.
    Show {
        /// LUN name.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
    },
    /// Change a LUN's settings: --redundancy moves it into another class
    /// online (new writes at once, what it holds in the background, at the
    /// split rate; snapshots keep their blocks where they are).
    Set {
        /// LUN name.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
        /// none, mirror, mirror3 or parity:K+M.
        #[arg(long, value_name = "CLASS")]
        redundancy: String,
        /// Follow the move with a progress bar until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Grow a LUN, or shrink it with --shrink. Snapshots keep their size.
    Resize {
        /// LUN name.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
        /// New size, like 20G (binary units K, M, G, T, P), or bytes.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Allow making the LUN smaller, which discards the data past the new end.
        #[arg(long)]
        shrink: bool,
    },
    /// Delete a LUN. Refused while it has snapshots, unless --recursive.
    Delete {
        /// LUN name.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
        /// Also delete the LUN's snapshots.
        #[arg(long)]
        recursive: bool,
    },
    /// Writable clones of snapshots, and the split that makes a clone
    /// independent of its snapshot.
    Clone {
        #[command(subcommand)]
        command: CloneCommand,
    },
    /// Map a LUN to an igroup: the igroup's hosts see it (and its
    /// snapshots) over NBD.
    Map {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        lun: String,
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        igroup: String,
    },
    /// Unmap a LUN from an igroup.
    Unmap {
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        lun: String,
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        igroup: String,
    },
    /// Make ranges of a LUN read what ranges of a LUN or snapshot read, by
    /// sharing blocks (no data copied), in one transaction: restore files
    /// from a snapshot, or clone files within or between LUNs.
    #[command(name = "clone-range")]
    CloneRange {
        /// Where the data comes from: LUN or LUN@SNAPSHOT.
        #[arg(long, value_parser = NonEmptyStringValueParser::new())]
        source: Option<String>,
        /// The LUN written.
        #[arg(long, value_parser = NonEmptyStringValueParser::new())]
        target: String,
        /// One range as SRC_OFFSET:DST_OFFSET:LENGTH (bytes, or sizes like
        /// 4M; multiples of 4 KiB). Repeat for more.
        #[arg(long = "range", value_name = "SRC:DST:LEN", value_parser = parse_range)]
        ranges: Vec<(u64, u64, u64)>,
        /// A JSON file with a list of {"source", "source_offset",
        /// "target_offset", "length"} (source defaults to --source).
        #[arg(long, value_name = "FILE")]
        ranges_file: Option<PathBuf>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum CloneCommand {
    /// Create a writable LUN backed by a snapshot, instantly and taking no
    /// space until written; it is exported over NBD like any LUN. While
    /// clones depend on a snapshot, deleting the snapshot only hides it.
    Create {
        /// The snapshot to clone, as LUN@SNAPSHOT.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        source: String,
        /// The new LUN's name; with --count, the clones are NEW-1 to NEW-N.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        new: String,
        /// Create N clones, NEW-1 to NEW-N, at once (all or none; at most 10000).
        #[arg(long, value_name = "N")]
        count: Option<u32>,
        /// Start each clone's split at once (a snapclone).
        #[arg(long)]
        split: bool,
    },
    /// Start (or resume) splitting a clone: copy, in the background, what it
    /// still reads from its snapshot, after which it is independent.
    Start {
        /// The clone's LUN name.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        path: String,
    },
    /// Show a clone's split: its state, the percentage done and the rate.
    Status {
        /// The clone's LUN name.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        path: String,
        /// Follow the split with a progress bar until it is done, stopped or
        /// waiting for space, then show its state; exit 0 only when done.
        #[arg(long)]
        watch: bool,
    },
    /// List every split under way (running, stopped or waiting for space).
    Show {
        /// Only splits of LUNs whose name starts with this, like vol0/.
        prefix: Option<String>,
    },
    /// Stop a clone's split; the clone stays valid and backed by its
    /// snapshot, and `start` resumes where it stopped.
    Stop {
        /// The clone's LUN name.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        path: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Take a snapshot of a LUN: instant, and it takes no space until the
    /// LUN is overwritten. Readable over NBD as LUN@SNAPSHOT.
    Create {
        /// The LUN to snapshot.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        lun: String,
        /// Snapshot name: letters, digits, '.', '_' and '-'.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        snapshot: String,
    },
    /// List snapshots of one LUN, or of every LUN.
    List {
        /// Only this LUN's snapshots.
        lun: Option<String>,
    },
    /// Delete a snapshot; its space is reclaimed in the background.
    Delete {
        /// The LUN the snapshot belongs to.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        lun: String,
        /// Snapshot name.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        snapshot: String,
        /// Wait, with a progress bar, until the space is reclaimed.
        #[arg(long)]
        wait: bool,
    },
    /// Make a LUN's content and size the snapshot's again, without copying
    /// data. Newer snapshots stay.
    Restore {
        /// The LUN to restore.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        lun: String,
        /// The snapshot to restore it to.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        snapshot: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum CgCommand {
    /// Group snapshots: one snapshot of each LUN, all at the same instant.
    Snapshot {
        #[command(subcommand)]
        command: CgSnapshotCommand,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum CgSnapshotCommand {
    /// Take a group snapshot: each LUN gets a snapshot named NAME, all at
    /// the same instant, so that together they are crash-consistent.
    Create {
        /// Group snapshot name (also each member snapshot's name).
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
        /// The member LUNs.
        #[arg(required = true, value_parser = NonEmptyStringValueParser::new())]
        luns: Vec<String>,
    },
    /// List group snapshots.
    List,
    /// Delete a group snapshot and all its member snapshots.
    Delete {
        /// Group snapshot name.
        #[arg(value_parser = NonEmptyStringValueParser::new())]
        name: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum PoolCommand {
    /// Show the pool's capacity, use and counts.
    Status,
    /// Check the pool's invariants online, without stopping I/O: the
    /// committed metadata as a restart would read it, then the live maps
    /// one LUN at a time. Exits non-zero when it finds a problem.
    Check,
    /// The devices of a pool on devices (`serve --device`).
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Read every used block of a pool on devices, check every copy
    /// against its checksum, and repair from a good copy.
    Scrub {
        #[command(subcommand)]
        command: ScrubCommand,
    },
    /// Grow the pool's capacity (a pool never shrinks).
    Grow {
        /// New total capacity, like 2T (binary units K, M, G, T, P), or bytes.
        #[arg(long, value_parser = parse_size)]
        capacity: u64,
    },
    /// Change the pool's runtime settings; with no option, show them.
    /// Changes last until the server restarts.
    Set {
        /// Pool-wide clone split rate limit in MB/s (10^6 bytes per
        /// second); 0 for unlimited. While reads or writes arrive, splits
        /// copy at a quarter of it (unlimited stays unlimited). `blockfork
        /// serve --split-rate` sets it at start.
        #[arg(long, value_name = "MBPS")]
        split_rate: Option<u64>,
        /// Pool-wide limit on mirror transfers into this server, in MB/s;
        /// 0 for unlimited (each mirror's `--rate` applies too).
        #[arg(long, value_name = "MB/s")]
        mirror_rate: Option<u64>,
        /// Count NBD requests for the per-LUN metrics and the dashboard's
        /// rates: on (the default) or off, until the server restarts.
        #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
        io_metrics: Option<bool>,
        /// `open`: LUNs without maps are visible to every NBD client;
        /// `closed`: a LUN is visible only to the igroups it is mapped to.
        /// Stored with the pool.
        #[arg(long, value_enum)]
        access: Option<AccessArg>,
        /// The scrub's pace in MB/s (10^6 bytes per second); 0 for
        /// unlimited. While reads or writes arrive, a scrub reads at a
        /// quarter of it. `blockfork serve --scrub-rate` sets it at start.
        #[arg(long, value_name = "MBPS")]
        scrub_rate: Option<u64>,
        /// The pace of rebuilds, removals and levelling in MB/s; 0 for
        /// unlimited; a quarter of it while reads or writes arrive.
        /// `blockfork serve --rebuild-rate` sets it at start.
        #[arg(long, value_name = "MBPS")]
        rebuild_rate: Option<u64>,
        /// The redundancy class of new LUNs that name none (a pool on
        /// devices): none, mirror, mirror3 or parity:K+M. Stored with the
        /// pool. Unset, it follows the device count (none on one, mirror
        /// on two, mirror3 on three or more).
        #[arg(long, value_name = "CLASS")]
        redundancy: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum ScrubCommand {
    /// Start a scrub in the background (or resume a stopped one).
    Start,
    /// Show the scrub: progress, what it repaired and what it could not.
    Status {
        /// Follow it with a progress bar until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Stop the scrub where it is; `start` resumes it.
    Stop,
}

#[derive(clap::Subcommand, Debug)]
pub enum DeviceCommand {
    /// List the devices: state, size, use, and read, write and checksum
    /// error counts since the server started.
    List,
    /// Add a device (an existing file or block device on the server): it
    /// is labelled, joins the pool, and segments level onto it in the
    /// background.
    Add {
        path: String,
        /// Relabel a device that carries another pool's label (destroys
        /// what it holds).
        #[arg(long)]
        force: bool,
    },
    /// Remove a device: every segment on it moves to the others, online;
    /// then it is forgotten and its label wiped.
    Remove {
        path: String,
        /// Follow the removal with a progress bar until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Replace a device (failed, missing, or just old): NEW joins the pool
    /// and everything OLD held is rebuilt onto it from the other copies.
    Replace {
        old: String,
        new: String,
        #[arg(long)]
        force: bool,
        /// Follow the rebuild with a progress bar until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Take a faulted device back into service (it stays out across
    /// restarts until cleared or replaced): a scrub from the first block
    /// resilvers what it holds stale.
    Clear {
        path: String,
        /// Follow the resilver with a progress bar until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Show the device job (rebuild, removal or levelling): progress, rate
    /// and what it skipped.
    Status {
        /// Follow it with a progress bar until it ends.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessArg {
    Open,
    Closed,
}

#[derive(clap::Subcommand, Debug)]
pub enum JobCommand {
    /// List background jobs: running ones, then recently finished ones.
    List,
}
