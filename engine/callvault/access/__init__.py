"""Who may do what (docs/access.md): identities, tokens, roles, tenants, audit trail."""
