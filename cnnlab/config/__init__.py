"""The study config: its typed schema, the YAML/overrides loader, and the cross-field rules."""
