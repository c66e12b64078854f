//! AIP-127 path templates (`/v1/{name=customers/*}:merge`, the grammar of
//! `google/api/http.proto`) and the table that finds the RPC a request path names.
//!
//! Matching is matchit's (the router axum uses): each template becomes a matchit
//! route with one parameter per wildcard segment, named by its position, and the
//! custom verb (`:merge`) picks the table. A variable's value is put back together
//! from its literal and matched segments (`customers/` + `c1` = `customers/c1`).

use std::collections::HashMap;

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: one segment.
    One,
    /// `**`: the rest of the path (last only).
    Rest,
}

/// A field bound by the path: `name` in `{name=customers/*}`, and the segments
/// (`first..end`) that spell its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub field: String,
    first: usize,
    end: usize,
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
    pub variables: Vec<Variable>,
    pub verb: Option<String>,
}

impl Template {
    /// Parses `template`; `Err` says what in it breaks the grammar.
    pub fn parse(template: &str) -> Result<Self, String> {
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| format!("`{template}` does not start with `/`"))?;
        // The verb follows the last segment: after the last `/` and any `}`.
        let tail_start = rest.rfind(['/', '}']).map_or(0, |i| i + 1);
        let (path, verb) = match rest[tail_start..].find(':') {
            Some(i) => (
                &rest[..tail_start + i],
                Some(rest[tail_start + i + 1..].to_owned()),
            ),
            None => (rest, None),
        };
        if verb.as_deref().is_some_and(|v| !is_literal(v)) {
            return Err(format!("`{template}` has a bad custom verb"));
        }
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        let mut chars = path;
        while !chars.is_empty() {
            if let Some(inner) = chars.strip_prefix('{') {
                let close = inner
                    .find('}')
                    .ok_or_else(|| format!("`{template}` has an unclosed `{{`"))?;
                let (field, pattern) = match inner[..close].split_once('=') {
                    Some((field, pattern)) => (field, pattern),
                    None => (&inner[..close], "*"),
                };
                if field.is_empty() || !field.split('.').all(is_identifier) {
                    return Err(format!("`{template}` binds a bad field path `{field}`"));
                }
                let first = segments.len();
                for part in pattern.split('/') {
                    segments.push(segment(part, template)?);
                }
                variables.push(Variable {
                    field: field.to_owned(),
                    first,
                    end: segments.len(),
                });
                chars = &inner[close + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                segments.push(segment(&chars[..end], template)?);
                chars = &chars[end..];
            }
            chars = match chars.strip_prefix('/') {
                Some(next) if !next.is_empty() => next,
                Some(_) => return Err(format!("`{template}` ends with `/`")),
                None if chars.is_empty() => chars,
                None => return Err(format!("`{template}` has text after a variable")),
            };
        }
        if segments.is_empty() {
            return Err(format!("`{template}` has no segments"));
        }
        if segments[..segments.len() - 1].contains(&Segment::Rest) {
            return Err(format!("`{template}` has `**` before its last segment"));
        }
        Ok(Self {
            segments,
            variables,
            verb,
        })
    }

    /// The route matchit knows this template by: wildcards named by position, so
    /// templates sharing a prefix agree on the names.
    fn matchit_route(&self) -> String {
        let mut route = String::new();
        for (i, segment) in self.segments.iter().enumerate() {
            route.push('/');
            match segment {
                Segment::Literal(text) => {
                    route.push_str(&text.replace('{', "{{").replace('}', "}}"))
                }
                Segment::One => route.push_str(&format!("{{s{i}}}")),
                Segment::Rest => route.push_str(&format!("{{*s{i}}}")),
            }
        }
        route
    }

    /// The path this template makes with each variable's value from `value_of`
    /// (its field path in, the value out, its segments already percent-encoded).
    pub fn fill(&self, value_of: impl Fn(&str) -> String) -> String {
        let mut path = String::new();
        let mut i = 0;
        while i < self.segments.len() {
            path.push('/');
            if let Some(v) = self.variables.iter().find(|v| v.first == i) {
                path.push_str(&value_of(&v.field));
                i = v.end;
                continue;
            }
            match &self.segments[i] {
                Segment::Literal(text) => path.push_str(text),
                Segment::One | Segment::Rest => path.push('-'),
            }
            i += 1;
        }
        if let Some(verb) = &self.verb {
            path.push(':');
            path.push_str(verb);
        }
        path
    }

