//! Pure encoders and parsers for NBD messages. Nothing here does I/O, so each
//! function can be tested on byte slices, hostile ones included: parsers
//! return `WireError` and never index past the input.

use crate::backend::{IoError, StatusExtent};
use crate::proto::*;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    #[error("message truncated")]
    Truncated,
    #[error("{0} trailing bytes after message")]
    Trailing(usize),
    #[error("string of {0} bytes is longer than allowed")]
    TooLong(usize),
    #[error("string is not valid UTF-8")]
    NotUtf8,
    #[error("unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
}

/// Reads big-endian fields off a slice, failing instead of panicking when
/// the slice runs out.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A string preceded by its 32-bit length.
    fn string(&mut self) -> Result<String, WireError> {
        let len = self.u32()? as usize;
        // Check the limit before the remaining length so a huge length is
        // reported as such rather than as truncation.
        if len > STRING_BYTES_MAX {
            return Err(WireError::TooLong(len));
        }
        to_string(self.bytes(len)?)
    }

    fn finish(self) -> Result<(), WireError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

/// A protocol string: UTF-8, at most STRING_BYTES_MAX bytes.
pub fn to_string(bytes: &[u8]) -> Result<String, WireError> {
    if bytes.len() > STRING_BYTES_MAX {
        return Err(WireError::TooLong(bytes.len()));
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| WireError::NotUtf8)
}

// ---- Handshake -------------------------------------------------------------

/// The server's opening: magic, IHAVEOPT, handshake flags.
pub fn encode_greeting() -> [u8; 18] {
    let mut out = [0u8; 18];
    out[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    pub fixed_newstyle: bool,
    pub no_zeroes: bool,
}

/// The spec says the server MUST drop the connection on unknown client
/// flags, hence an error for any bit we did not offer.
pub fn parse_client_flags(raw: [u8; 4]) -> Result<ClientFlags, WireError> {
    let flags = u32::from_be_bytes(raw);
    let known = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;
    if flags & !known != 0 {
        return Err(WireError::UnknownClientFlags(flags));
    }
    Ok(ClientFlags {
        fixed_newstyle: flags & FLAG_C_FIXED_NEWSTYLE != 0,
        no_zeroes: flags & FLAG_C_NO_ZEROES != 0,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

pub fn parse_option_header(raw: &[u8; 16]) -> Result<OptionHeader, WireError> {
    let mut c = Cursor::new(raw);
    let magic = c.u64()?;
    if magic != IHAVEOPT {
        return Err(WireError::BadMagic(magic));
    }
    Ok(OptionHeader {
        option: c.u32()?,
        length: c.u32()?,
    })
}

/// One option reply: magic, option, reply type, length, data.
pub fn encode_option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The reply to NBD_OPT_EXPORT_NAME (which has no option-reply framing).
pub fn encode_export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + 124);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
    out
}

/// Data of NBD_OPT_INFO and NBD_OPT_GO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub infos: Vec<u16>,
}

pub fn parse_info_request(data: &[u8]) -> Result<InfoRequest, WireError> {
    let mut c = Cursor::new(data);
    let name = c.string()?;
    let count = c.u16()?;
    let infos = (0..count).map(|_| c.u16()).collect::<Result<_, _>>()?;
    c.finish()?;
    Ok(InfoRequest { name, infos })
}

/// Data of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub name: String,
    pub queries: Vec<String>,
}

pub fn parse_meta_context_request(data: &[u8]) -> Result<MetaContextRequest, WireError> {
    let mut c = Cursor::new(data);
    let name = c.string()?;
    let count = c.u32()?;
    // Each query takes at least 4 bytes: reject an absurd count before
    // reserving memory for it.
    if count as usize > data.len() / 4 {
        return Err(WireError::Truncated);
    }
    let queries = (0..count).map(|_| c.string()).collect::<Result<_, _>>()?;
    c.finish()?;
    Ok(MetaContextRequest { name, queries })
}

