//! Pass 3: each stage's kind and the kind's own keys, deserialised strictly by the kind
//! (channel kinds inherit the `[channel]` keys they declare).

use std::sync::Arc;

use super::{type_name, Ctx, Raw, RESERVED_KEYS};
use crate::graph::did_you_mean;
use crate::registry::{ErasedKind, Registry};

/// Looks up the kind of stage `raw` (table `t`) and configures it from its own keys.
pub(super) fn configure(
    cx: &mut Ctx,
    registry: &Registry,
    kind_names: &[&str],
    t: &toml::Table,
    channel_t: &toml::Table,
    raw: &mut Raw,
) {
    let Some(k) = kind_name(cx, kind_names, &raw.id, t) else {
        return;
    };
    let id = raw.id.clone();
    let Some(kind) = registry.get(&k) else {
        let hint = did_you_mean(&k, kind_names.iter().copied());
        cx.err(
            &["stage", &id, "kind"],
            Some(&id),
            format!("unknown kind `{k}`"),
            Some(match hint {
                Some(h) => format!("did you mean `{h}`?"),
                None => format!("known kinds: {}", kind_names.join(", ")),
            }),
        );
        return;
    };
    raw.role = Some(kind.role());
    if let (Some(why), true) = (kind.one_replica(), raw.replicas > 1) {
        cx.err(
            &["stage", &id, "replicas"],
            Some(&id),
            format!(
                "kind `{}` runs as one replica: {why}; replicas = {} would lose data",
                kind.name(),
                raw.replicas
            ),
            Some("remove `replicas` from this stage".into()),
        );
    }
    if let Some(params) = own_keys(cx, kind, &id, t, channel_t) {
        deserialise(cx, kind, &id, t, channel_t, params, raw);
    }
    raw.kind = Some(k);
}

/// `kind = "..."` as written, or an error when it is missing or not a string.
fn kind_name(cx: &mut Ctx, kind_names: &[&str], id: &str, t: &toml::Table) -> Option<String> {
    match t.get("kind") {
        Some(toml::Value::String(k)) => Some(k.clone()),
        Some(o) => {
            cx.err(
                &["stage", id, "kind"],
                Some(id),
                format!("`kind` must be a string, found {}", type_name(o)),
                None,
            );
            None
        }
        None => {
            cx.err(
                &["stage", id],
                Some(id),
                "missing `kind`".into(),
                Some(format!("known kinds: {}", kind_names.join(", "))),
            );
            None
        }
    }
}

/// The kind's own keys of the stage, plus the `[channel]` keys a channel kind declares
/// and the stage does not set; `None` when a key is unknown to the kind (reported).
fn own_keys(
    cx: &mut Ctx,
    kind: &Arc<dyn ErasedKind>,
    id: &str,
    t: &toml::Table,
    channel_t: &toml::Table,
) -> Option<toml::Table> {
    let keys = kind.keys();
    let mut params = toml::Table::new();
    let mut unknown = false;
    for (key, val) in t {
        if RESERVED_KEYS.contains(&key.as_str()) {
            continue;
        }
        if !keys.contains(key) {
            unknown = true;
            let hint = did_you_mean(
                key,
                keys.iter().map(String::as_str).chain(RESERVED_KEYS.iter().copied()),
            );
            cx.err(
                &["stage", id, key],
                Some(id),
                format!("unknown key `{key}` for kind `{}`", kind.name()),
                Some(match hint {
                    Some(h) => format!("did you mean `{h}`?"),
                    None if keys.is_empty() => "this kind has no keys of its own".to_string(),
                    None => format!("keys of `{}`: {}", kind.name(), keys.join(", ")),
                }),
            );
            continue;
        }
        params.insert(key.clone(), val.clone());
    }
    if kind.channel() {
        for (key, val) in channel_t {
            if keys.contains(key) && !params.contains_key(key) {
                params.insert(key.clone(), val.clone());
            }
        }
    }
    (!unknown).then_some(params)
}

/// Deserialises `params` with the kind and checks the values; sets the config and ports.
fn deserialise(
    cx: &mut Ctx,
    kind: &Arc<dyn ErasedKind>,
    id: &str,
    t: &toml::Table,
    channel_t: &toml::Table,
    params: toml::Table,
    raw: &mut Raw,
) {
    match kind.configure(params) {
        Ok(c) => {
            for p in c.validate() {
                let at: Vec<&str> = if t.contains_key(p.key) {
                    vec!["stage", id, p.key]
                } else {
                    vec!["stage", id]
                };
                cx.err(&at, Some(id), p.message, None);
            }
            raw.ports = Some(c.ports());
            raw.config = Some(c);
        }
        Err(e) => {
            let first = e.path.split('.').next().unwrap_or("").to_string();
            let what = if e.path.is_empty() {
                String::new()
            } else {
                format!("key `{}`: ", e.path)
            };
            let from_channel = !first.is_empty() && !t.contains_key(&first) && channel_t.contains_key(&first);
            if from_channel {
                let msg = format!("{what}{} (inherited from [channel])", e.message);
                cx.err(&["channel", first.as_str()], Some(id), msg, None);
            } else {
                let mut at = vec!["stage", id];
                if !first.is_empty() && t.contains_key(&first) {
                    at.push(&first);
                }
                cx.err(&at, Some(id), format!("{what}{}", e.message), None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{errors_of, registry, source};
    use super::super::{reserved, table_of};

    fn configure_all(text: &str) -> Vec<String> {
        let src = source(text);
        errors_of(&src, |cx| {
            let reg = registry();
            let names = reg.names();
            let stages = table_of(&src.values, "stage");
            let channel = table_of(&src.values, "channel");
            let defaults = reserved::defaults(cx, &toml::Table::new());
            for (id, t) in &stages {
                let t = t.as_table().expect("a table");
                let mut raw = reserved::stage(cx, id, t, &defaults);
                super::configure(cx, &reg, &names, t, &channel, &mut raw);
            }
        })
    }

    #[test]
    fn kinds_and_their_keys_are_checked() {
        let errors = configure_all(
            r#"
[channel]
snr_db = "loud"
[stage.a]
[stage.b]
kind = 3
[stage.c]
kind = "mapp"
[stage.d]
kind = "map"
rat = 0.5
[stage.e]
kind = "map"
rate = 2.0
[stage.f]
kind = "sink"
replicas = 2
[stage.g]
kind = "noise"
[stage.h]
kind = "map"
rate = "fast"
"#,
        );
        assert_eq!(
            errors,
            [
                "missing `kind`",
                "`kind` must be a string, found integer",
                "unknown kind `mapp`",
                "unknown key `rat` for kind `map`",
                "`rate` = 2 is out of range: it must be between 0 and 1 (a fraction)",
                "kind `sink` runs as one replica: it owns one file; replicas = 2 would lose data",
                "key `snr_db`: invalid type: string \"loud\", expected f64 (inherited from [channel])",
                "key `rate`: invalid type: string \"fast\", expected f64",
            ]
        );
    }
}
