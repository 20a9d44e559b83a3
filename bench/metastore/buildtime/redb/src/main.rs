use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("t");

fn main() -> Result<(), redb::Error> {
    let db = Database::create(std::env::args().nth(1).unwrap_or("x.redb".into()))?;
    let w = db.begin_write()?;
    w.open_table(T)?.insert(b"k".as_slice(), b"v".as_slice())?;
    w.commit()?;
    let r = db.begin_read()?;
    println!("{}", r.open_table(T)?.iter()?.count());
    Ok(())
}
