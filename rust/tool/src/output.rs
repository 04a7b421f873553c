// SPDX-License-Identifier: GPL-2.0
//! Output formats (nvme-cli style `-o normal|json`): status text to JSON, list and table rendering.

use clap::ValueEnum;
use rmirror_core::abi::status;
use serde_json::{Map, Value};

/// Output format of `status`, `list` and `dump-md`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable text: the kernel's status line / one name per line.
    #[default]
    Normal,
    /// JSON: an object per device (an array for all devices).
    Json,
}

/// Keys whose values stay JSON strings even when they look numeric (a device may be named "0").
const STRING_KEYS: [&str; 9] = [
    status::NAME,
    status::ROLE,
    status::CSTATE,
    status::PEER,
    status::LOCAL,
    status::PROTOCOL,
    status::BACKING,
    status::REPL,
    status::DISK,
];

/// A value as JSON: decimal integers become numbers, everything else a string.
fn json_value(key: &str, value: &str) -> Value {
    if STRING_KEYS.contains(&key) {
        return Value::String(value.to_string());
    }
    let digits = value.strip_prefix('-').unwrap_or(value);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = value.parse::<u64>() {
            return Value::from(n);
        }
        if let Ok(n) = value.parse::<i64>() {
            return Value::from(n);
        }
    }
    Value::String(value.to_string())
}

/// Converts a status line into a JSON object, keys in kernel order. Unknown keys are kept;
/// malformed tokens (no `=`) are skipped; a repeated key keeps its first value.
pub fn status_json(text: &str) -> Map<String, Value> {
    let mut map = Map::new();
    for (k, v) in status::parse(text).filter_map(Result::ok) {
        if !map.contains_key(k) {
            map.insert(k.to_string(), json_value(k, v));
        }
    }
    map
}

/// One event in `format`: `KIND key=value ...` or a JSON object with "kind", the event
/// number "seq" (`None` for `exists` lines, which the tool makes from a status line: only the
/// name and the states events report are kept) and the fields.
pub fn event_line(seq: Option<u64>, kind: &str, fields: &str, format: Format) -> String {
    use rmirror_core::abi::events;
    let keep = |k: &str| seq.is_some() || k == status::NAME || events::KEYS.contains(&k);
    let pairs: Vec<(&str, &str)> = status::parse(fields)
        .filter_map(Result::ok)
        .filter(|(k, _)| keep(k))
        .collect();
    match format {
        Format::Normal => {
            let mut line = kind.to_string();
            for (k, v) in pairs {
                line.push_str(&format!(" {k}={v}"));
            }
            line
        }
        Format::Json => {
            let mut m = Map::new();
            m.insert("kind".into(), Value::String(kind.into()));
            if let Some(s) = seq {
                m.insert("seq".into(), Value::from(s));
            }
            for (k, v) in pairs {
                m.entry(k.to_string()).or_insert_with(|| json_value(k, v));
            }
            Value::Object(m).to_string()
        }
    }
}

#[cfg(test)]
mod event_tests {
    use super::*;

    #[test]
    fn event_lines() {
        let st = "name=r0 minor=0 role=primary cstate=connected peer=10.0.0.2:7788 writes=3 repl=established disk=up_to_date";
        assert_eq!(
            event_line(None, "exists", st, Format::Normal),
            "exists name=r0 role=primary cstate=connected repl=established disk=up_to_date"
        );
        assert_eq!(
            event_line(Some(7), "change", "name=r0 cstate=outage", Format::Normal),
            "change name=r0 cstate=outage"
        );
        let v: Value = serde_json::from_str(&event_line(
            Some(7),
            "change",
            "name=0 disk=detached",
            Format::Json,
        ))
        .unwrap();
        assert_eq!(v["kind"], "change");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["name"], "0");
        assert_eq!(v["disk"], "detached");
        let v: Value = serde_json::from_str(&event_line(None, "exists", st, Format::Json)).unwrap();
        assert!(v.get("seq").is_none() && v.get("writes").is_none() && v["role"] == "primary");
    }
}

/// Renders status lines (one per device) in `format`; `single` selects an object instead of
/// an array for JSON.
pub fn render_status(lines: &[String], format: Format, single: bool) -> String {
    match format {
        Format::Normal => lines
            .iter()
            .map(|l| format!("{}\n", l.trim_end()))
            .collect(),
        Format::Json => {
            let objs: Vec<Value> = lines
                .iter()
                .map(|l| Value::Object(status_json(l)))
                .collect();
            let v = if single {
                objs.into_iter()
                    .next()
                    .unwrap_or_else(|| Value::Object(Map::new()))
            } else {
                Value::Array(objs)
            };
            pretty(&v)
        }
    }
}

