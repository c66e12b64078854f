//! The table that finds the RPC a request path names. Matching is matchit's (the
//! router axum uses): each template becomes a matchit route with one parameter per
//! wildcard segment, named by its position, and the custom verb (`:merge`) picks the
//! table. A variable's value is put back together from its literal and matched
//! segments (`customers/` + `c1` = `customers/c1`).

use std::collections::HashMap;

use super::template::Template;

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
                let bindings = template.bind(|i, rest| {
                    let raw = found.params.get(format!("s{i}"))?;
                    Some(if rest { decode(raw) } else { decode_one(raw) })
                })?;
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