    /// The pattern a variable's value must match, in template syntax
    /// (`customers/*`), for documentation.
    pub fn pattern(&self, variable: &Variable) -> String {
        self.segments[variable.first..variable.end]
            .iter()
            .map(|s| match s {
                Segment::Literal(text) => text.as_str(),
                Segment::One => "*",
                Segment::Rest => "**",
            })
            .collect::<Vec<_>>()
            .join("/")
    }
}

fn segment(text: &str, template: &str) -> Result<Segment, String> {
    match text {
        "*" => Ok(Segment::One),
        "**" => Ok(Segment::Rest),
        literal if is_literal(literal) => Ok(Segment::Literal(literal.to_owned())),
        _ => Err(format!("`{template}` has a bad segment `{text}`")),
    }
}

fn is_literal(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
}

fn is_identifier(text: &str) -> bool {
    text.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// What a path matched: the route's index and each bound field with its value
/// (percent-decoded).
#[derive(Debug, PartialEq, Eq)]
pub struct Matched {
    pub route: usize,
    pub bindings: Vec<(String, String)>,
}

/// Why no route answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Miss {
    /// No template matches the path.
    NoPath,
    /// Templates match the path, for these other HTTP methods only.
    OtherMethods(Vec<http::Method>),
}

/// Every route's template, by HTTP method and custom verb.
#[derive(Default)]
pub struct Table {
    routers: HashMap<(http::Method, Option<String>), matchit::Router<usize>>,
    /// Each template added, with its route (an RPC may have several templates).
    entries: Vec<(Template, usize)>,
}

impl Table {
    /// Adds route number `route` for `method` at `template`. `Err` when it clashes
    /// with a route already added.
    pub fn insert(
        &mut self,
        method: http::Method,
        template: &Template,
        route: usize,
    ) -> Result<(), String> {
        let router = self
            .routers
            .entry((method.clone(), template.verb.clone()))
            .or_default();
        router
            .insert(template.matchit_route(), self.entries.len())
            .map_err(|e| format!("{method} {}: {e}", template.matchit_route()))?;
        self.entries.push((template.clone(), route));
        Ok(())
    }

    /// The route `method` and `path` (the request's, undecoded) name.
    pub fn find(&self, method: &http::Method, path: &str) -> Result<Matched, Miss> {
        if let Some(found) = self.lookup(method, path) {
            return Ok(found);
        }
        let mut others: Vec<http::Method> = self
            .routers
            .keys()
            .map(|(m, _)| m.clone())
            .filter(|m| m != method)
            .collect();
        others.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        others.dedup();
        others.retain(|m| self.lookup(m, path).is_some());
        if others.is_empty() {
            Err(Miss::NoPath)
        } else {
            Err(Miss::OtherMethods(others))
        }
    }

    fn lookup(&self, method: &http::Method, path: &str) -> Option<Matched> {
        // A custom verb follows the last segment's last `:`; an id may hold a `:` too,
        // so a path that matches no verb is tried whole.
        let last = path.rfind('/').unwrap_or(0);
        let split = path[last..]
            .rfind(':')
            .map(|i| (&path[..last + i], Some(path[last + i + 1..].to_owned())));
        split
            .into_iter()
            .chain(std::iter::once((path, None)))
            .find_map(|(path, verb)| {
                let router = self.routers.get(&(method.clone(), verb))?;
                let found = router.at(path).ok()?;
                let (template, route) = &self.entries[*found.value];
                let value_of = |i: usize| -> Option<String> {
                    match &template.segments[i] {
                        Segment::Literal(text) => Some(text.clone()),
                        Segment::One => found.params.get(format!("s{i}")).map(decode_one),
                        Segment::Rest => found.params.get(format!("s{i}")).map(decode),
                    }
                };
                let mut bindings = Vec::new();
                for v in &template.variables {
                    let parts: Option<Vec<String>> = (v.first..v.end).map(value_of).collect();
                    bindings.push((v.field.clone(), parts?.join("/")));
                }
                Some(Matched {
                    route: *route,
                    bindings,
                })
            })
    }
}

/// One segment's value, decoded but for `%2F`, which stays as it is: a `/` in one
/// segment would make the value read as a longer name than the path matched.
fn decode_one(raw: &str) -> String {
    decode(&raw.replace("%2F", "%252F").replace("%2f", "%252f"))
}

