//! OpenTelemetry samplers (`OTEL_TRACES_SAMPLER`): one decision for the correlator and the kernel side.

/// The OpenTelemetry samplers, as `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` name them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    /// Follow a parent's sampled flag; decide roots with the inner sampler.
    ParentBased(RootSampler),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RootSampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error("OTEL_TRACES_SAMPLER={0:?} is not one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio")]
    Unknown(String),
    #[error("OTEL_TRACES_SAMPLER_ARG={0:?} is not a ratio between 0 and 1")]
    Ratio(String),
}

/// The sampled bit of W3C trace flags.
pub const SAMPLED: u8 = 0x01;

/// Same answer for the same trace id everywhere: the low 8 bytes against the ratio's share.
fn ratio_keeps(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let x = u64::from_be_bytes(low) >> 1; // 63 bits, as OpenTelemetry SDKs compare
    (x as f64) < ratio * (1u64 << 63) as f64
}

impl RootSampler {
    fn keeps(self, trace_id: &[u8; 16]) -> bool {
        match self {
            RootSampler::AlwaysOn => true,
            RootSampler::AlwaysOff => false,
            RootSampler::TraceIdRatio(r) => ratio_keeps(trace_id, r),
        }
    }
}

impl Default for Sampler {
    /// The specification's default.
    fn default() -> Self {
        Sampler::ParentBased(RootSampler::AlwaysOn)
    }
}

impl Sampler {
    /// Reads the standard variables (absent → parentbased_always_on; ratio default 1.0).
    pub fn from_env(sampler: Option<&str>, arg: Option<&str>) -> Result<Self, SamplerError> {
        let ratio = || -> Result<f64, SamplerError> {
            match arg.map(str::trim).filter(|a| !a.is_empty()) {
                None => Ok(1.0),
                Some(a) => a
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| SamplerError::Ratio(a.to_string())),
            }
        };
        Ok(
            match sampler.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
                None | Some("") | Some("parentbased_always_on") => {
                    Sampler::ParentBased(RootSampler::AlwaysOn)
                }
                Some("always_on") => Sampler::AlwaysOn,
                Some("always_off") => Sampler::AlwaysOff,
                Some("traceidratio") => Sampler::TraceIdRatio(ratio()?),
                Some("parentbased_always_off") => Sampler::ParentBased(RootSampler::AlwaysOff),
                Some("parentbased_traceidratio") => {
                    Sampler::ParentBased(RootSampler::TraceIdRatio(ratio()?))
                }
                Some(other) => return Err(SamplerError::Unknown(other.to_string())),
            },
        )
    }

    /// The sampled bit for a trace entering this host: a new root (`parent` None) or a
    /// remote parent's flags.
    pub fn decide(&self, trace_id: &[u8; 16], parent_flags: Option<u8>) -> bool {
        match (*self, parent_flags) {
            (Sampler::AlwaysOn, _) => true,
            (Sampler::AlwaysOff, _) => false,
            (Sampler::TraceIdRatio(r), _) => ratio_keeps(trace_id, r),
            (Sampler::ParentBased(_), Some(flags)) => flags & SAMPLED != 0,
            (Sampler::ParentBased(root), None) => root.keeps(trace_id),
        }
    }
}

impl Sampler {
    /// The same decision as a rule the eBPF side applies to a trace id: keep when the low 8
    /// bytes (big-endian) shifted right by one are below the threshold; `follow_parent` when a
    /// parent's sampled flag decides instead.
    pub fn kernel_rule(&self) -> KernelRule {
        let threshold = |r: f64| -> u64 {
            if r >= 1.0 {
                u64::MAX
            } else if r <= 0.0 {
                0
            } else {
                (r * (1u64 << 63) as f64) as u64
            }
        };
        let root = |r: RootSampler| match r {
            RootSampler::AlwaysOn => u64::MAX,
            RootSampler::AlwaysOff => 0,
            RootSampler::TraceIdRatio(x) => threshold(x),
        };
        match *self {
            Sampler::AlwaysOn => KernelRule {
                threshold: u64::MAX,
                follow_parent: false,
            },
            Sampler::AlwaysOff => KernelRule {
                threshold: 0,
                follow_parent: false,
            },
            Sampler::TraceIdRatio(r) => KernelRule {
                threshold: threshold(r),
                follow_parent: false,
            },
            Sampler::ParentBased(r) => KernelRule {
                threshold: root(r),
                follow_parent: true,
            },
        }
    }
}

/// A sampler as the eBPF side applies it (see `Sampler::kernel_rule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelRule {
    pub threshold: u64,
    pub follow_parent: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_rule_decides_like_the_sampler() {
        let ids: Vec<[u8; 16]> = (0u64..2000)
            .map(|i| {
                let mut t = [0u8; 16];
                t[8..].copy_from_slice(&(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_be_bytes());
                t
            })
            .collect();
        for s in [
            Sampler::AlwaysOn,
            Sampler::AlwaysOff,
            Sampler::TraceIdRatio(0.3),
            Sampler::ParentBased(RootSampler::TraceIdRatio(0.5)),
            Sampler::ParentBased(RootSampler::AlwaysOff),
        ] {
            let rule = s.kernel_rule();
            for t in &ids {
                let mut low = [0u8; 8];
                low.copy_from_slice(&t[8..]);
                let kernel_keeps = (u64::from_be_bytes(low) >> 1) < rule.threshold;
                assert_eq!(kernel_keeps, s.decide(t, None), "{s:?}");
            }
            assert_eq!(rule.follow_parent, matches!(s, Sampler::ParentBased(_)));
        }
    }
}
