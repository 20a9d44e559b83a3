//! Numbers from the NBD protocol document (NetworkBlockDevice/nbd,
//! doc/proto.md) and the limits this server enforces. Names follow the
//! document without the `NBD_` prefix so they can be grepped there.

// ---- Limits (units last) ---------------------------------------------------

/// Largest READ/WRITE payload we accept and advertise as the maximum payload
/// size in NBD_INFO_BLOCK_SIZE. 2^25 is the size the spec says a server
/// SHOULD support and a client may always use.
pub const REQUEST_BYTES_MAX: u32 = 32 * 1024 * 1024;
/// Requests a connection may have between reading and writing the reply.
/// Past it the reader stops reading until a reply has gone out, which pushes
/// back on the client through TCP.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 64;
/// Payload bytes (read buffers and write data) one connection may hold at
/// once. Without this, 64 requests of 32 MiB would pin 2 GiB per client.
/// Must be at least REQUEST_BYTES_MAX or a maximal request could never start.
pub const REQUEST_BYTES_IN_FLIGHT_MAX: u32 = 128 * 1024 * 1024;
/// Payload bytes a connection keeps between requests for reuse (see
/// `payload.rs`). qemu keeps at most 16 requests in flight per connection,
/// so this holds its working set at 1 MiB each; bigger or more buffers are
/// freed after use.
pub const POOLED_PAYLOAD_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Requests up to this size run inline on the async runtime; bigger ones (and
/// every FLUSH or FUA request) go to the blocking pool so a slow backend call
/// cannot stall the runtime's worker threads for long.
pub const INLINE_REQUEST_BYTES_MAX: u32 = 256 * 1024;
/// Largest option payload accepted during the handshake. Legitimate options
/// are a name plus a few queries; anything larger is answered with
/// REP_ERR_TOO_BIG and the connection is closed.
pub const OPTION_BYTES_MAX: u32 = 64 * 1024;
/// Longest export name, metadata-context query or string (spec: MUST be no
/// longer than 4096 bytes).
pub const STRING_BYTES_MAX: usize = 4096;
/// Most block-status descriptors in one reply (spec: SHOULD NOT send more
/// than 2^20).
pub const EXTENTS_PER_REPLY_MAX: usize = 1 << 20;
/// How long `serve` waits after shutdown for open connections to finish
/// their in-flight requests before aborting them.
pub const SHUTDOWN_DRAIN_SECS_MAX: u64 = 10;
/// How long an idle connection polls for its next request before sleeping
/// (decision 026), in microseconds.
pub const POLL_MICROS_DEFAULT: u64 = 50;
/// Connections one TCP client address may hold at once. nbdcopy opens 4,
/// qemu 1 per disk (more with multi-conn); 32 leaves room for several
/// clients behind one address, and stops one host from taking every slot.
/// Unix-socket clients have no address and are exempt (they are local and
/// gated by the socket file's permissions); they count toward the total.
pub const CONNECTIONS_PER_ADDRESS_MAX: usize = 32;
/// Connections the server holds at once, over all listeners. Each one is a
/// file descriptor, a task and buffers; past this, new ones are closed
/// right after accept and existing ones go on.
pub const CONNECTIONS_MAX: usize = 1024;
/// Time from accept to the end of option haggling, the TLS handshake
/// included. A client that connects and never finishes would otherwise
/// hold a connection slot forever.
pub const HANDSHAKE_SECS_MAX: u64 = 30;

/// Block sizes advertised in NBD_INFO_BLOCK_SIZE: any alignment works (the
/// backend is byte-addressed), 4 KiB is efficient.
pub const BLOCK_SIZE_MIN_BYTES: u32 = 1;
pub const BLOCK_SIZE_PREFERRED_BYTES: u32 = 4096;

// ---- Handshake -------------------------------------------------------------

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Handshake flags (server).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Option types.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

/// NBD_REP_INFO types.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// The one metadata context we offer, and the id we give it.
pub const META_BASE_ALLOCATION: &str = "base:allocation";
pub const META_BASE_ALLOCATION_ID: u32 = 1;

/// Transmission flags.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// ---- Transmission ----------------------------------------------------------

pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

pub const REQUEST_HEADER_BYTES: usize = 28;
pub const SIMPLE_REPLY_BYTES: usize = 16;
pub const CHUNK_HEADER_BYTES: usize = 20;

/// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured reply flags and chunk types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// Error values on the wire.
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ESHUTDOWN: u32 = 108;
