"""Driver-side handles of the actor groups: every remote call the driver makes is a named method here."""
