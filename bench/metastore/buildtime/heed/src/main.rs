use heed::types::Bytes;
use heed::{CommitOrAbort, EnvOpenOptions};

fn main() -> heed::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or("x.heed".into());
    std::fs::create_dir_all(&dir)?;
    let env = unsafe { EnvOpenOptions::new().map_size(1 << 30).max_dbs(1).open(&dir)? };
    let w = env.write_txn()?;
    let db = env
        .create_databases_and_commit(w, |o, w| {
            o.create_database::<Bytes, Bytes>(w, Some("t")).map(CommitOrAbort::<_, ()>::Commit)
        })?
        .unwrap_commit();
    let mut w = env.write_txn()?;
    db.put(&mut w, b"k", b"v")?;
    w.commit()?;
    let r = env.read_txn()?;
    println!("{}", db.iter(&r)?.count());
    Ok(())
}
