//! Who is calling: the authenticated principal of one request and what it may do.

use super::error::{Error, Result};
use super::{OrgRef, Principal, Scope, Scopes};

/// The authenticated caller of one RPC.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
    pub principal: Principal,
    pub scopes: Scopes,
}

impl Caller {
    /// The hub operator, for the CLI acting directly on the database.
    pub fn operator() -> Self {
        Self {
            key_id: "cli".into(),
            principal: Principal::Operator,
            scopes: Scopes::new(vec![Scope::Admin]).expect("non-empty"),
        }
    }

    /// The hub reading for organization `org` in a background job (the RFM
    /// quintiles): what that organization may read, and nothing it may change.
    pub fn job(org: OrgRef) -> Self {
        Self {
            key_id: "job".into(),
            principal: Principal::Organization(org),
            scopes: Scopes::new(vec![Scope::Read]).expect("non-empty"),
        }
    }

    pub fn require(&self, scope: Scope) -> Result<()> {
        if self.scopes.allows(scope) {
            Ok(())
        } else {
            Err(Error::PermissionDenied {
                reason: "INSUFFICIENT_SCOPE",
                message: format!("this method needs a key with the {} scope", scope.as_str()),
            })
        }
    }

    pub fn require_operator(&self) -> Result<()> {
        match self.principal {
            Principal::Operator => self.require(Scope::Admin),
            Principal::Organization(_) => Err(Error::permission_denied(
                "this method needs the hub operator's key",
            )),
        }
    }

    /// The organization the caller speaks for; operators have none.
    pub fn organization(&self) -> Result<&OrgRef> {
        match &self.principal {
            Principal::Organization(org) => Ok(org),
            Principal::Operator => Err(Error::permission_denied(
                "this method needs an organization's key, not the operator's",
            )),
        }
    }

    /// Whether the caller may act on resources of organization `org_id`: its own, or
    /// any for the operator.
    pub fn may_act_for(&self, org_id: &str) -> bool {
        match &self.principal {
            Principal::Operator => true,
            Principal::Organization(org) => org.id == org_id,
        }
    }

    /// The namespace of this caller's `request_id`s.
    pub fn idempotency_scope(&self) -> String {
        match &self.principal {
            Principal::Operator => "operator".into(),
            Principal::Organization(org) => format!("org:{}", org.id),
        }
    }

    /// How logs name the caller.
    pub fn label(&self) -> &str {
        match &self.principal {
            Principal::Operator => "operator",
            Principal::Organization(org) => org.slug.as_str(),
        }
    }
}
