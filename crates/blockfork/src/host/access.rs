//! Borrowing a LUN mapping for the length of a clone (seed FIG. 4, blocks
//! 410-415 and 445-450): when the destination LUN is not mapped to the
//! host groups (igroups) that the source LUN is mapped to (this host's),
//! it is mapped to them for the operation, and those mappings are removed
//! again afterwards, whether the clone worked or not.

use client::Client;

/// The igroups a LUN is mapped to.
pub fn maps_of(client: &Client, lun: &str) -> Result<Vec<String>, String> {
    Ok(client.lun(base_lun(lun))?.maps)
}

/// The LUN a `LUN@SNAPSHOT` name belongs to.
pub fn base_lun(name: &str) -> &str {
    name.split_once('@').map_or(name, |(lun, _)| lun)
}

/// The host groups `target` must gain to be reachable wherever `source` is.
pub fn missing_groups(source_maps: &[String], target_maps: &[String]) -> Vec<String> {
    let mut missing: Vec<String> = source_maps
        .iter()
        .filter(|g| !target_maps.contains(g))
        .cloned()
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

/// Mappings added to a LUN for one operation; `restore` removes them.
/// Dropped without `restore` (an early return), it restores anyway and
/// reports a failure on stderr.
pub struct BorrowedMaps<'a> {
    client: &'a Client,
    lun: String,
    added: Vec<String>,
}

impl<'a> BorrowedMaps<'a> {
    /// Maps `target` to the host groups of `source` it lacks.
    pub fn borrow(
        client: &'a Client,
        source: &str,
        target: &str,
    ) -> Result<BorrowedMaps<'a>, String> {
        let mut borrowed = BorrowedMaps {
            client,
            lun: target.to_string(),
            added: Vec::new(),
        };
        if base_lun(source) == target {
            return Ok(borrowed);
        }
        let missing = missing_groups(&maps_of(client, source)?, &maps_of(client, target)?);
        for group in missing {
            client.map_lun(target, &group).map_err(|e| {
                format!("cannot map LUN \"{target}\" to igroup \"{group}\" for the clone: {e}")
            })?;
            borrowed.added.push(group);
        }
        Ok(borrowed)
    }

    /// The host groups mapped for the operation.
    pub fn added(&self) -> &[String] {
        &self.added
    }

    /// Removes the mappings added, all of them even if one fails; the
    /// failures as one sentence with the commands that finish the job.
    pub fn restore(mut self) -> Result<(), String> {
        self.restore_all()
    }

    fn restore_all(&mut self) -> Result<(), String> {
        let mut failed = Vec::new();
        for group in std::mem::take(&mut self.added) {
            if let Err(e) = self.client.unmap_lun(&self.lun, &group) {
                failed.push((group, e));
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        Err(format!(
            "could not restore the mapping of LUN \"{}\": {}; remove it by hand with {}",
            self.lun,
            failed
                .iter()
                .map(|(g, e)| format!("igroup \"{g}\": {e}"))
                .collect::<Vec<_>>()
                .join("; "),
            failed
                .iter()
                .map(|(g, _)| format!("`blockfork lun unmap {} {g}`", self.lun))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

impl Drop for BorrowedMaps<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.restore_all() {
            eprintln!("error: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_to_borrow() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(missing_groups(&s(&["a", "b"]), &s(&["b", "c"])), s(&["a"]));
        assert_eq!(
            missing_groups(&s(&["b", "a", "a"]), &s(&[])),
            s(&["a", "b"])
        );
        assert!(missing_groups(&s(&[]), &s(&["c"])).is_empty());
        assert!(missing_groups(&s(&["x"]), &s(&["x"])).is_empty());
        assert_eq!(base_lun("vol0/db@nightly"), "vol0/db");
        assert_eq!(base_lun("vol0/db"), "vol0/db");
    }
}
