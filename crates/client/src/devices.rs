//! A pool on devices: its devices, the device job, the scrub, and LUNs
//! moving to another redundancy class.

use super::{parse, with_query, Client, Result};
use wire::*;

impl Client {
    /// The pool's devices (empty for a pool on one data file).
    pub fn pool_devices(&self) -> Result<Vec<DeviceInfo>> {
        self.get("/pool/devices")
    }

    pub fn add_device(&self, body: &AddDevice) -> Result<DeviceInfo> {
        self.send("POST", "/pool/devices", body)
    }

    pub fn remove_device(&self, path: &str) -> Result<MoveInfo> {
        let at = with_query("/pool/devices", &[("path", Some(path))]);
        self.call("DELETE", &at, None).and_then(parse)
    }

    pub fn replace_device(&self, body: &ReplaceDevice) -> Result<MoveInfo> {
        self.send("POST", "/pool/devices/replace", body)
    }

    pub fn clear_device(&self, path: &str) -> Result<DeviceInfo> {
        let body = DevicePath { path: path.into() };
        self.send("POST", "/pool/devices/clear", &body)
    }

    /// Moves a LUN into another redundancy class, in the background.
    pub fn relayout(&self, lun: &str, redundancy: &str) -> Result<LunInfo> {
        let body = Relayout {
            lun: lun.into(),
            redundancy: redundancy.into(),
        };
        self.send("POST", "/relayouts", &body)
    }

    pub fn device_job(&self) -> Result<MoveInfo> {
        self.get("/pool/devices/job")
    }

    pub fn scrub_status(&self) -> Result<ScrubInfo> {
        self.get("/pool/scrub")
    }

    pub fn scrub_start(&self) -> Result<ScrubInfo> {
        self.post_empty("/pool/scrub/start")
    }

    pub fn scrub_stop(&self) -> Result<ScrubInfo> {
        self.post_empty("/pool/scrub/stop")
    }
}
