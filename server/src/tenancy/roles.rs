//! Roles, the permission each route needs, and [`check`]: the one place where a caller's
//! claims are held against a route.
//!
//! | permission | admin | operator | writer | reader |
//! |---|---|---|---|---|
//! | `Read` (records, scans, database info, log, checksums, usage) | yes | yes | yes | yes |
//! | `Write` (record writes, transactions) | yes | no | yes | no |
//! | `Operate` (snapshots; later topologies, links, plugins, restores, failover) | yes | yes | no | no |
//! | `Manage` (create and delete databases, the audit log) | yes | no | no | no |
//! | `NodeAdmin` (create tenants, set quotas) | tenant `*` only | no | no | no |
//!
//! A caller whose token is for another tenant gets the very answer an absent tenant gets
//! (404 `not-found`), before its role is looked at, so it learns nothing.

use serde::{Deserialize, Serialize};

use super::auth::{Claims, ANY_TENANT};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Operator,
    Writer,
    Reader,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Writer, Role::Reader];

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Writer => "writer",
            Role::Reader => "reader",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown role '{s}': admin, operator, writer or reader"))
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// No token needed (`/v1/health`).
    Public,
    /// Any valid token (the OpenAPI document, the tenant list filtered to the caller).
    Authenticated,
    Read,
    Write,
    Operate,
    Manage,
    NodeAdmin,
}

impl Permission {
    pub fn name(self) -> &'static str {
        match self {
            Permission::Public => "public",
            Permission::Authenticated => "authenticated",
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Operate => "operate",
            Permission::Manage => "manage",
            Permission::NodeAdmin => "node-admin",
        }
    }

    /// Whether a call with this permission is an admin or operator action, recorded in
    /// the audit log when it changes something.
    pub fn audited(self) -> bool {
        matches!(
            self,
            Permission::Operate | Permission::Manage | Permission::NodeAdmin
        )
    }
}

/// Whether `role` holds `permission` (for a tenant the caller belongs to).
pub fn allows(role: Role, permission: Permission) -> bool {
    use Permission as P;
    match permission {
        P::Public | P::Authenticated | P::Read => true,
        P::Write => matches!(role, Role::Admin | Role::Writer),
        P::Operate => matches!(role, Role::Admin | Role::Operator),
        P::Manage | P::NodeAdmin => role == Role::Admin,
    }
}

/// Why [`check`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The resource belongs to another tenant: answer exactly as for an absent one.
    NotFound(String),
    /// The caller's role may not do this.
    Forbidden(String),
}

/// The one permission check: may `claims` do what needs `permission` on `tenant` (the
/// `{tenant}` of the path, if the route has one)?
pub fn check(claims: &Claims, permission: Permission, tenant: Option<&str>) -> Result<(), Denied> {
    if let Some(tenant) = tenant {
        if !claims.covers(tenant) {
            return Err(Denied::NotFound(format!("tenant '{tenant}' not found")));
        }
    }
    if permission == Permission::NodeAdmin && claims.tenant != ANY_TENANT {
        return Err(Denied::Forbidden(
            "only the node administrator (tenant '*') may do this".into(),
        ));
    }
    if !allows(claims.role, permission) {
        return Err(Denied::Forbidden(format!(
            "role '{}' may not {} here",
            claims.role.name(),
            permission.name()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(tenant: &str, role: Role) -> Claims {
        Claims {
            sub: "t".into(),
            tenant: tenant.into(),
            role,
            iss: "i".into(),
            aud: "a".into(),
            exp: 0,
            nbf: 0,
            iat: 0,
        }
    }

    #[test]
    fn other_tenants_look_absent_before_roles_are_checked() {
        let c = claims("b", Role::Reader);
        assert_eq!(
            check(&c, Permission::Manage, Some("a")),
            Err(Denied::NotFound("tenant 'a' not found".into()))
        );
        assert!(matches!(
            check(&c, Permission::Manage, Some("b")),
            Err(Denied::Forbidden(_))
        ));
        assert!(check(&claims("*", Role::Reader), Permission::Read, Some("a")).is_ok());
        assert!(check(&claims("a", Role::Admin), Permission::NodeAdmin, None).is_err());
        assert!(check(&claims("*", Role::Admin), Permission::NodeAdmin, None).is_ok());
    }
}
