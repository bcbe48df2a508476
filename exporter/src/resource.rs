//! OpenTelemetry resource of a target service, from the identity discover resolved.

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use seam_proto::msg::ServiceIdentity;

pub fn of(id: &ServiceIdentity) -> Resource {
    let mut attrs = vec![
        KeyValue::new("service.name", id.service_name.clone()),
        KeyValue::new("service.instance.id", id.instance_id.clone()),
        KeyValue::new("host.name", id.host_name.clone()),
        KeyValue::new("process.pid", i64::from(id.pid)),
        KeyValue::new("process.executable.name", id.executable_name.clone()),
        KeyValue::new("process.executable.path", id.executable_path.clone()),
        KeyValue::new("telemetry.sdk.name", "seam"),
        KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("telemetry.distro.name", "seam"),
    ];
    if let Some(ns) = &id.service_namespace {
        attrs.push(KeyValue::new("service.namespace", ns.clone()));
    }
    for (k, v) in &id.extra {
        attrs.push(KeyValue::new(k.clone(), v.clone()));
    }
    Resource::builder_empty().with_attributes(attrs).build()
}
