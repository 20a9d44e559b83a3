//! The mirror stream (decision 024): what a source sends for one LUN's
//! change between two snapshots, and how a destination reads it as the
//! untrusted input it is.
//!
//! ```text
//! header:  magic "BFMS1\0\0\0" | header_len u32 | crc32c u32 | JSON (StreamHeader)
//! record:  kind u8 | 0 0 0 | crc32c u32 | lba u64 | blocks u64 | extra u64 | payload
//! ```
//! Records are 32 bytes, little-endian; a `DATA` record carries
//! `blocks * 4096` bytes of payload, the others none. Each record's crc32c
//! covers its header (crc field as zero) and payload. Records run in
//! increasing block order without overlap, within the header's size; the
//! last is `END`, whose `lba` is the block the stream covered up to (where
//! a resumed stream starts), `blocks` the number of records before it, and
//! `extra` the crc32c of every byte before it since the header: the
//! end-to-end check. A stream that stops before `END` is cut; one whose
//! checks fail is refused.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

pub const MAGIC: &[u8; 8] = b"BFMS1\0\0\0";
pub const BLOCK_BYTES: u64 = 4096;
/// Most blocks one data record carries (1 MiB): bounds what a receiver
/// buffers.
pub const RECORD_BLOCKS_MAX: u64 = 256;
/// Largest header a receiver reads.
pub const HEADER_BYTES_MAX: u32 = 64 << 10;
pub const RECORD_HEADER_BYTES: usize = 32;

pub const KIND_DATA: u8 = 1;
pub const KIND_ZERO: u8 = 2;
pub const KIND_UNMAP: u8 = 3;
pub const KIND_END: u8 = 0xff;

/// What the stream is of: checked by the receiver against what it asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamHeader {
    pub lun: String,
    /// The common snapshot the change starts from (None: a baseline).
    pub base: Option<String>,
    pub target: String,
    /// The target snapshot's creation time (Unix seconds).
    pub target_created: u64,
    /// The target's size in blocks.
    pub size_blocks: u64,
    /// Where this stream starts (a resumed transfer's checkpoint).
    pub from_block: u64,
    /// Whether what the LUN reads through its parent travels too.
    pub flatten: bool,
    /// Bytes of data from `from_block` to the end of the change (for
    /// progress and ETA; a bounded stream ends earlier).
    pub data_bytes: u64,
}

/// One record as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `blocks` blocks of data at `lba` (the bytes are in the reader's
    /// buffer, see [`StreamReader::next_record`]).
    Data {
        lba: u64,
        blocks: u64,
    },
    Zero {
        lba: u64,
        blocks: u64,
    },
    Unmap {
        lba: u64,
        blocks: u64,
    },
    /// The stream covered every block up to `covered`.
    End {
        covered: u64,
    },
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Writes a stream: the header, then records in block order, then `end`.
pub struct StreamWriter<W: Write> {
    out: W,
    crc: u32,
    records: u64,
    next_lba: u64,
    size_blocks: u64,
    /// Bytes written, header included.
    pub bytes: u64,
}

impl<W: Write> StreamWriter<W> {
    pub fn new(mut out: W, header: &StreamHeader) -> io::Result<StreamWriter<W>> {
        let json = serde_json::to_vec(header).expect("a header serializes");
        let mut head = Vec::with_capacity(16 + json.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&(json.len() as u32).to_le_bytes());
        head.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
        head.extend_from_slice(&json);
        out.write_all(&head)?;
        Ok(StreamWriter {
            out,
            crc: 0,
            records: 0,
            next_lba: header.from_block,
            size_blocks: header.size_blocks,
            bytes: head.len() as u64,
        })
    }

