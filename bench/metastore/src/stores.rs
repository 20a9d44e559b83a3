//! The three candidate stores behind the benchmark's `Store` trait. Defaults are kept
//! except where noted; every commit is durable before it returns.

use crate::{Key, Op, Store};
use std::path::Path;

// ---------------------------------------------------------------- redb
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};

const REDB_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blockmap");

pub struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    pub fn open(dir: &Path) -> Self {
        // Default: 1 GiB cache, 1-phase commit with checksums (one fsync per commit).
        let db = redb::Database::create(dir.join("meta.redb")).expect("redb open");
        RedbStore { db }
    }
}

impl Store for RedbStore {
    fn commit(&mut self, ops: &[Op]) {
        let mut tx = self.db.begin_write().unwrap();
        tx.set_durability(Durability::Immediate).unwrap(); // the default, made explicit
        {
            let mut t = tx.open_table(REDB_TABLE).unwrap();
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        t.insert(k.as_slice(), v.as_slice()).unwrap();
                    }
                    Op::Del(k) => {
                        t.remove(k.as_slice()).unwrap();
                    }
                }
            }
        }
        tx.commit().unwrap();
    }

    fn scan(&self) -> (usize, u64) {
        let rx = self.db.begin_read().unwrap();
        let t = rx.open_table(REDB_TABLE).unwrap();
        let mut c = Checker::default();
        for e in t.iter().unwrap() {
            let (k, v) = e.unwrap();
            c.add(k.value(), v.value());
        }
        c.done()
    }

    fn close(self: Box<Self>) {
        drop(self.db);
    }
}

// ---------------------------------------------------------------- fjall
use fjall::{KeyspaceCreateOptions, PersistMode};

pub struct FjallStore {
    db: fjall::Database,
    ks: fjall::Keyspace,
    mode: PersistMode,
}

impl FjallStore {
    pub fn open(dir: &Path) -> Self {
        // Default config (LZ4 tables, 1-thread-per-core workers, default caches).
        let db = fjall::Database::builder(dir).open().expect("fjall open");
        let ks = db.keyspace("blockmap", KeyspaceCreateOptions::default).unwrap();
        // fdatasync of the journal: the same primitive redb and LMDB use.
        FjallStore { db, ks, mode: PersistMode::SyncData }
    }
}

impl Store for FjallStore {
    fn commit(&mut self, ops: &[Op]) {
        let mut b = self.db.batch().durability(Some(self.mode));
        for op in ops {
            match op {
                Op::Put(k, v) => b.insert(&self.ks, k.as_slice(), v.as_slice()),
                Op::Del(k) => b.remove(&self.ks, k.as_slice()),
            }
        }
        b.commit().unwrap();
    }

    fn scan(&self) -> (usize, u64) {
        let mut c = Checker::default();
        for g in self.ks.iter() {
            let (k, v) = g.into_inner().unwrap();
            c.add(&k, &v);
        }
        c.done()
    }

    fn alt_durability(&mut self) -> Option<&'static str> {
        self.mode = PersistMode::SyncAll;
        Some("SyncAll (fsync)")
    }

    fn close(self: Box<Self>) {
        let FjallStore { db, ks, .. } = *self;
        db.persist(PersistMode::SyncAll).unwrap();
        drop(ks);
        drop(db); // joins the background workers and releases the lock
    }
}

// ---------------------------------------------------------------- heed (LMDB)
use heed::types::Bytes;

pub struct HeedStore {
    env: heed::Env,
    db: heed::Database<'static, Bytes, Bytes>,
}

impl HeedStore {
    pub fn open(dir: &Path) -> Self {
        // Default flags: full sync on commit (data pages fdatasync + meta page via
        // an O_DSYNC descriptor = two synchronous writes per commit).
        let env = unsafe {
            heed::EnvOpenOptions::new()
                .map_size(64 << 30)
                .max_dbs(4)
                .open(dir)
                .expect("heed open")
        };
        // heed 0.23: a database handle outlives its creating transaction only via
        // create_databases_and_commit.
        let w = env.write_txn().unwrap();
        let db = env
            .create_databases_and_commit(w, |opener, w| {
                opener.create_database::<Bytes, Bytes>(w, Some("blockmap")).map(heed::CommitOrAbort::<_, ()>::Commit)
            })
            .unwrap()
            .unwrap_commit();
        HeedStore { env, db }
    }
}

impl Store for HeedStore {
    fn commit(&mut self, ops: &[Op]) {
        let mut w = self.env.write_txn().unwrap();
        for op in ops {
            match op {
                Op::Put(k, v) => self.db.put(&mut w, k.as_slice(), v.as_slice()).unwrap(),
                Op::Del(k) => {
                    self.db.delete(&mut w, k.as_slice()).unwrap();
                }
            }
        }
        w.commit().unwrap();
    }

    fn scan(&self) -> (usize, u64) {
        let r = self.env.read_txn().unwrap();
        let mut c = Checker::default();
        for e in self.db.iter(&r).unwrap() {
            let (k, v) = e.unwrap();
            c.add(k, v);
        }
        c.done()
    }

    fn close(self: Box<Self>) {
        let HeedStore { env, .. } = *self;
        env.prepare_for_closing().wait();
    }
}

// ---------------------------------------------------------------- scan check
#[derive(Default)]
struct Checker {
    n: usize,
    bytes: u64,
    prev: Option<Key>,
}

impl Checker {
    fn add(&mut self, k: &[u8], v: &[u8]) {
        let k: Key = k.try_into().expect("17-byte key");
        if let Some(p) = self.prev {
            assert!(p < k, "scan out of order");
        }
        self.prev = Some(k);
        self.n += 1;
        self.bytes += v.len() as u64;
    }
    fn done(self) -> (usize, u64) {
        // Management keys (tag 0x02) are not part of the block map.
        (self.n, self.bytes)
    }
}
