//! Service identity of a target from its own environment, as OpenTelemetry SDKs would resolve it.

use std::path::Path;

use seam_proto::msg::ServiceIdentity;

/// Decodes `%XX` escapes in an `OTEL_RESOURCE_ATTRIBUTES` value (W3C Baggage style).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_resource_attributes(v: &str) -> Vec<(String, String)> {
    v.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), percent_decode(v.trim())))
        })
        .collect()
}

/// Order: the selector's name, then `OTEL_SERVICE_NAME`, then `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`, then the executable's file name.
pub fn resolve(
    pid: u32,
    exe: &Path,
    environ: &[(String, String)],
    selector_name: Option<&str>,
    host_name: &str,
) -> ServiceIdentity {
    let get = |k: &str| {
        environ
            .iter()
            .find(|(ek, _)| ek == k)
            .map(|(_, v)| v.as_str())
    };
    let mut extra = get("OTEL_RESOURCE_ATTRIBUTES")
        .map(parse_resource_attributes)
        .unwrap_or_default();
    let take = |extra: &mut Vec<(String, String)>, key: &str| {
        extra
            .iter()
            .position(|(k, _)| k == key)
            .map(|i| extra.remove(i).1)
    };
    let attr_name = take(&mut extra, "service.name");
    let namespace = take(&mut extra, "service.namespace");
    let attr_instance = take(&mut extra, "service.instance.id");
    let executable_name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let service_name = selector_name
        .map(str::to_string)
        .or_else(|| {
            get("OTEL_SERVICE_NAME")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        })
        .or(attr_name)
        .unwrap_or_else(|| executable_name.clone());
    ServiceIdentity {
        service_name,
        service_namespace: namespace,
        instance_id: attr_instance.unwrap_or_else(|| format!("{host_name}-{pid}")),
        pid,
        executable_name,
        executable_path: exe.display().to_string(),
        host_name: host_name.to_string(),
        extra,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn name_resolution_order() {
        let exe = Path::new("/usr/bin/python3.11");
        let e = env(&[
            ("OTEL_SERVICE_NAME", "front"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=other,deployment.environment=prod%20eu",
            ),
        ]);
        let id = resolve(5, exe, &e, None, "h");
        assert_eq!(id.service_name, "front");
        assert_eq!(
            id.extra,
            vec![("deployment.environment".to_string(), "prod eu".to_string())]
        );
        assert_eq!(
            resolve(5, exe, &e, Some("picked"), "h").service_name,
            "picked"
        );
        let e = env(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=back,service.namespace=shop",
        )]);
        let id = resolve(5, exe, &e, None, "h");
        assert_eq!(id.service_name, "back");
        assert_eq!(id.service_namespace.as_deref(), Some("shop"));
        assert_eq!(resolve(5, exe, &[], None, "h").service_name, "python3.11");
        assert_eq!(resolve(5, exe, &[], None, "h").instance_id, "h-5");
    }

    #[test]
    fn percent_decoding_is_bounded() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%41b"), "Ab");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
