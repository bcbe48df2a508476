//! The wire form of a span's attribute list: one typed slot per key seam emits, the rest listed.
//!
//! As a list of `(AttrKey, AttrValue)` pairs every attribute cost bincode two enum decodes
//! (~43 ns a pair here, ~0.55 µs of a span's ~1.3 µs decode in the exporter). In a slot the key
//! is the slot's position and the value's type is fixed, so an attribute costs an option tag and
//! its value. In memory the list is unchanged; a value that does not fit its key's slot (an
//! unknown method as text, a second value for a key) travels in the list of the rest.

use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::msg::{AttrKey, AttrValue, Known};

/// The slots, borrowed from the list being sent.
#[derive(Default, Serialize)]
struct Slots<'a> {
    method: Option<Known>,
    status_code: Option<i64>,
    path: Option<&'a str>,
    query: Option<&'a str>,
    scheme: Option<Known>,
    full: Option<&'a str>,
    protocol_version: Option<Known>,
    peer_address: Option<IpAddr>,
    peer_port: Option<i64>,
    request_body_size: Option<i64>,
    response_body_size: Option<i64>,
    server_address: Option<&'a str>,
    server_port: Option<i64>,
    client_address: Option<IpAddr>,
    thread_id: Option<i64>,
    capture: Option<Known>,
    rest: Vec<&'a (AttrKey, AttrValue)>,
}

/// The same slots as they arrive (field for field the layout of [`Slots`]).
#[derive(Deserialize)]
struct OwnedSlots {
    method: Option<Known>,
    status_code: Option<i64>,
    path: Option<String>,
    query: Option<String>,
    scheme: Option<Known>,
    full: Option<String>,
    protocol_version: Option<Known>,
    peer_address: Option<IpAddr>,
    peer_port: Option<i64>,
    request_body_size: Option<i64>,
    response_body_size: Option<i64>,
    server_address: Option<String>,
    server_port: Option<i64>,
    client_address: Option<IpAddr>,
    thread_id: Option<i64>,
    capture: Option<Known>,
    rest: Vec<(AttrKey, AttrValue)>,
}

/// Puts `value` in `slot` if the slot is free; says whether it did.
fn fill<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
    match value {
        Some(v) if slot.is_none() => {
            *slot = Some(v);
            true
        }
        _ => false,
    }
}

fn known(v: &AttrValue) -> Option<Known> {
    match v {
        AttrValue::Known(k) => Some(*k),
        _ => None,
    }
}

fn int(v: &AttrValue) -> Option<i64> {
    match v {
        AttrValue::Int(i) => Some(*i),
        _ => None,
    }
}

fn text(v: &AttrValue) -> Option<&str> {
    match v {
        AttrValue::Str(s) => Some(s),
        _ => None,
    }
}

fn ip(v: &AttrValue) -> Option<IpAddr> {
    match v {
        AttrValue::Ip(a) => Some(*a),
        _ => None,
    }
}