/// Whether the queries select `base:allocation`. For LIST, no query and the
/// `base:` wildcard match everything; for SET they select nothing. Unknown
/// namespaces and leaf names are ignored, as the spec requires.
pub fn queries_select_base_allocation(queries: &[String], listing: bool) -> bool {
    if queries.is_empty() {
        return listing;
    }
    queries
        .iter()
        .any(|q| q == META_BASE_ALLOCATION || (listing && q == "base:"))
}

/// Payload of NBD_REP_SERVER.
pub fn encode_server_entry(name: &str, description: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len() + description.len());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(description.as_bytes());
    out
}

/// Payload of NBD_REP_INFO / NBD_INFO_EXPORT.
pub fn encode_info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out
}

/// Payload of NBD_REP_INFO for NBD_INFO_NAME or NBD_INFO_DESCRIPTION.
pub fn encode_info_string(info: u16, s: &str) -> Vec<u8> {
    let s = truncate_utf8(s, STRING_BYTES_MAX);
    let mut out = Vec::with_capacity(2 + s.len());
    out.extend_from_slice(&info.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    out
}

/// Payload of NBD_REP_INFO / NBD_INFO_BLOCK_SIZE.
pub fn encode_info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    out.extend_from_slice(&min.to_be_bytes());
    out.extend_from_slice(&preferred.to_be_bytes());
    out.extend_from_slice(&max.to_be_bytes());
    out
}

/// Payload of NBD_REP_META_CONTEXT.
pub fn encode_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

// ---- Transmission ----------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

pub fn parse_request(raw: &[u8; REQUEST_HEADER_BYTES]) -> Result<Request, WireError> {
    let mut c = Cursor::new(raw);
    let magic = c.u32()?;
    if magic != REQUEST_MAGIC {
        return Err(WireError::BadMagic(magic.into()));
    }
    Ok(Request {
        flags: c.u16()?,
        command: c.u16()?,
        cookie: c.u64()?,
        offset: c.u64()?,
        length: c.u32()?,
    })
}

pub fn encode_request(req: &Request) -> [u8; REQUEST_HEADER_BYTES] {
    let mut out = [0u8; REQUEST_HEADER_BYTES];
    out[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&req.flags.to_be_bytes());
    out[6..8].copy_from_slice(&req.command.to_be_bytes());
    out[8..16].copy_from_slice(&req.cookie.to_be_bytes());
    out[16..24].copy_from_slice(&req.offset.to_be_bytes());
    out[24..].copy_from_slice(&req.length.to_be_bytes());
    out
}

pub fn encode_simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_BYTES] {
    let mut out = [0u8; SIMPLE_REPLY_BYTES];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&cookie.to_be_bytes());
    out
}

pub fn encode_chunk_header(
    flags: u16,
    chunk_type: u16,
    cookie: u64,
    length: u32,
) -> [u8; CHUNK_HEADER_BYTES] {
    let mut out = [0u8; CHUNK_HEADER_BYTES];
    out[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&chunk_type.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..].copy_from_slice(&length.to_be_bytes());
    out
}

/// Header and offset of a final NBD_REPLY_TYPE_OFFSET_DATA chunk; the
/// `data_len` bytes of data follow it on the wire. `data_len` must be at
/// most REQUEST_BYTES_MAX (the caller's validation guarantees it).
pub fn encode_offset_data_head(cookie: u64, offset: u64, data_len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHUNK_HEADER_BYTES + 8);
    let length = data_len.saturating_add(8);
    out.extend_from_slice(&encode_chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        cookie,
        length,
    ));
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

/// A final NBD_REPLY_TYPE_NONE chunk (success without content).
pub fn encode_none_chunk(cookie: u64) -> [u8; CHUNK_HEADER_BYTES] {
    encode_chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0)
}

/// A final NBD_REPLY_TYPE_ERROR chunk carrying a human-readable message.
pub fn encode_error_chunk(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    // The message length is 16 bits on the wire and limited to 4096 bytes.
    let message = truncate_utf8(message, STRING_BYTES_MAX);
    let mut out = Vec::with_capacity(CHUNK_HEADER_BYTES + 6 + message.len());
    out.extend_from_slice(&encode_chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + message.len() as u32,
    ));
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    out
}

