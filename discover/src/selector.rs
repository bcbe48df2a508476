//! Selectors: which processes to instrument, by executable glob, listening port or pid.

/// Inclusive port range.
pub type PortRange = (u16, u16);

#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// Overrides the service name of the processes this selector picks.
    pub service_name: Option<String>,
    pub exe: Option<glob::Pattern>,
    pub ports: Vec<PortRange>,
    pub pids: Vec<u32>,
    /// Overrides ctxprop's `context_propagation` for the processes this selector picks.
    pub propagation: Option<seam_proto::msg::Propagation>,
}

/// What discover knows of a candidate process when it matches selectors.
#[derive(Debug, Clone, Default)]
pub struct Candidate<'a> {
    pub pid: u32,
    pub exe: &'a str,
    pub listen_ports: &'a [u16],
}

impl Selector {
    /// Every criterion the selector sets must hold.
    pub fn matches(&self, c: &Candidate<'_>) -> bool {
        let exe_ok = self.exe.as_ref().is_none_or(|g| g.matches(c.exe));
        let port_ok = self.ports.is_empty()
            || c.listen_ports
                .iter()
                .any(|p| self.ports.iter().any(|(lo, hi)| (lo..=hi).contains(&p)));
        let pid_ok = self.pids.is_empty() || self.pids.contains(&c.pid);
        exe_ok && port_ok && pid_ok
    }

    pub fn needs_ports(&self) -> bool {
        !self.ports.is_empty()
    }
}

/// Parses `80,8000-8999`.
pub fn parse_ports(s: &str) -> Option<Vec<PortRange>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let p = part.parse().ok()?;
                (p, p)
            }
        };
        if lo > hi || lo == 0 {
            return None;
        }
        out.push((lo, hi));
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse() {
        assert_eq!(
            parse_ports("80, 8000-8999"),
            Some(vec![(80, 80), (8000, 8999)])
        );
        assert_eq!(parse_ports("x"), None);
        assert_eq!(parse_ports("0"), None);
        assert_eq!(parse_ports(""), None);
    }

    #[test]
    fn all_set_criteria_must_hold() {
        let s = Selector {
            exe: Some(glob::Pattern::new("*/python3*").expect("glob")),
            ports: vec![(8000, 8999)],
            ..Selector::default()
        };
        let c = Candidate {
            pid: 1,
            exe: "/usr/bin/python3.11",
            listen_ports: &[8080],
        };
        assert!(s.matches(&c));
        assert!(!s.matches(&Candidate {
            listen_ports: &[9000],
            ..c.clone()
        }));
        assert!(!s.matches(&Candidate {
            exe: "/usr/bin/node",
            ..c
        }));
    }
}