/// Device names from the LIST reply (one per line).
pub fn list_names(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Renders device names in `format`.
pub fn render_list(names: &[String], format: Format) -> String {
    match format {
        Format::Normal => names.iter().map(|n| format!("{n}\n")).collect(),
        Format::Json => pretty(&Value::Array(
            names.iter().map(|n| Value::String(n.clone())).collect(),
        )),
    }
}

/// `v` as indented JSON with a final newline.
pub fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".to_string());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LINE: &str = "name=r0 minor=0 role=primary cstate=connected peer=10.0.0.2:7788 \
        local=10.0.0.1:7788 protocol=C backing=/dev/vdb size=2048 inline_max=4096 writes=3 \
        write_bytes=12288 small_writes=3 large_writes=0 acks=3 out_of_sync=0 inflight=0 \
        connect_attempts=2 connects=1 timeouts=0 pings=5 pongs=4 repl=established disk=up_to_date \
        resynced=8 resync_eta=0 queued=0 queued_bytes=0 replayed=3 queue_overflows=0 \
        msgs_sent=10 pushes=9 msgs_received=12";

    #[test]
    fn status_to_json() {
        let v = Value::Object(status_json(LINE));
        assert_eq!(
            v,
            json!({
                "name": "r0", "minor": 0, "role": "primary", "cstate": "connected",
                "peer": "10.0.0.2:7788", "local": "10.0.0.1:7788", "protocol": "C",
                "backing": "/dev/vdb", "size": 2048, "inline_max": 4096, "writes": 3,
                "write_bytes": 12288, "small_writes": 3, "large_writes": 0, "acks": 3,
                "out_of_sync": 0, "inflight": 0, "connect_attempts": 2, "connects": 1,
                "timeouts": 0, "pings": 5, "pongs": 4, "repl": "established", "disk": "up_to_date",
                "resynced": 8, "resync_eta": 0, "queued": 0, "queued_bytes": 0, "replayed": 3,
                "queue_overflows": 0, "msgs_sent": 10, "pushes": 9, "msgs_received": 12
            })
        );
        // Order is the kernel's.
        let map = status_json(LINE);
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        assert_eq!(keys, status::KEYS);
    }

    #[test]
    fn json_values() {
        assert_eq!(json_value("size", "18446744073709551615"), json!(u64::MAX));
        assert_eq!(json_value("delta", "-5"), json!(-5));
        assert_eq!(
            json_value("x", "99999999999999999999999"),
            json!("99999999999999999999999")
        );
        assert_eq!(json_value("x", "1.5"), json!("1.5"));
        assert_eq!(json_value("x", ""), json!(""));
        assert_eq!(json_value("x", "-"), json!("-"));
        assert_eq!(json_value("name", "0"), json!("0"));
        assert_eq!(json_value("future_key", "12"), json!(12));
    }

    #[test]
    fn unknown_and_malformed_tokens() {
        let v = Value::Object(status_json("name=7 new_key=abc junk minor=2 minor=3\n"));
        assert_eq!(v, json!({"name": "7", "new_key": "abc", "minor": 2}));
    }

    #[test]
    fn render_forms() {
        let lines = vec![LINE.to_string(), "name=r1 minor=1".to_string()];
        assert_eq!(
            render_status(&lines[..1], Format::Normal, true),
            format!("{LINE}\n")
        );
        let one: Value =
            serde_json::from_str(&render_status(&lines[..1], Format::Json, true)).unwrap();
        assert_eq!(one["cstate"], "connected");
        let all: Value = serde_json::from_str(&render_status(&lines, Format::Json, false)).unwrap();
        assert_eq!(all[1], json!({"name": "r1", "minor": 1}));
        let none: Value = serde_json::from_str(&render_status(&[], Format::Json, false)).unwrap();
        assert_eq!(none, json!([]));
    }

    #[test]
    fn list_forms() {
        let names = list_names("r0\nr1\n\n");
        assert_eq!(names, ["r0", "r1"]);
        assert_eq!(render_list(&names, Format::Normal), "r0\nr1\n");
        assert_eq!(
            render_list(&names, Format::Json),
            "[\n  \"r0\",\n  \"r1\"\n]\n"
        );
        assert_eq!(render_list(&[], Format::Json), "[]\n");
        assert_eq!(render_list(&[], Format::Normal), "");
    }
}