/// A final NBD_REPLY_TYPE_BLOCK_STATUS chunk; `descriptors` are
/// (length, flags) pairs as produced by `clamp_extents`.
pub fn encode_block_status_chunk(
    cookie: u64,
    context_id: u32,
    descriptors: &[(u32, u32)],
) -> Vec<u8> {
    let length = 4 + 8 * descriptors.len();
    let mut out = Vec::with_capacity(CHUNK_HEADER_BYTES + length);
    out.extend_from_slice(&encode_chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        length as u32,
    ));
    out.extend_from_slice(&context_id.to_be_bytes());
    for (len, flags) in descriptors {
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
    }
    out
}

/// Turns the backend's extents into wire descriptors that obey the spec:
/// every length nonzero, adjacent equal flags merged, the total no more than
/// the requested `length` (so REQ_ONE's bound and the 32-bit field always
/// hold), one descriptor only for REQ_ONE, at most EXTENTS_PER_REPLY_MAX.
/// An empty result means the backend gave nothing usable.
pub fn clamp_extents(extents: &[StatusExtent], length: u32, req_one: bool) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut left = length;
    for e in extents {
        if left == 0 {
            break;
        }
        let take = e.length.min(u64::from(left)) as u32;
        if take == 0 {
            continue;
        }
        let full = out.len() == EXTENTS_PER_REPLY_MAX;
        match out.last_mut() {
            Some((len, flags)) if *flags == e.flags => *len += take,
            _ if full => break,
            _ => out.push((take, e.flags)),
        }
        left -= take;
    }
    if req_one {
        out.truncate(1);
    }
    out
}

/// The wire errno for a backend error.
pub fn errno_of(e: &IoError) -> u32 {
    match e {
        IoError::Io(_) => EIO,
        IoError::NoSpace => ENOSPC,
        IoError::ReadOnly => EPERM,
        IoError::Invalid(_) => EINVAL,
        // EOVERFLOW is reserved by the spec for DF reads and oversized
        // payload-less commands; an out-of-range access is EINVAL.
        IoError::OutOfRange => EINVAL,
        IoError::Shutdown => ESHUTDOWN,
    }
}

