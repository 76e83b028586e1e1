"""Grant policy: registered streams, query sets, grant rules, and the engine that decides."""