pub fn serialize<S: Serializer>(
    attrs: &[(AttrKey, AttrValue)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut s = Slots::default();
    for pair in attrs {
        let (k, v) = pair;
        let placed = match k {
            AttrKey::HttpRequestMethod => fill(&mut s.method, known(v)),
            AttrKey::HttpResponseStatusCode => fill(&mut s.status_code, int(v)),
            AttrKey::UrlPath => fill(&mut s.path, text(v)),
            AttrKey::UrlQuery => fill(&mut s.query, text(v)),
            AttrKey::UrlScheme => fill(&mut s.scheme, known(v)),
            AttrKey::UrlFull => fill(&mut s.full, text(v)),
            AttrKey::NetworkProtocolVersion => fill(&mut s.protocol_version, known(v)),
            AttrKey::NetworkPeerAddress => fill(&mut s.peer_address, ip(v)),
            AttrKey::NetworkPeerPort => fill(&mut s.peer_port, int(v)),
            AttrKey::HttpRequestBodySize => fill(&mut s.request_body_size, int(v)),
            AttrKey::HttpResponseBodySize => fill(&mut s.response_body_size, int(v)),
            AttrKey::ServerAddress => fill(&mut s.server_address, text(v)),
            AttrKey::ServerPort => fill(&mut s.server_port, int(v)),
            AttrKey::ClientAddress => fill(&mut s.client_address, ip(v)),
            AttrKey::ThreadId => fill(&mut s.thread_id, int(v)),
            AttrKey::SeamCapture => fill(&mut s.capture, known(v)),
            AttrKey::Other(_) => false,
        };
        if !placed {
            s.rest.push(pair);
        }
    }
    s.serialize(serializer)
}

pub fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<(AttrKey, AttrValue)>, D::Error> {
    let s = OwnedSlots::deserialize(deserializer)?;
    let mut attrs = Vec::with_capacity(16 + s.rest.len());
    let mut put = |k: AttrKey, v: Option<AttrValue>| {
        if let Some(v) = v {
            attrs.push((k, v));
        }
    };
    put(AttrKey::HttpRequestMethod, s.method.map(AttrValue::Known));
    put(
        AttrKey::HttpResponseStatusCode,
        s.status_code.map(AttrValue::Int),
    );
    put(AttrKey::UrlPath, s.path.map(AttrValue::Str));
    put(AttrKey::UrlQuery, s.query.map(AttrValue::Str));
    put(AttrKey::UrlScheme, s.scheme.map(AttrValue::Known));
    put(AttrKey::UrlFull, s.full.map(AttrValue::Str));
    put(
        AttrKey::NetworkProtocolVersion,
        s.protocol_version.map(AttrValue::Known),
    );
    put(
        AttrKey::NetworkPeerAddress,
        s.peer_address.map(AttrValue::Ip),
    );
    put(AttrKey::NetworkPeerPort, s.peer_port.map(AttrValue::Int));
    put(
        AttrKey::HttpRequestBodySize,
        s.request_body_size.map(AttrValue::Int),
    );
    put(
        AttrKey::HttpResponseBodySize,
        s.response_body_size.map(AttrValue::Int),
    );
    put(AttrKey::ServerAddress, s.server_address.map(AttrValue::Str));
    put(AttrKey::ServerPort, s.server_port.map(AttrValue::Int));
    put(AttrKey::ClientAddress, s.client_address.map(AttrValue::Ip));
    put(AttrKey::ThreadId, s.thread_id.map(AttrValue::Int));
    put(AttrKey::SeamCapture, s.capture.map(AttrValue::Known));
    attrs.extend(s.rest);
    Ok(attrs)
}

#[cfg(test)]
mod tests {
    use crate::codec;
    use crate::msg::{AttrKey, AttrValue, Known};

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Carrier {
        #[serde(with = "super")]
        attrs: Vec<(AttrKey, AttrValue)>,
    }

    fn round_trip(attrs: Vec<(AttrKey, AttrValue)>) -> Vec<(AttrKey, AttrValue)> {
        let bytes = codec::encode(&Carrier { attrs }, 1 << 20).expect("encodes");
        codec::decode::<Carrier>(&bytes).expect("decodes").attrs
    }

    #[test]
    fn a_span_s_attributes_come_back_in_slot_order() {
        let sent = vec![
            (AttrKey::HttpRequestMethod, AttrValue::Known(Known::Get)),
            (AttrKey::HttpResponseStatusCode, AttrValue::Int(503)),
            (AttrKey::UrlPath, AttrValue::Str("/a/b".into())),
            (AttrKey::UrlQuery, AttrValue::Str("x=1".into())),
            (AttrKey::UrlScheme, AttrValue::Known(Known::Https)),
            (AttrKey::UrlFull, AttrValue::Str("https://[::1]:1/a".into())),
            (
                AttrKey::NetworkProtocolVersion,
                AttrValue::Known(Known::Http10),
            ),
            (
                AttrKey::NetworkPeerAddress,
                AttrValue::Ip("::1".parse().expect("ip")),
            ),
            (AttrKey::NetworkPeerPort, AttrValue::Int(40000)),
            (AttrKey::HttpRequestBodySize, AttrValue::Int(0)),
            (AttrKey::HttpResponseBodySize, AttrValue::Int(5 << 20)),
            (AttrKey::ServerAddress, AttrValue::Str("svc".into())),
            (AttrKey::ServerPort, AttrValue::Int(8443)),
            (AttrKey::ClientAddress, AttrValue::Ip([10, 1, 2, 3].into())),
            (AttrKey::ThreadId, AttrValue::Int(77)),
            (AttrKey::SeamCapture, AttrValue::Known(Known::Tls)),
        ];
        assert_eq!(round_trip(sent.clone()), sent);
        let mut shuffled = sent.clone();
        shuffled.reverse();
        assert_eq!(round_trip(shuffled), sent);
        assert_eq!(round_trip(Vec::new()), Vec::new());
    }

    #[test]
    fn what_fits_no_slot_travels_in_the_rest_in_order() {
        let sent = vec![
            (AttrKey::HttpRequestMethod, AttrValue::Str("PURGE".into())),
            (AttrKey::UrlPath, AttrValue::Str("/first".into())),
            (AttrKey::UrlPath, AttrValue::Str("/second".into())),
            (
                AttrKey::Other("k8s.pod.name".into()),
                AttrValue::Str("p".into()),
            ),
            (AttrKey::ServerPort, AttrValue::Bool(true)),
            (AttrKey::Other(String::new()), AttrValue::Int(-1)),
        ];
        let got = round_trip(sent.clone());
        assert_eq!(
            got,
            vec![
                (AttrKey::UrlPath, AttrValue::Str("/first".into())),
                (AttrKey::HttpRequestMethod, AttrValue::Str("PURGE".into())),
                (AttrKey::UrlPath, AttrValue::Str("/second".into())),
                (
                    AttrKey::Other("k8s.pod.name".into()),
                    AttrValue::Str("p".into())
                ),
                (AttrKey::ServerPort, AttrValue::Bool(true)),
                (AttrKey::Other(String::new()), AttrValue::Int(-1)),
            ]
        );
    }

    #[test]
    fn truncated_slots_are_an_error() {
        let bytes = codec::encode(
            &Carrier {
                attrs: vec![(AttrKey::UrlPath, AttrValue::Str("/x".into()))],
            },
            1 << 20,
        )
        .expect("encodes");
        for cut in 0..bytes.len() {
            assert!(
                codec::decode::<Carrier>(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }
}
