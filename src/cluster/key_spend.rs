//! `keyspend.<day>.<key>`: an HTTP key's spend of one UTC day for the whole cluster, in 1e-10 USD.
//! Each instance adds what it spent with compare-and-swap (`add`), and learns the others' spend
//! from the total it reads back, so a key's daily cap holds across instances. One key per day:
//! a new day starts at zero without any reset.

use serde::{Deserialize, Serialize};

use super::{Bucket, Write, key_token};

pub fn key(day: &str, name: &str) -> String {
    format!("keyspend.{day}.{}", key_token(name))
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Total {
    units: u64,
}

/// Adds `units` to the total at `key` (0: only reads it); returns the total after.
pub async fn add(kv: &Bucket, key: &str, units: u64) -> Result<u64, String> {
    for _ in 0..8 {
        let (total, revision) = match kv.entry(key).await {
            Ok(Some(e)) => (
                serde_json::from_slice::<Total>(&e.value)
                    .map(|t| t.units)
                    .unwrap_or(0),
                e.revision,
            ),
            Ok(None) => (0, 0),
            Err(e) => return Err(format!("cannot read {key}: {e}")),
        };
        if units == 0 {
            return Ok(total);
        }
        let after = total.saturating_add(units);
        let value = serde_json::to_vec(&Total { units: after }).unwrap_or_default();
        match kv.cas(key, value.into(), revision).await {
            Ok(_) => return Ok(after),
            Err(Write::Conflict) => continue,
            Err(Write::Failed(e)) => return Err(e),
        }
    }
    Err(format!("{key}: other instances kept writing first"))
}
