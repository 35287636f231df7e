//! Pass 3: each stage's kind and the kind's own keys, deserialised strictly by the kind
//! (channel kinds inherit the `[channel]` keys they declare).

use std::sync::Arc;

use super::{reserved, type_name, Ctx, Raw, RESERVED_KEYS};
use crate::graph::did_you_mean;
use crate::registry::{ErasedKind, Registry};
use crate::stage::Role;
use crate::tagged::{Models, TAG};

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
    if kind.role() == Role::Source {
        reserved::source_keys(cx, &id, kind.name(), t);
    }
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
    super::batch::check(cx, registry, kind.as_ref(), raw);
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
    let models = kind.models();
    let model = models.as_ref().map(|m| model_of(m, t));
    let keys = match (&models, &model) {
        (Some(m), Some(Some(model))) => m.keys.get(model).cloned().unwrap_or_default(),
        _ => kind.keys(),
    };
    let mut params = toml::Table::new();
    let mut unknown = false;
    for (key, val) in t {
        if RESERVED_KEYS.contains(&key.as_str()) {
            continue;
        }
        if let (Some(m), Some(Some(model))) = (&models, &model) {
            if !keys.contains(key) && another_models_key(cx, m, model, id, key, t) {
                unknown = true;
                continue;
            }
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
                    None => match &model {
                        Some(Some(m)) => {
                            format!("keys of `{}` with `{TAG} = \"{m}\"`: {}", kind.name(), keys.join(", "))
                        }
                        _ => format!("keys of `{}`: {}", kind.name(), keys.join(", ")),
                    },
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

/// The model stage `t` names (`model = "..."`, or the kind's default); `None` when the
/// value is not one of the kind's models (deserialisation reports it).
fn model_of(models: &Models, t: &toml::Table) -> Option<String> {
    match t.get(TAG) {
        None => Some(models.default.clone()),
        Some(toml::Value::String(m)) if models.keys.contains_key(m) => Some(m.clone()),
        Some(_) => None,
    }
}

/// Reports `key` when it is a key of another of the kind's models than `model`;
/// returns whether it did.
fn another_models_key(cx: &mut Ctx, models: &Models, model: &str, id: &str, key: &str, t: &toml::Table) -> bool {
    let owners: Vec<String> = models
        .owners_of(key, model)
        .map(|m| format!("`{TAG} = \"{m}\"`"))
        .collect();
    if owners.is_empty() {
        return false;
    }
    let default = if t.contains_key(TAG) { "" } else { " (the default)" };
    let hint = match did_you_mean(key, models.keys[model].iter().map(String::as_str)) {
        Some(h) => format!("did you mean `{h}`? `{key}` is read only with {}", owners.join(" or ")),
        None => format!("did you mean {}? otherwise remove `{key}`", owners.join(" or ")),
    };
    cx.err(
        &["stage", id, key],
        Some(id),
        format!(
            "key `{key}` belongs to {}, not to `{TAG} = \"{model}\"`{default}",
            owners.join(" and ")
        ),
        Some(hint),
    );
    true
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

    #[test]
    fn a_key_of_another_model_is_refused_by_name() {
        let errors = configure_all(
            r#"
[stage.a]
kind = "describe"
max_tokens = 5
[stage.b]
kind = "describe"
model = "neural"
words = 3
[stage.c]
kind = "describe"
model = "neural"
model_dirr = "x"
[stage.d]
kind = "describe"
model = "plain"
model_dir = "x"
[stage.e]
kind = "describe"
model = "neural"
model_dir = "x"
max_tokens = 2
[stage.f]
kind = "describe"
model = "fancy"
[stage.g]
kind = "describe"
model = "neural"
max_tokens = "many"
"#,
        );
        assert_eq!(
            errors,
            [
                "key `max_tokens` belongs to `model = \"neural\"`, not to `model = \"plain\"` (the default)",
                "key `words` belongs to `model = \"plain\"`, not to `model = \"neural\"`",
                "unknown key `model_dirr` for kind `describe`",
                "key `model_dir` belongs to `model = \"neural\"`, not to `model = \"plain\"`",
                "key `model`: unknown variant `fancy`, expected `plain` or `neural`",
                "key `max_tokens`: invalid type: string \"many\", expected u32",
            ]
        );
    }

    #[test]
    fn the_hint_for_another_models_key_says_which_model() {
        let src = source("[stage.a]\nkind = \"describe\"\nmax_tokens = 5\n[stage.b]\nkind = \"describe\"\nmodel = \"neural\"\nword = 1\n");
        let reg = registry();
        let names = reg.names();
        let mut cx = super::super::Ctx::new(&src);
        let stages = table_of(&src.values, "stage");
        let defaults = reserved::defaults(&mut cx, &toml::Table::new());
        for (id, t) in &stages {
            let t = t.as_table().expect("a table");
            let mut raw = reserved::stage(&mut cx, id, t, &defaults);
            super::configure(&mut cx, &reg, &names, t, &toml::Table::new(), &mut raw);
        }
        let hints: Vec<String> = cx.errors.iter().map(|d| d.help.clone().unwrap_or_default()).collect();
        assert_eq!(
            hints,
            [
                "did you mean `model = \"neural\"`? otherwise remove `max_tokens`",
                "keys of `describe` with `model = \"neural\"`: max_tokens, model, model_dir",
            ]
        );
        assert_eq!(
            cx.errors[0].location.map(|l| l.line),
            Some(3),
            "the error points at the key's line"
        );
    }
}
