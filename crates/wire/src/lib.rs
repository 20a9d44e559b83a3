//! The types that cross the REST API, shared by the server (`api`) and its
//! clients (`client`: the CLI, tests, benchmarks, mirror peers) so that the
//! two cannot drift. Requests refuse unknown fields; responses mirror the
//! engine's info types field for field (the conversions are behind the
//! `engine` feature, which only the server turns on).
//!
//! Sizes are always whole numbers of bytes (`u64`): units like "10G" are the
//! CLI's business, and a string where a size belongs is a 400 that says so.
//!
//! `responses` are what the server answers, `requests` what it accepts,
//! `sizes` how request sizes are parsed (and refused).

mod mirror;
mod observe;
mod requests;
mod responses;
mod sizes;
pub mod stream;

pub use mirror::*;
pub use observe::*;
pub use requests::*;
pub use responses::*;

/// Most snapshots one batch request (or one group snapshot) may take.
pub const BATCH_SNAPSHOTS_MAX: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_numbers() {
        let ok: CreateLun = serde_json::from_str(r#"{"name":"a","size":4096}"#).unwrap();
        assert_eq!(ok.size, 4096);
        for bad in [r#""10G""#, "-1", "1.5", "null", "true", "[1]", "{}"] {
            let body = format!(r#"{{"name":"a","size":{bad}}}"#);
            let err = serde_json::from_str::<CreateLun>(&body).unwrap_err();
            assert!(
                err.to_string().contains("whole number of bytes"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn snapshot_request_shapes() {
        let one: CreateSnapshots = serde_json::from_str(r#"{"lun":"a","name":"s"}"#).unwrap();
        assert!(matches!(one, CreateSnapshots::One(_)));
        let batch: CreateSnapshots =
            serde_json::from_str(r#"{"snapshots":[{"lun":"a","name":"s"}]}"#).unwrap();
        assert!(matches!(batch, CreateSnapshots::Batch(b) if b.snapshots.len() == 1));
        let err =
            serde_json::from_str::<CreateSnapshots>(r#"{"lun":"a","name":"s","x":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `x`"), "{err}");
        let err =
            serde_json::from_str::<CreateSnapshots>(r#"{"snapshots":[{"lun":"a"}]}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `name`"), "{err}");
    }
}
