use fjall::{Database, KeyspaceCreateOptions, PersistMode};

fn main() -> fjall::Result<()> {
    let db = Database::builder(std::env::args().nth(1).unwrap_or("x.fjall".into())).open()?;
    let ks = db.keyspace("t", KeyspaceCreateOptions::default)?;
    let mut b = db.batch().durability(Some(PersistMode::SyncData));
    b.insert(&ks, b"k".as_slice(), b"v".as_slice());
    b.commit()?;
    println!("{}", ks.iter().count());
    Ok(())
}
