//! W3C Trace Context: parsing `traceparent`/`tracestate` exactly as the specification asks, and ids.

/// A valid incoming trace context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// Each byte's value as a lower-case hex digit, 0xff where it is none: the parse runs for every
/// request that carries a context, and a table lookup per digit has no branch to mispredict.
static HEX_LOWER: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        table[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    table
};

fn hex_lower(s: &[u8], out: &mut [u8]) -> bool {
    if s.len() != out.len() * 2 {
        return false;
    }
    let mut invalid = 0u8;
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (high, low) = (
            HEX_LOWER[usize::from(pair[0])],
            HEX_LOWER[usize::from(pair[1])],
        );
        invalid |= high | low;
        *o = (high << 4) | (low & 0xf);
    }
    invalid & 0xf0 == 0
}

/// Parses one `traceparent` value; `None` means "invalid: start a new trace".
pub fn parse(value: &[u8]) -> Option<TraceContext> {
    let v = value.trim_ascii();
    let mut version = [0u8; 1];
    if v.len() < 55 || !hex_lower(&v[..2], &mut version) || v[2] != b'-' {
        return None;
    }
    if version[0] == 0xff {
        return None;
    }
    // Version 00 has exactly four fields; a later version may append more after the flags.
    if version[0] == 0 && v.len() != 55 {
        return None;
    }
    if version[0] != 0 && v.len() > 55 && v[55] != b'-' {
        return None;
    }
    let (mut trace_id, mut parent_id, mut flags) = ([0u8; 16], [0u8; 8], [0u8; 1]);
    if !hex_lower(&v[3..35], &mut trace_id)
        || v[35] != b'-'
        || !hex_lower(&v[36..52], &mut parent_id)
        || v[52] != b'-'
        || !hex_lower(&v[53..55], &mut flags)
    {
        return None;
    }
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceContext {
        trace_id,
        parent_id,
        flags: flags[0],
    })
}

pub fn format(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> String {
    format!("00-{}-{}-{:02x}", hex(trace_id), hex(span_id), flags)
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// A CSPRNG's bytes: the thread's ChaCha12 generator, seeded and periodically reseeded from the
/// operating system. (The kernel's own generator, even 4 KiB a call, cost ~90 ns a span here.)
fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut out);
    out
}

/// Random non-zero ids from a CSPRNG.
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id = random::<16>();
        if id != [0; 16] {
            return id;
        }
    }
}

pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = random::<8>();
        if id != [0; 8] {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_header_parses() {
        let c = parse(GOOD.as_bytes()).expect("valid");
        assert_eq!(hex(&c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&c.parent_id), "00f067aa0ba902b7");
        assert_eq!(c.flags, 1);
        assert!(parse(format!("  {GOOD}\t").as_bytes()).is_some());
        assert_eq!(
            parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03").map(|c| c.flags),
            Some(3)
        );
    }

    #[test]
    fn invalid_headers_are_rejected() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn every_pair_of_bytes_decodes_as_the_specification_reads_it() {
        let digit = |c: u8| (c as char).to_digit(16).filter(|_| !c.is_ascii_uppercase());
        for high in 0..=255u8 {
            for low in 0..=255u8 {
                let mut out = [0u8; 1];
                let ok = hex_lower(&[high, low], &mut out);
                match (digit(high), digit(low)) {
                    (Some(h), Some(l)) => {
                        assert!(ok, "{high:#x} {low:#x}");
                        assert_eq!(u32::from(out[0]), h * 16 + l);
                    }
                    _ => assert!(!ok, "{high:#x} {low:#x} is not lower-case hex"),
                }
            }
        }
    }

    #[test]
    fn future_versions_keep_the_first_four_fields() {
        let c = parse(b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever")
            .expect("future version");
        assert_eq!(hex(&c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(parse(b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x").is_none());
    }

    #[test]
    fn ids_are_random_and_formatted() {
        assert_ne!(new_trace_id(), new_trace_id());
        let s = format(&[1; 16], &[2; 8], 1);
        assert_eq!(parse(s.as_bytes()).expect("round trip").parent_id, [2; 8]);
    }
}
