//! The engine's only ways to touch storage. Everything goes through these two
//! traits so that tests can replace them with simulated devices that fail or
//! crash at a chosen step (see `sim`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The data file: physical blocks addressed by byte offset.
pub trait DataFile: Send + Sync {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// Makes the file at least `bytes` long (growing the pool).
    fn ensure_len(&self, bytes: u64) -> io::Result<()>;
}

/// Called with each key and value of the store, in key order.
pub type KeyValueVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> crate::Result<()> + 'a;

/// A key's new value in a commit; `None` deletes the key.
pub type MetaPut = (Vec<u8>, Option<Vec<u8>>);

/// The metadata store: an ordered key-value map with atomic, durable batches.
pub trait MetaStore: Send {
    /// Calls `each` for every key in order.
    fn for_each(&self, each: &mut KeyValueVisitor) -> crate::Result<()>;
    /// Applies every put of `batch` atomically and durably: after Ok, a crash
    /// keeps all of them; after Err or a crash during the call, either all or
    /// none are kept.
    fn commit(&mut self, batch: &[MetaPut]) -> crate::Result<()>;
}

/// The data file on a real file system.
pub struct FileData {
    file: File,
}

impl FileData {
    pub fn open(path: &Path, len_bytes: u64) -> io::Result<FileData> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let data = FileData { file };
        data.ensure_len(len_bytes)?;
        Ok(data)
    }
}

impl DataFile for FileData {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn ensure_len(&self, bytes: u64) -> io::Result<()> {
        if self.file.metadata()?.len() < bytes {
            self.file.set_len(bytes)?;
            self.file.sync_all()?;
        }
        Ok(())
    }
}

const META_TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("meta");

/// The metadata store on redb (see docs/decisions/001-metadata-store.md).
pub struct RedbStore {
    db: redb::Database,
}

fn store_err(e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Store(e.to_string())
}

impl RedbStore {
    pub fn open(path: &Path) -> crate::Result<RedbStore> {
        let db = redb::Database::create(path).map_err(store_err)?;
        // Create the table so that a read of an empty pool finds it.
        let txn = db.begin_write().map_err(store_err)?;
        txn.open_table(META_TABLE).map_err(store_err)?;
        txn.commit().map_err(store_err)?;
        Ok(RedbStore { db })
    }
}

impl MetaStore for RedbStore {
    fn for_each(&self, each: &mut KeyValueVisitor) -> crate::Result<()> {
        use redb::{ReadableDatabase, ReadableTable};
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(META_TABLE).map_err(store_err)?;
        for entry in table.iter().map_err(store_err)? {
            let (k, v) = entry.map_err(store_err)?;
            each(k.value(), v.value())?;
        }
        Ok(())
    }

    fn commit(&mut self, batch: &[MetaPut]) -> crate::Result<()> {
        let txn = self.db.begin_write().map_err(store_err)?;
        {
            let mut table = txn.open_table(META_TABLE).map_err(store_err)?;
            for (key, value) in batch {
                match value {
                    Some(v) => {
                        table
                            .insert(key.as_slice(), v.as_slice())
                            .map_err(store_err)?;
                    }
                    None => {
                        table.remove(key.as_slice()).map_err(store_err)?;
                    }
                }
            }
        }
        txn.commit().map_err(store_err)
    }
}
