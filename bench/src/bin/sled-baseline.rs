//! The disk ceiling: raw sled inserts of event-sized values, made durable with `flush_async`
//! the way the ledger does: one flush per write, and one flush per group of writes.

use std::time::Instant;

const VALUE: [u8; 600] = [7; 600];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "/tmp/sled-baseline".into());
    let _ = std::fs::remove_dir_all(&dir);
    let db = sled::open(&dir)?;
    for group in [1usize, 10, 100] {
        let writes = 20_000usize.min(group * 2_000);
        let started = Instant::now();
        for n in 0..writes {
            db.insert(format!("g{group}-{n:08}"), &VALUE[..])?;
            if (n + 1) % group == 0 {
                db.flush_async().await?;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "sled durable writes, flush every {group:>3}: {:>8.0} writes/s ({writes} writes)",
            writes as f64 / seconds
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
