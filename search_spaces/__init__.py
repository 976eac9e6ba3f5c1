"""Search spaces: one module per space, each with `define(trial) -> dict of dotted overrides`."""
