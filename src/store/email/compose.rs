//! What an email is composed from: the events, and the names and views its
//! recipient may read.

use super::*;

impl Tx {
    /// The stored bodies of an organization's events, by sequence.
    pub async fn event_bodies(
        &mut self,
        organization_id: &str,
        sequences: &[i64],
    ) -> Result<HashMap<i64, Vec<u8>>> {
        crate::store::events::event_bodies(self.conn(), organization_id, sequences).await
    }

    /// Display names of organizations, by slug, for an email that names them. Slugs
    /// of no organization are left out.
    pub async fn organization_names(
        &mut self,
        slugs: &[String],
    ) -> Result<HashMap<String, String>> {
        let mut out = HashMap::new();
        for chunk in slugs.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT slug, display_name FROM organizations WHERE slug IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query_as::<_, (String, String)>(&sql);
            for slug in chunk {
                query = query.bind(slug);
            }
            out.extend(query.fetch_all(self.conn()).await?);
        }
        Ok(out)
    }

    /// The customers `ids` as `viewer_id` may see them, decided by the one visibility
    /// function ([`SeenCustomer::access`](super::SeenCustomer::access), then
    /// [`Access::view`](crate::domain::visibility::Access::view)): only the fields the
    /// viewer's grant shows are filled in. Customers the viewer may not see at all are
    /// left out.
    pub async fn customer_views(
        &mut self,
        viewer_id: &str,
        ids: &[String],
    ) -> Result<HashMap<String, CustomerView>> {
        let mut out = HashMap::new();
        for id in ids {
            let Some(seen) = self.customer(viewer_id, id).await? else {
                continue;
            };
            if let Some(access) = seen.access() {
                let view = access.view(seen.customer.kind, &seen.customer.profile);
                out.insert(id.clone(), view);
            }
        }
        Ok(out)
    }

    /// The title and customer id of each of `ids` that `organization_id` takes part
    /// in, by case id. Cases it does not take part in (any more) are left out.
    pub async fn case_headings(
        &mut self,
        organization_id: &str,
        ids: &[String],
    ) -> Result<HashMap<String, (String, String)>> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT c.id, c.title, c.customer_id FROM cases c \
                 JOIN case_participants p ON p.case_id = c.id AND p.organization_id = $1 \
                 WHERE c.id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut query =
                sqlx::query_as::<_, (String, String, String)>(&sql).bind(organization_id);
            for id in chunk {
                query = query.bind(id);
            }
            for (id, title, customer_id) in query.fetch_all(self.conn()).await? {
                out.insert(id, (title, customer_id));
            }
        }
        Ok(out)
    }

    /// The comment given with each of `transitions` (case id, id of the
    /// `case.transitioned` event, the state the case entered), by event id; only
    /// comments `organization_id` may read, by the rule of the case's history
    /// (the event itself reached it as a participant).
    ///
    /// The event does not carry the comment, so it is found in the case's history: the
    /// newest `case.transitioned` entry into that state written before the event.
    /// History entries and events are both UUIDv7 ids from the writing process, which
    /// orders them as they were made, and a transition writes its entry before its
    /// events; so the entry's id is below the event's, and at most
    /// [`TRANSITION_SLACK`] earlier (one request's lifetime).
    pub async fn transition_comments(
        &mut self,
        organization_id: &str,
        transitions: &[(String, String, String)],
    ) -> Result<HashMap<String, String>> {
        let mut out = HashMap::new();
        let (Some(first), Some(last)) = (
            transitions.iter().map(|t| &t.1).min(),
            transitions.iter().map(|t| &t.1).max(),
        ) else {
            return Ok(out);
        };
        let Some(from) = uuid_floor(first, TRANSITION_SLACK) else {
            return Ok(out);
        };
        let mut cases: Vec<&String> = transitions.iter().map(|t| &t.0).collect();
        cases.sort();
        cases.dedup();
        let mut entries: Vec<TransitionRow> = vec![];
        for chunk in cases.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT id, case_id, to_state, body, visibility, organization_id FROM case_history \
                 WHERE case_id IN ({}) AND kind = 'case.transitioned' AND id >= $1 AND id < $2 \
                 ORDER BY id",
                placeholders(3, chunk.len())
            );
            let mut query = sqlx::query_as::<_, TransitionRow>(&sql)
                .bind(&from)
                .bind(last);
            for id in chunk {
                query = query.bind(*id);
            }
            entries.extend(query.fetch_all(self.conn()).await?);
        }
        for (case_id, event_id, state) in transitions {
            let entry = entries
                .iter()
                .filter(|e| &e.case_id == case_id && &e.id < event_id && &e.to_state == state)
                .max_by(|a, b| a.id.cmp(&b.id));
            if let Some(e) = entry
                && !e.body.is_empty()
                && (e.visibility == "participants"
                    || e.organization_id.as_deref() == Some(organization_id))
            {
                out.insert(event_id.clone(), e.body.clone());
            }
        }
        Ok(out)
    }
}