/// `%2F` and friends, decoded; bytes that are not UTF-8 are replaced (no name the hub
/// knows has them, so the handler refuses the value).
fn decode(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;

    fn table(templates: &[(Method, &str)]) -> Table {
        let mut table = Table::default();
        for (i, (method, template)) in templates.iter().enumerate() {
            table
                .insert(method.clone(), &Template::parse(template).unwrap(), i)
                .unwrap();
        }
        table
    }

    #[test]
    fn templates_parse_to_segments_variables_and_verbs() {
        let t = Template::parse("/v1/{name=cases/*/tasks/*}:accept").unwrap();
        assert_eq!(t.verb.as_deref(), Some("accept"));
        assert_eq!(t.variables.len(), 1);
        assert_eq!(t.pattern(&t.variables[0]), "cases/*/tasks/*");
        assert_eq!(t.fill(|field| format!("<{field}>")), "/v1/<name>:accept");
        let t = Template::parse("/v1/{customer.name=customers/*}").unwrap();
        assert_eq!(t.variables[0].field, "customer.name");
        assert_eq!(t.verb, None);
        let t = Template::parse("/v1/customers:batchUpsert").unwrap();
        assert_eq!(t.verb.as_deref(), Some("batchUpsert"));
        assert_eq!(t.fill(|_| unreachable!()), "/v1/customers:batchUpsert");
        let t = Template::parse("/v1/{name=operations/**}").unwrap();
        assert_eq!(t.matchit_route(), "/v1/operations/{*s2}");

        for bad in [
            "v1/customers",
            "/v1/customers/",
            "/v1/{name=customers/*",
            "/v1/{=customers/*}",
            "/v1/{name=**/x}",
            "/v1/cust omers",
            "/v1/customers:",
            "/v1/{name}x",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn paths_find_their_route_with_bound_values() {
        let table = table(&[
            (Method::GET, "/v1/{name=customers/*}"),
            (Method::GET, "/v1/customers"),
            (Method::POST, "/v1/{name=customers/*}:merge"),
            (Method::PATCH, "/v1/{customer.name=customers/*}"),
            (Method::GET, "/v1/{parent=customers/*}/interactions"),
            (Method::GET, "/v1/{name=operations/**}"),
            (Method::POST, "/v1/customers:batchUpsert"),
            (Method::GET, "/v1/{name=cases/*/tasks/*}"),
        ]);
        let found = |m: Method, p: &str| table.find(&m, p);
        assert_eq!(
            found(Method::GET, "/v1/customers/c1"),
            Ok(Matched {
                route: 0,
                bindings: vec![("name".into(), "customers/c1".into())]
            })
        );
        assert_eq!(found(Method::GET, "/v1/customers").unwrap().route, 1);
        let merge = found(Method::POST, "/v1/customers/c1:merge").unwrap();
        assert_eq!(
            (merge.route, merge.bindings[0].1.as_str()),
            (2, "customers/c1")
        );
        assert_eq!(
            found(Method::PATCH, "/v1/customers/c%3A2")
                .unwrap()
                .bindings[0],
            ("customer.name".into(), "customers/c:2".into())
        );
        // An id with a colon and no verb route for it: matched whole.
        assert_eq!(
            found(Method::GET, "/v1/customers/a:b").unwrap().bindings[0].1,
            "customers/a:b"
        );
        assert_eq!(
            found(Method::GET, "/v1/customers/c1/interactions")
                .unwrap()
                .route,
            4
        );
        assert_eq!(
            found(Method::GET, "/v1/operations/exports/9")
                .unwrap()
                .bindings[0]
                .1,
            "operations/exports/9"
        );
        assert_eq!(
            found(Method::POST, "/v1/customers:batchUpsert")
                .unwrap()
                .route,
            6
        );
        assert_eq!(
            found(Method::GET, "/v1/cases/k/tasks/t").unwrap().bindings[0].1,
            "cases/k/tasks/t"
        );
        // An encoded `/` in one segment stays encoded: it cannot lengthen the name.
        assert_eq!(
            found(Method::GET, "/v1/customers/c1%2Finteractions%2Fi")
                .unwrap()
                .bindings[0]
                .1,
            "customers/c1%2Finteractions%2Fi"
        );
        assert_eq!(found(Method::GET, "/v1/nothing"), Err(Miss::NoPath));
        assert_eq!(found(Method::GET, "/v1/customers/c1/x"), Err(Miss::NoPath));
        assert_eq!(
            found(Method::DELETE, "/v1/customers/c1"),
            Err(Miss::OtherMethods(vec![Method::GET, Method::PATCH]))
        );
    }
}
