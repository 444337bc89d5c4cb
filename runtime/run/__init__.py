"""Running sessions: the session, supervisor, exit classifier, coordinator, scheduler, radar."""
