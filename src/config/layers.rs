//! Reading the layers: TOML tables merged key by key, environment variables named
//! after their key's path, and URLs redacted for logs.

use anyhow::Context;

/// Environment variables are read with this prefix.
pub const ENV_PREFIX: &str = "LIAISON_";

/// `url` with any password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest
        .split_once('/')
        .map_or((rest, None), |(a, t)| (a, Some(t)));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    match tail {
        Some(tail) => format!("{scheme}://{authority}/{tail}"),
        None => format!("{scheme}://{authority}"),
    }
}

pub(super) fn env_name(path: &str) -> String {
    format!("{ENV_PREFIX}{}", path.replace('.', "_").to_uppercase())
}

pub(super) fn leaf_paths(table: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(inner) => {
                out.extend(leaf_paths(inner).into_iter().map(|p| format!("{key}.{p}")))
            }
            _ => out.push(key.clone()),
        }
    }
    out
}

pub(super) fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The value at a dotted `path`, if any.
pub(super) fn lookup<'t>(table: &'t toml::Table, path: &str) -> Option<&'t toml::Value> {
    let mut parts = path.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        let value = current.get(part)?;
        if parts.peek().is_none() {
            return Some(value);
        }
        current = value.as_table()?;
    }
    None
}

/// Sets a dotted key from text, typed like the setting's default (`like`): a number
/// setting takes a number, a text setting any text (so `LIAISON_SMTP_PASSWORD=123456`
/// stays a password). A list takes comma-separated items of its items' type (`0,5,300`
/// for `webhooks.retry_schedule_secs`, `a.toml,b.toml` for `workflows.templates`).
pub(super) fn set(
    table: &mut toml::Table,
    path: &str,
    raw: &str,
    like: &toml::Value,
) -> anyhow::Result<()> {
    fn typed(raw: &str, like: &toml::Value) -> Option<toml::Value> {
        Some(match like {
            toml::Value::Integer(_) => toml::Value::Integer(raw.trim().parse().ok()?),
            toml::Value::Float(_) => {
                toml::Value::Float(raw.trim().parse::<f64>().ok().filter(|f| f.is_finite())?)
            }
            toml::Value::Boolean(_) => toml::Value::Boolean(raw.trim().parse().ok()?),
            _ => toml::Value::String(raw.to_owned()),
        })
    }
    let what = |like: &toml::Value| match like {
        toml::Value::Integer(_) => "a whole number",
        toml::Value::Float(_) => "a number",
        toml::Value::Boolean(_) => "true or false",
        _ => "text",
    };
    let value = match like {
        toml::Value::Array(items) => {
            let item = items
                .first()
                .cloned()
                .unwrap_or_else(|| toml::Value::String(String::new()));
            let parts = raw.split(',').map(str::trim).filter(|p| !p.is_empty());
            let mut out = Vec::new();
            for part in parts {
                out.push(
                    typed(part, &item)
                        .with_context(|| format!("{path}: {part:?} is not {}", what(&item)))?,
                );
            }
            toml::Value::Array(out)
        }
        like => {
            typed(raw, like).with_context(|| format!("{path}: {raw:?} is not {}", what(like)))?
        }
    };
    let mut parts: Vec<&str> = path.split('.').collect();
    let leaf = parts.pop().expect("non-empty path");
    let mut current = table;
    for part in parts {
        current = current
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("config sections are tables");
    }
    current.insert(leaf.to_owned(), value);
    Ok(())
}
