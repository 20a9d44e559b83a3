//! Lag alerts: a `mirror-lag` event when a mirror's recovery point falls
//! further behind than its threshold, and `mirror-lag-recovered` when it
//! catches up (issue 16).

use super::*;

impl Mirrors {
    /// Raises `mirror-lag` once when a mirror's recovery point is older
    /// than its alert threshold (`--lag-alert`; by default, for a scheduled
    /// mirror, [`LAG_ALERT_INTERVALS`] intervals plus a minute), and
    /// `mirror-lag-recovered` when it catches up. Checked every 5 s.
    pub(super) fn check_lag(&self) {
        {
            let mut last = self.lag_checked.lock();
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
                return;
            }
            *last = Some(Instant::now());
        }
        for m in self.list() {
            let Some(threshold) = m.lag_alert_secs else {
                continue;
            };
            if matches!(m.state, MirrorState::Broken | MirrorState::Reversed) {
                self.lagging.lock().remove(&m.name);
                continue;
            }
            // No common snapshot yet: the baseline's age is what counts.
            let lag = m.lag_secs.or_else(|| {
                m.transfer
                    .as_ref()
                    .map(|t| now_secs().saturating_sub(t.started))
            });
            let over = lag.is_some_and(|l| l > threshold);
            let was = self.lagging.lock().contains(&m.name);
            if over && !was {
                self.lagging.lock().insert(m.name.clone());
                self.engine.events().emit(
                    engine::Severity::Warning,
                    "mirror-lag",
                    &m.name,
                    format!(
                        "Mirror \"{}\" is {} s behind its source, over its alert threshold of {threshold} s{}.",
                        m.name,
                        lag.unwrap_or(0),
                        m.last_error
                            .as_deref()
                            .map(|e| format!("; last error: {e}"))
                            .unwrap_or_default()
                    ),
                );
            } else if !over && was {
                self.lagging.lock().remove(&m.name);
                self.engine.events().emit(
                    engine::Severity::Info,
                    "mirror-lag-recovered",
                    &m.name,
                    format!(
                        "Mirror \"{}\" caught up: {} s behind its source.",
                        m.name,
                        lag.unwrap_or(0)
                    ),
                );
            }
        }
    }
}
