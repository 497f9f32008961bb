//! The one mapping from a service's [`Status`] to its D-Bus properties: the bus getters
//! read from it, `PropertiesChanged` is computed from it, and `unikernelctl` names the
//! JSON fields of `status --json` by it. A new property is a `Status` field, a row here,
//! and a getter in `unikernel.rs` (which D-Bus introspection needs).
use std::collections::HashMap;

use zbus::zvariant::{OwnedValue, Value};

use crate::status::Status;

pub const INTERFACE: &str = "org.unikerneld1.Unikernel";

/// (D-Bus property name, JSON field name), in the order [`values`] returns them.
pub const PROPERTIES: [(&str, &str); 18] = [
    ("Name", "name"),
    ("State", "state"),
    ("Held", "held"),
    ("Pid", "pid"),
    ("Address", "address"),
    ("BootTimeUSec", "boot_time_usec"),
    ("Restarts", "restarts"),
    ("LastError", "last_error"),
    ("SourceFile", "source_file"),
    ("SourceLine", "source_line"),
    ("SpecHash", "spec_hash"),
    ("ExposedPorts", "exposed_ports"),
    ("MemoryBytes", "memory_bytes"),
    ("StartedUSec", "started_usec"),
    ("Wakes", "wakes"),
    ("LastWakeUSec", "last_wake_usec"),
    ("SnapshotBytes", "snapshot_bytes"),
    ("StandbySettings", "standby_settings"),
];

/// The value of every property of `s`, in [`PROPERTIES`] order. "None" is the property's
/// zero value ("" or 0), as systemd does.
pub fn values(s: &Status) -> [Value<'static>; 18] {
    [
        Value::from(s.name.clone()),
        Value::from(s.state.as_str()),
        Value::from(s.held),
        Value::from(s.pid.unwrap_or(0)),
        Value::from(s.address.map(|a| a.to_string()).unwrap_or_default()),
        Value::from(s.boot_ms.map(|ms| (ms * 1000.0) as u64).unwrap_or(0)),
        Value::from(s.restarts),
        Value::from(s.last_error.clone().unwrap_or_default()),
        Value::from(s.source_file.display().to_string()),
        Value::from(u32::try_from(s.source_line).unwrap_or(u32::MAX)),
        Value::from(s.spec_hash.clone()),
        Value::from(s.exposed.clone()),
        Value::from(s.memory_bytes),
        Value::from(s.started_unix_ms.map(|ms| ms.saturating_mul(1000)).unwrap_or(0)),
        Value::from(s.wakes),
        Value::from(s.last_wake_ms.map(|ms| (ms * 1000.0) as u64).unwrap_or(0)),
        Value::from(s.snapshot_bytes.unwrap_or(0)),
        Value::from(s.standby.clone().unwrap_or_default()),
    ]
}

/// One property of `s` by its D-Bus name, converted to what its getter returns.
pub fn get<T: TryFrom<OwnedValue>>(s: &Status, name: &str) -> Option<T> {
    let i = PROPERTIES.iter().position(|(n, _)| *n == name)?;
    let v = values(s).into_iter().nth(i)?;
    T::try_from(OwnedValue::try_from(v).ok()?).ok()
}

/// The properties that differ between `old` (None: all of them) and `new`, except
/// `State`, which the caller replays transition by transition.
pub fn changed(old: Option<&Status>, new: &Status) -> HashMap<&'static str, Value<'static>> {
    let before = old.map(values);
    PROPERTIES
        .iter()
        .zip(values(new))
        .enumerate()
        .filter(|(i, ((name, _), v))| *name != "State" && before.as_ref().is_none_or(|b| b[*i] != *v))
        .map(|(_, ((name, _), v))| (*name, v))
        .collect()
}

/// A property value as JSON (for `unikernelctl status --json`).
pub fn to_json(v: &Value<'_>) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Bool(b) => J::from(*b),
        Value::U8(n) => J::from(*n),
        Value::U16(n) => J::from(*n),
        Value::U32(n) => J::from(*n),
        Value::U64(n) => J::from(*n),
        Value::I16(n) => J::from(*n),
        Value::I32(n) => J::from(*n),
        Value::I64(n) => J::from(*n),
        Value::F64(n) => J::from(*n),
        Value::Str(s) => J::from(s.as_str()),
        Value::ObjectPath(p) => J::from(p.as_str()),
        Value::Array(a) => J::Array(a.iter().map(to_json).collect()),
        Value::Structure(s) => J::Array(s.fields().iter().map(to_json).collect()),
        Value::Value(inner) => to_json(inner),
        other => J::from(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::State;

    fn status() -> Status {
        Status {
            name: "web".into(),
            state: State::Running,
            pid: Some(42),
            address: Some("10.200.0.5".parse().unwrap()),
            started_unix_ms: Some(5),
            boot_ms: Some(1.5),
            restarts: 2,
            last_error: None,
            source_file: "/etc/unikernels/web.kdl".into(),
            source_line: 3,
            spec_hash: "abc".into(),
            exposed: vec![(8080, 80)],
            memory_bytes: 16 << 20,
            held: false,
            standby: Some("idle=30000ms connections=keep-awake prewarm=false".into()),
            wakes: 3,
            last_wake_ms: Some(4.5),
            snapshot_bytes: Some(1 << 20),
            open_connections: 0,
        }
    }

    #[test]
    fn getters_read_the_table_and_changes_name_only_what_changed() {
        let s = status();
        assert_eq!(get::<u32>(&s, "Pid"), Some(42));
        assert_eq!(get::<u64>(&s, "BootTimeUSec"), Some(1500));
        assert_eq!(get::<String>(&s, "Address").as_deref(), Some("10.200.0.5"));
        assert_eq!(get::<String>(&s, "LastError").as_deref(), Some(""));
        assert_eq!(get::<Vec<(u16, u16)>>(&s, "ExposedPorts"), Some(vec![(8080, 80)]));
        assert_eq!(get::<u32>(&s, "NoSuchProperty"), None);
        assert_eq!(get::<u64>(&s, "Wakes"), Some(3));
        assert_eq!(get::<u64>(&s, "LastWakeUSec"), Some(4500));
        assert_eq!(get::<u64>(&s, "SnapshotBytes"), Some(1 << 20));
        let mut t = s.clone();
        t.pid = Some(43);
        t.state = State::Booting;
        let c = changed(Some(&s), &t);
        assert_eq!(
            c.keys().copied().collect::<Vec<_>>(),
            vec!["Pid"],
            "State is replayed apart"
        );
        assert_eq!(changed(None, &s).len(), PROPERTIES.len() - 1);
        let json = to_json(&values(&s)[11]);
        assert_eq!(json, serde_json::json!([[8080, 80]]));
    }
}