    fn record(
        &mut self,
        kind: u8,
        lba: u64,
        blocks: u64,
        extra: u64,
        payload: &[u8],
    ) -> io::Result<()> {
        let mut h = [0u8; RECORD_HEADER_BYTES];
        h[0] = kind;
        h[8..16].copy_from_slice(&lba.to_le_bytes());
        h[16..24].copy_from_slice(&blocks.to_le_bytes());
        h[24..32].copy_from_slice(&extra.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&h), payload);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(payload)?;
        self.crc = crc32c::crc32c_append(crc32c::crc32c_append(self.crc, &h), payload);
        self.bytes += (h.len() + payload.len()) as u64;
        Ok(())
    }

    fn extent(&mut self, kind: u8, lba: u64, blocks: u64, payload: &[u8]) -> io::Result<()> {
        assert!(
            blocks > 0 && lba >= self.next_lba && lba + blocks <= self.size_blocks,
            "records run in block order within the size"
        );
        self.record(kind, lba, blocks, 0, payload)?;
        self.records += 1;
        self.next_lba = lba + blocks;
        Ok(())
    }

    /// Data at `lba`: whole blocks, at most [`RECORD_BLOCKS_MAX`].
    pub fn data(&mut self, lba: u64, data: &[u8]) -> io::Result<()> {
        let blocks = data.len() as u64 / BLOCK_BYTES;
        assert!(data.len() as u64 == blocks * BLOCK_BYTES && blocks <= RECORD_BLOCKS_MAX);
        self.extent(KIND_DATA, lba, blocks, data)
    }

    pub fn zero(&mut self, lba: u64, blocks: u64) -> io::Result<()> {
        self.extent(KIND_ZERO, lba, blocks, &[])
    }

    pub fn unmap(&mut self, lba: u64, blocks: u64) -> io::Result<()> {
        self.extent(KIND_UNMAP, lba, blocks, &[])
    }

    /// Ends the stream: every block below `covered` was described.
    pub fn end(mut self, covered: u64) -> io::Result<W> {
        assert!(covered >= self.next_lba && covered <= self.size_blocks);
        let (records, crc) = (self.records, self.crc);
        self.record(KIND_END, covered, records, crc as u64, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a stream, checking everything: a record that fails a check is an
/// error, never a panic, and nothing after it is read.
pub struct StreamReader<R: Read> {
    input: R,
    pub header: StreamHeader,
    crc: u32,
    records: u64,
    next_lba: u64,
    done: bool,
    /// Bytes read, header included.
    pub bytes: u64,
    /// The last data record's bytes.
    pub data: Vec<u8>,
}

impl<R: Read> StreamReader<R> {
    pub fn new(mut input: R) -> io::Result<StreamReader<R>> {
        let mut fixed = [0u8; 16];
        input.read_exact(&mut fixed)?;
        if &fixed[..8] != MAGIC {
            return Err(invalid(
                "not a blockfork mirror stream (bad magic); is the peer a blockfork server of this version?".into(),
            ));
        }
        let len = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(fixed[12..16].try_into().expect("4 bytes"));
        if len > HEADER_BYTES_MAX {
            return Err(invalid(format!(
                "stream header of {len} bytes is too large"
            )));
        }
        let mut json = vec![0u8; len as usize];
        input.read_exact(&mut json)?;
        if crc32c::crc32c(&json) != crc {
            return Err(invalid("stream header checksum mismatch".into()));
        }
        let header: StreamHeader = serde_json::from_slice(&json)
            .map_err(|e| invalid(format!("stream header is malformed: {e}")))?;
        if header.from_block > header.size_blocks {
            return Err(invalid(format!(
                "stream starts at block {} beyond its size of {} blocks",
                header.from_block, header.size_blocks
            )));
        }
        Ok(StreamReader {
            input,
            next_lba: header.from_block,
            header,
            crc: 0,
            records: 0,
            done: false,
            bytes: 16 + len as u64,
            data: Vec::new(),
        })
    }

    /// The next record; for `Data`, its bytes are in `self.data`. After
    /// `End`, or after an error, there is nothing more.
    pub fn next_record(&mut self) -> io::Result<Record> {
        if self.done {
            return Err(invalid("the stream already ended".into()));
        }
        // Whatever fails from here ends the stream.
        self.done = true;
        let mut h = [0u8; RECORD_HEADER_BYTES];
        self.input.read_exact(&mut h).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid(format!(
                    "the stream was cut after {} bytes, before its end record",
                    self.bytes
                ))
            } else {
                e
            }
        })?;
        let word = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        let (kind, lba, blocks, extra) = (h[0], word(8), word(16), word(24));
        let crc = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
        if h[1..4] != [0, 0, 0] {
            return Err(invalid(format!(
                "record {} has nonzero padding",
                self.records
            )));
        }
        let payload = match kind {
            KIND_DATA if (1..=RECORD_BLOCKS_MAX).contains(&blocks) => blocks * BLOCK_BYTES,
            KIND_DATA => {
                return Err(invalid(format!(
                    "data record {} of {blocks} blocks (1 to {RECORD_BLOCKS_MAX} allowed)",
                    self.records
                )))
            }
            KIND_ZERO | KIND_UNMAP | KIND_END => 0,
            k => {
                return Err(invalid(format!(
                    "record {} has unknown kind {k}",
                    self.records
                )))
            }
        };
        self.data.resize(payload as usize, 0);
        self.input.read_exact(&mut self.data).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid(format!("the stream was cut inside record {}", self.records))
            } else {
                e
            }
        })?;
        let mut zeroed = h;
        zeroed[4..8].fill(0);
        if crc32c::crc32c_append(crc32c::crc32c(&zeroed), &self.data) != crc {
            return Err(invalid(format!(
                "record {} (block {lba}) fails its checksum",
                self.records
            )));
        }
        let size = self.header.size_blocks;
        let record = match kind {
            KIND_END => {
                if blocks != self.records || extra != self.crc as u64 {
                    return Err(invalid(format!(
                        "the stream's end-to-end check failed ({} records read, {blocks} sent)",
                        self.records
                    )));
                }
                if lba < self.next_lba || lba > size {
                    return Err(invalid(format!(
                        "end record covers up to block {lba}, out of order"
                    )));
                }
                Record::End { covered: lba }
            }
            _ => {
                if blocks == 0
                    || lba < self.next_lba
                    || lba.checked_add(blocks).is_none_or(|e| e > size)
                {
                    return Err(invalid(format!(
                        "record {} at block {lba}+{blocks} is out of order or beyond the {size}-block volume",
                        self.records
                    )));
                }
                if extra != 0 {
                    return Err(invalid(format!(
                        "record {} has a stray field",
                        self.records
                    )));
                }
                self.next_lba = lba + blocks;
                match kind {
                    KIND_DATA => Record::Data { lba, blocks },
                    KIND_ZERO => Record::Zero { lba, blocks },
                    _ => Record::Unmap { lba, blocks },
                }
            }
        };
        self.crc = crc32c::crc32c_append(crc32c::crc32c_append(self.crc, &h), &self.data);
        self.bytes += (h.len() + self.data.len()) as u64;
        if kind != KIND_END {
            self.records += 1;
            self.done = false;
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> StreamHeader {
        StreamHeader {
            lun: "vm".into(),
            base: Some("a".into()),
            target: "b".into(),
            target_created: 7,
            size_blocks: 1000,
            from_block: 0,
            flatten: true,
            data_bytes: 8192,
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new(), &header()).unwrap();
        w.data(3, &vec![7u8; 2 * 4096]).unwrap();
        w.zero(5, 10).unwrap();
        w.unmap(100, 900).unwrap();
        w.end(1000).unwrap()
    }

    fn read_all(bytes: &[u8]) -> io::Result<Vec<(Record, Vec<u8>)>> {
        let mut r = StreamReader::new(bytes)?;
        let mut out = Vec::new();
        loop {
            let rec = r.next_record()?;
            let end = matches!(rec, Record::End { .. });
            out.push((rec, r.data.clone()));
            if end {
                return Ok(out);
            }
        }
    }

    #[test]
    fn round_trip() {
        let recs = read_all(&sample()).unwrap();
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[0].0, Record::Data { lba: 3, blocks: 2 });
        assert_eq!(recs[0].1, vec![7u8; 8192]);
        assert_eq!(recs[3].0, Record::End { covered: 1000 });
    }

    /// Every truncation is refused as cut; every single-byte change past
    /// the magic is refused (never accepted as different content, never a
    /// panic).
    #[test]
    fn cut_or_changed_streams_are_refused() {
        let good = sample();
        for len in 0..good.len() {
            assert!(read_all(&good[..len]).is_err(), "cut at {len} accepted");
        }
        for i in 0..good.len() {
            for flip in [1u8, 0x80] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                assert!(read_all(&bad).is_err(), "byte {i} ^ {flip} accepted");
            }
        }
    }

    /// Random bytes, and random splices of a good stream, never panic.
    #[test]
    fn fuzzed_input_never_panics() {
        let good = sample();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut bad = good.clone();
            for _ in 0..(rand() % 8 + 1) {
                let i = (rand() as usize) % bad.len();
                match rand() % 3 {
                    0 => bad[i] = rand() as u8,
                    1 => {
                        bad.truncate(i);
                    }
                    _ => {
                        let j = (rand() as usize) % good.len();
                        let n = ((rand() as usize) % 64).min(good.len() - j);
                        bad.splice(i..i, good[j..j + n].iter().copied());
                    }
                }
                if bad.is_empty() {
                    break;
                }
            }
            if bad != good {
                let _ = read_all(&bad);
            }
        }
    }

    #[test]
    fn records_out_of_order_are_refused() {
        let mut w = StreamWriter::new(Vec::new(), &header()).unwrap();
        w.zero(5, 10).unwrap();
        let mut bytes = w.end(1000).unwrap();
        // Forge a second, overlapping record with a valid checksum.
        let mut h = [0u8; 32];
        h[0] = KIND_ZERO;
        h[8..16].copy_from_slice(&6u64.to_le_bytes());
        h[16..24].copy_from_slice(&1u64.to_le_bytes());
        let crc = crc32c::crc32c(&h);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        let end_at = bytes.len() - 32;
        bytes.splice(end_at..end_at, h);
        let err = read_all(&bytes).unwrap_err();
        assert!(err.to_string().contains("out of order"), "{err}");
    }
}