/// A message for the error chunk a client may show to a person.
pub fn message_of(e: &IoError) -> String {
    match e {
        IoError::Io(m) => format!("I/O error: {m}"),
        IoError::NoSpace => "no space left".to_string(),
        IoError::ReadOnly => "export is read-only".to_string(),
        IoError::Invalid(m) => format!("invalid request: {m}"),
        IoError::OutOfRange => "request beyond the end of the export".to_string(),
        IoError::Shutdown => "export is shutting down".to_string(),
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string_field(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }

    #[test]
    fn greeting_layout() {
        let g = encode_greeting();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(u16::from_be_bytes([g[16], g[17]]), 3);
    }

    #[test]
    fn client_flags() {
        assert_eq!(
            parse_client_flags(3u32.to_be_bytes()),
            Ok(ClientFlags {
                fixed_newstyle: true,
                no_zeroes: true
            })
        );
        assert_eq!(
            parse_client_flags(0u32.to_be_bytes()),
            Ok(ClientFlags {
                fixed_newstyle: false,
                no_zeroes: false
            })
        );
        assert_eq!(
            parse_client_flags(4u32.to_be_bytes()),
            Err(WireError::UnknownClientFlags(4))
        );
    }

    #[test]
    fn option_header() {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(b"IHAVEOPT");
        raw[8..12].copy_from_slice(&7u32.to_be_bytes());
        raw[12..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            parse_option_header(&raw),
            Ok(OptionHeader {
                option: 7,
                length: u32::MAX
            })
        );
        raw[0] = b'X';
        assert!(matches!(
            parse_option_header(&raw),
            Err(WireError::BadMagic(_))
        ));
    }

    #[test]
    fn option_reply_layout() {
        let r = encode_option_reply(OPT_GO, REP_ACK, b"ab");
        assert_eq!(r.len(), 22);
        assert_eq!(&r[..8], &OPTION_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&r[8..12], &OPT_GO.to_be_bytes());
        assert_eq!(&r[12..16], &REP_ACK.to_be_bytes());
        assert_eq!(&r[16..20], &2u32.to_be_bytes());
        assert_eq!(&r[20..], b"ab");
    }

    #[test]
    fn export_name_reply_zeroes() {
        assert_eq!(encode_export_name_reply(1, 1, false).len(), 134);
        assert_eq!(encode_export_name_reply(1, 1, true).len(), 10);
    }

    #[test]
    fn info_request_ok() {
        let mut d = string_field(b"disk");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_NAME.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        let r = parse_info_request(&d).unwrap();
        assert_eq!(r.name, "disk");
        assert_eq!(r.infos, vec![INFO_NAME, INFO_BLOCK_SIZE]);
    }

    #[test]
    fn info_request_malformed() {
        // Empty, name length past the end, info count past the end.
        assert_eq!(parse_info_request(&[]), Err(WireError::Truncated));
        let mut d = 100u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"abc");
        assert_eq!(parse_info_request(&d), Err(WireError::Truncated));
        let mut d = string_field(b"a");
        d.extend_from_slice(&5u16.to_be_bytes());
        d.extend_from_slice(&1u16.to_be_bytes());
        assert_eq!(parse_info_request(&d), Err(WireError::Truncated));
        // Huge name length, trailing garbage, invalid UTF-8.
        let d = u32::MAX.to_be_bytes();
        assert!(matches!(parse_info_request(&d), Err(WireError::TooLong(_))));
        let mut d = string_field(b"a");
        d.extend_from_slice(&0u16.to_be_bytes());
        d.push(9);
        assert_eq!(parse_info_request(&d), Err(WireError::Trailing(1)));
        let mut d = string_field(&[0xff, 0xfe]);
        d.extend_from_slice(&0u16.to_be_bytes());
        assert_eq!(parse_info_request(&d), Err(WireError::NotUtf8));
        // The longest allowed name passes, one more byte does not.
        let mut d = string_field(&[b'x'; STRING_BYTES_MAX]);
        d.extend_from_slice(&0u16.to_be_bytes());
        assert!(parse_info_request(&d).is_ok());
        let mut d = string_field(&[b'x'; STRING_BYTES_MAX + 1]);
        d.extend_from_slice(&0u16.to_be_bytes());
        assert!(matches!(parse_info_request(&d), Err(WireError::TooLong(_))));
    }

    #[test]
    fn meta_context_request() {
        let mut d = string_field(b"disk");
        d.extend_from_slice(&2u32.to_be_bytes());
        d.extend_from_slice(&string_field(b"base:allocation"));
        d.extend_from_slice(&string_field(b"qemu:dirty-bitmap:x"));
        let r = parse_meta_context_request(&d).unwrap();
        assert_eq!(r.name, "disk");
        assert_eq!(r.queries, vec!["base:allocation", "qemu:dirty-bitmap:x"]);

        // Huge query count: error, not a giant allocation.
        let mut d = string_field(b"disk");
        d.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_meta_context_request(&d), Err(WireError::Truncated));
        // Query length past the end.
        let mut d = string_field(b"");
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&50u32.to_be_bytes());
        d.extend_from_slice(b"base:");
        assert_eq!(parse_meta_context_request(&d), Err(WireError::Truncated));
        // Truncated in every prefix of a valid message.
        let mut d = string_field(b"disk");
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&string_field(b"base:"));
        for cut in 0..d.len() {
            assert!(parse_meta_context_request(&d[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn meta_context_selection() {
        let q = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(queries_select_base_allocation(&q(&[]), true));
        assert!(!queries_select_base_allocation(&q(&[]), false));
        assert!(queries_select_base_allocation(&q(&["base:"]), true));
        assert!(!queries_select_base_allocation(&q(&["base:"]), false));
        assert!(queries_select_base_allocation(
            &q(&["x:y", "base:allocation"]),
            false
        ));
        assert!(!queries_select_base_allocation(
            &q(&["base:other", "qemu:x"]),
            true
        ));
    }

    #[test]
    fn request_roundtrip_and_bad_magic() {
        let req = Request {
            flags: CMD_FLAG_FUA,
            command: CMD_WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: u64::MAX,
            length: u32::MAX,
        };
        let raw = encode_request(&req);
        assert_eq!(parse_request(&raw), Ok(req));
        let mut bad = raw;
        bad[3] ^= 1;
        assert!(matches!(parse_request(&bad), Err(WireError::BadMagic(_))));
    }

    #[test]
    fn reply_layouts() {
        let s = encode_simple_reply(EIO, 9);
        assert_eq!(&s[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&s[4..8], &EIO.to_be_bytes());
        assert_eq!(&s[8..], &9u64.to_be_bytes());

        let d = encode_offset_data_head(5, 4096, 512);
        assert_eq!(d.len(), 28);
        assert_eq!(&d[4..6], &REPLY_FLAG_DONE.to_be_bytes());
        assert_eq!(&d[6..8], &REPLY_TYPE_OFFSET_DATA.to_be_bytes());
        assert_eq!(&d[16..20], &520u32.to_be_bytes());
        assert_eq!(&d[20..], &4096u64.to_be_bytes());

        let e = encode_error_chunk(5, EINVAL, "bad");
        assert_eq!(&e[6..8], &REPLY_TYPE_ERROR.to_be_bytes());
        assert_eq!(&e[16..20], &9u32.to_be_bytes());
        assert_eq!(&e[20..24], &EINVAL.to_be_bytes());
        assert_eq!(&e[24..26], &3u16.to_be_bytes());
        assert_eq!(&e[26..], b"bad");
        // Long messages are cut to the string limit on a char boundary.
        let long = "é".repeat(STRING_BYTES_MAX);
        let e = encode_error_chunk(5, EIO, &long);
        let n = u16::from_be_bytes([e[24], e[25]]) as usize;
        assert!(n <= STRING_BYTES_MAX);
        assert!(std::str::from_utf8(&e[26..]).is_ok());
        assert_eq!(e.len(), 26 + n);

        let b = encode_block_status_chunk(5, 1, &[(4096, 3), (512, 0)]);
        assert_eq!(&b[6..8], &REPLY_TYPE_BLOCK_STATUS.to_be_bytes());
        assert_eq!(&b[16..20], &20u32.to_be_bytes());
        assert_eq!(b.len(), 40);
    }

    #[test]
    fn extents_are_clamped() {
        let e = |length, flags| StatusExtent { length, flags };
        // Zero lengths dropped, equal neighbours merged, total cut to length.
        let got = clamp_extents(&[e(0, 1), e(100, 3), e(50, 3), e(u64::MAX, 0)], 1000, false);
        assert_eq!(got, vec![(150, 3), (850, 0)]);
        // REQ_ONE keeps one descriptor no longer than the request.
        assert_eq!(
            clamp_extents(&[e(10_000, 0), e(5, 1)], 4096, true),
            vec![(4096, 0)]
        );
        // Nothing usable.
        assert!(clamp_extents(&[], 10, false).is_empty());
        assert!(clamp_extents(&[e(0, 0)], 10, false).is_empty());
    }

    #[test]
    fn extents_count_is_bounded() {
        let many: Vec<_> = (0..EXTENTS_PER_REPLY_MAX + 10)
            .map(|i| StatusExtent {
                length: 1,
                flags: (i % 2) as u32,
            })
            .collect();
        let got = clamp_extents(&many, u32::MAX, false);
        assert_eq!(got.len(), EXTENTS_PER_REPLY_MAX);
    }

    #[test]
    fn errno_mapping() {
        assert_eq!(errno_of(&IoError::Io("x".into())), EIO);
        assert_eq!(errno_of(&IoError::NoSpace), ENOSPC);
        assert_eq!(errno_of(&IoError::ReadOnly), EPERM);
        assert_eq!(errno_of(&IoError::Invalid("x".into())), EINVAL);
        assert_eq!(errno_of(&IoError::OutOfRange), EINVAL);
        assert_eq!(errno_of(&IoError::Shutdown), ESHUTDOWN);
    }
}
