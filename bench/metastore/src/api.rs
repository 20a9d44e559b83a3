//! The exact API calls blockfork needs from each candidate, as short self-contained
//! functions. The chosen store's function is quoted verbatim in
//! docs/decisions/001-metadata-store.md; `run_all` executes all of them at the start
//! of every benchmark run, so the quoted code is compiled and run, not just read.

use std::path::Path;

// --- redb ---------------------------------------------------------------------
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

const BLOCKMAP: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blockmap");

pub fn redb_example(path: &Path, puts: &[(&[u8], &[u8])], dels: &[&[u8]]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, redb::Error> {
    // Open, or create if absent (a single file).
    let db = Database::create(path)?;

    // One write transaction: inserts/overwrites and removes.
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?; // the default: fsync before commit() returns
    {
        let mut table = tx.open_table(BLOCKMAP)?; // creates the table on first use
        for (k, v) in puts {
            table.insert(*k, *v)?;
        }
        for k in dels {
            table.remove(*k)?;
        }
    } // the table borrows the transaction: drop it before commit
    tx.commit()?; // durable when this returns (1-phase commit + checksums, one fsync)

    // Full ordered iteration (startup load).
    let rx = db.begin_read()?;
    let table = rx.open_table(BLOCKMAP)?;
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

// --- fjall (the chosen store: quoted verbatim in docs/decisions/001-metadata-store.md) ---
pub fn fjall_example(path: &Path, puts: &[(&[u8], &[u8])], dels: &[&[u8]]) -> fjall::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use fjall::{Database, KeyspaceCreateOptions, PersistMode};

    // Open, or create if absent (a directory; one process at a time).
    let db = Database::builder(path).open()?;
    let blockmap = db.keyspace("blockmap", KeyspaceCreateOptions::default)?;

    // One write transaction: an atomic batch (each key at most once per batch).
    let mut batch = db.batch().durability(Some(PersistMode::SyncData));
    for (k, v) in puts {
        batch.insert(&blockmap, *k, *v); // insert or overwrite
    }
    for k in dels {
        batch.remove(&blockmap, *k);
    }
    // Durable when this returns: journal write + fdatasync. Without .durability(..)
    // a batch only reaches the OS page cache.
    batch.commit()?;

    // Full ordered iteration (startup load).
    let mut out = Vec::new();
    for guard in blockmap.iter() {
        let (k, v) = guard.into_inner()?;
        out.push((k.to_vec(), v.to_vec()));
    }
    Ok(out)
}

// --- heed (LMDB) ----------------------------------------------------------------
use heed::types::Bytes;

pub fn heed_example(path: &Path, puts: &[(&[u8], &[u8])], dels: &[&[u8]]) -> heed::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    std::fs::create_dir_all(path)?; // LMDB wants an existing directory
    // Safety: the environment must not be opened twice in one process, nor modified
    // behind LMDB's back.
    let env = unsafe { heed::EnvOpenOptions::new().map_size(64 << 30).max_dbs(4).open(path)? };

    let wtxn = env.write_txn()?;
    let blockmap = env
        .create_databases_and_commit(wtxn, |opener, wtxn| {
            opener.create_database::<Bytes, Bytes>(wtxn, Some("blockmap")).map(heed::CommitOrAbort::<_, ()>::Commit)
        })?
        .unwrap_commit();

    let mut wtxn = env.write_txn()?;
    for (k, v) in puts {
        blockmap.put(&mut wtxn, k, v)?;
    }
    for k in dels {
        blockmap.delete(&mut wtxn, k)?;
    }
    wtxn.commit()?; // default flags: synced (two syncs) before this returns

    let rtxn = env.read_txn()?;
    let mut out = Vec::new();
    for entry in blockmap.iter(&rtxn)? {
        let (k, v) = entry?;
        out.push((k.to_vec(), v.to_vec()));
    }
    drop(rtxn);
    env.prepare_for_closing().wait();
    Ok(out)
}

pub fn run_all(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let (k1, k2, k3) = ([1u8; 17], [2u8; 17], [3u8; 17]);
    let puts: [(&[u8], &[u8]); 3] = [(&k3, b"three"), (&k1, b"one"), (&k2, b"two")];
    let dels: [&[u8]; 1] = [&k2];
    let want = vec![(k1.to_vec(), b"one".to_vec()), (k3.to_vec(), b"three".to_vec())];
    assert_eq!(redb_example(&dir.join("x.redb"), &puts, &dels)?, want);
    assert_eq!(fjall_example(&dir.join("x.fjall"), &puts, &dels)?, want);
    assert_eq!(heed_example(&dir.join("x.heed"), &puts, &dels)?, want);
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
