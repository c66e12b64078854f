//! AIP-127 path templates (`/v1/{name=customers/*}:merge`, the grammar of
//! `google/api/http.proto`): parsed once, then read by the route table, the OpenAPI
//! writer and the tests. Standard library only: `build.rs` compiles this file too.

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
    pub fn matchit_route(&self) -> String {
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

impl Template {
    /// Each variable's field with its value, from `segment_value(i, rest)`: the value
    /// matched at wildcard segment `i` (`rest` for `**`). `None` when one is missing.
    pub fn bind(
        &self,
        segment_value: impl Fn(usize, bool) -> Option<String>,
    ) -> Option<Vec<(String, String)>> {
        self.variables
            .iter()
            .map(|v| {
                let parts: Option<Vec<String>> = (v.first..v.end)
                    .map(|i| match &self.segments[i] {
                        Segment::Literal(text) => Some(text.clone()),
                        Segment::One => segment_value(i, false),
                        Segment::Rest => segment_value(i, true),
                    })
                    .collect();
                Some((v.field.clone(), parts?.join("/")))
            })
            .collect()
    }

    /// The OpenAPI form of this template: the literal segments of each variable's
    /// pattern stay in the path and each wildcard is a parameter named after the
    /// collection before it (`/v1/{name=customers/*}:merge` is
    /// `/v1/customers/{customer}:merge`), so two resources' paths stay apart. `Err`
    /// for a wildcard outside a variable, which OpenAPI could not name.
    pub fn openapi_path(&self) -> Result<(String, Vec<PathParameter>), String> {
        let mut path = String::new();
        let mut parameters: Vec<PathParameter> = Vec::new();
        let mut previous = String::new();
        let mut i = 0;
        while i < self.segments.len() {
            path.push('/');
            let Some(v) = self.variables.iter().find(|v| v.first == i) else {
                match &self.segments[i] {
                    Segment::Literal(text) => {
                        path.push_str(text);
                        previous = text.clone();
                    }
                    Segment::One | Segment::Rest => {
                        return Err("a wildcard outside a variable".into());
                    }
                }
                i += 1;
                continue;
            };
            let mut spelled = Vec::new();
            for segment in &self.segments[v.first..v.end] {
                match segment {
                    Segment::Literal(text) => {
                        spelled.push(text.clone());
                        previous = text.clone();
                    }
                    Segment::One | Segment::Rest => {
                        let base = if previous.is_empty() {
                            v.field.replace('.', "_")
                        } else {
                            singular(&previous)
                        };
                        let mut name = base.clone();
                        let mut n = 2;
                        while parameters.iter().any(|p| p.name == name) {
                            name = format!("{base}{n}");
                            n += 1;
                        }
                        spelled.push(format!("{{{name}}}"));
                        parameters.push(PathParameter {
                            name,
                            field: v.field.clone(),
                            spelled: String::new(),
                        });
                    }
                }
            }
            let spelled = spelled.join("/");
            for p in parameters.iter_mut().filter(|p| p.field == v.field) {
                p.spelled = spelled.clone();
            }
            path.push_str(&spelled);
            previous.clear();
            i = v.end;
        }
        if let Some(verb) = &self.verb {
            path.push(':');
            path.push_str(verb);
        }
        Ok((path, parameters))
    }
}

/// One path parameter of a template's OpenAPI form.
pub struct PathParameter {
    pub name: String,
    /// The request field it is part of (`name`, `customer.name`).
    pub field: String,
    /// The field's value as a pattern of parameters (`customers/{customer}`).
    pub spelled: String,
}

/// The parameter a wildcard after collection `literal` is called by: the singular
/// (`customers` → `customer`, `auditEntries` → `auditEntry`), else `{literal}Id`.
fn singular(literal: &str) -> String {
    if let Some(stem) = literal.strip_suffix("ies") {
        format!("{stem}y")
    } else if let Some(stem) = literal.strip_suffix('s') {
        stem.to_owned()
    } else {
        format!("{literal}Id")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
