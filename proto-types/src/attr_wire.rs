//! The wire form of a span's attribute list: one typed slot per key seam emits, the rest listed.
//!
//! As a list of `(AttrKey, AttrValue)` pairs every attribute cost bincode two enum decodes
//! (~43 ns a pair here, ~0.55 µs of a span's ~1.3 µs decode in the exporter). In a slot the key
//! is the slot's position and the value's type is fixed, so an attribute costs an option tag and
//! its value. In memory the list is unchanged; a value that does not fit its key's slot (an
//! unknown method as text, a second value for a key) travels in the list of the rest.
//! [`AttrsView`] reads the same bytes in place: its text is borrowed from the received frame.

use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::msg::{AttrKey, AttrValue, Known};

/// The one table of slots: key, slot, the slot's type (`T` is the text type: borrowed when
/// sending, owned when receiving), how a value is read into it, and the variant it comes back as.
macro_rules! slots {
    ($($key:ident => $slot:ident: $ty:ty, $read:ident, $variant:ident;)*) => {
        /// Slots in a fixed order; `R` is a pair of the rest, borrowed or owned like `T`.
        #[derive(Debug, Serialize, Deserialize)]
        struct Slots<T, R> {
            $($slot: Option<$ty>,)*
            rest: Vec<R>,
        }

        pub fn serialize<S: Serializer>(
            attrs: &[(AttrKey, AttrValue)],
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            let mut s = Slots::<&str, &(AttrKey, AttrValue)> {
                $($slot: None,)*
                rest: Vec::new(),
            };
            for pair in attrs {
                let (k, v) = pair;
                let placed = match k {
                    $(AttrKey::$key => fill(&mut s.$slot, $read(v)),)*
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
            let s = Slots::<String, (AttrKey, AttrValue)>::deserialize(deserializer)?;
            let mut attrs = Vec::with_capacity(16 + s.rest.len());
            $(if let Some(v) = s.$slot {
                attrs.push((AttrKey::$key, AttrValue::$variant(v)));
            })*
            attrs.extend(s.rest);
            Ok(attrs)
        }

        /// The keys of the slots, in slot order: a view lends them as `&'static AttrKey`.
        static SLOT_KEYS: [AttrKey; [$(stringify!($slot)),*].len()] = [$(AttrKey::$key),*];

        impl<'a> AttrsView<'a> {
            fn slot_values(&self) -> [Option<AttrRef<'a>>; SLOT_KEYS.len()] {
                [$(self.0.$slot.map(AttrRef::$variant)),*]
            }
        }
    };
}

slots! {
    HttpRequestMethod => method: Known, known, Known;
    HttpResponseStatusCode => status_code: i64, int, Int;
    UrlPath => path: T, text, Str;
    UrlQuery => query: T, text, Str;
    UrlScheme => scheme: Known, known, Known;
    UrlFull => full: T, text, Str;
    NetworkProtocolVersion => protocol_version: Known, known, Known;
    NetworkPeerAddress => peer_address: IpAddr, ip, Ip;
    NetworkPeerPort => peer_port: i64, int, Int;
    HttpRequestBodySize => request_body_size: i64, int, Int;
    HttpResponseBodySize => response_body_size: i64, int, Int;
    ServerAddress => server_address: T, text, Str;
    ServerPort => server_port: i64, int, Int;
    ClientAddress => client_address: IpAddr, ip, Ip;
    ThreadId => thread_id: i64, int, Int;
    SeamCapture => capture: Known, known, Known;
}

/// A span's attributes as they lie in a received frame: its text is borrowed, nothing is allocated
/// unless a value fits no slot. They come in the order the owned list is decoded in.
#[derive(Debug, Deserialize)]
pub struct AttrsView<'a>(#[serde(borrow)] Slots<&'a str, (AttrKey, AttrValue)>);

/// One attribute value of a view; text borrowed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttrRef<'a> {
    Str(&'a str),
    Ip(IpAddr),
    Known(Known),
    Int(i64),
    Bool(bool),
}

impl<'a> AttrRef<'a> {
    pub fn of(v: &'a AttrValue) -> Self {
        match v {
            AttrValue::Str(s) => AttrRef::Str(s),
            AttrValue::Ip(a) => AttrRef::Ip(*a),
            AttrValue::Known(k) => AttrRef::Known(*k),
            AttrValue::Int(i) => AttrRef::Int(*i),
            AttrValue::Bool(b) => AttrRef::Bool(*b),
        }
    }

    pub fn to_owned_value(self) -> AttrValue {
        match self {
            AttrRef::Str(s) => AttrValue::Str(s.to_string()),
            AttrRef::Ip(a) => AttrValue::Ip(a),
            AttrRef::Known(k) => AttrValue::Known(k),
            AttrRef::Int(i) => AttrValue::Int(i),
            AttrRef::Bool(b) => AttrValue::Bool(b),
        }
    }

    /// The text of a string-like value.
    pub fn as_str(self) -> Option<&'a str> {
        match self {
            AttrRef::Str(s) => Some(s),
            AttrRef::Known(k) => Some(k.as_str()),
            _ => None,
        }
    }
}

impl<'a> AttrsView<'a> {
    /// Every attribute, slots first, then the rest in the order they were sent.
    pub fn iter(&self) -> impl Iterator<Item = (&AttrKey, AttrRef<'_>)> + '_ {
        SLOT_KEYS
            .iter()
            .zip(self.slot_values())
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .chain(self.0.rest.iter().map(|(k, v)| (k, AttrRef::of(v))))
    }

    /// The first value under the key named `key`.
    pub fn get(&self, key: &str) -> Option<AttrRef<'_>> {
        self.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
    }

    pub fn to_owned_list(&self) -> Vec<(AttrKey, AttrValue)> {
        self.iter()
            .map(|(k, v)| (k.clone(), v.to_owned_value()))
            .collect()
    }
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
