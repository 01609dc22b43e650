"""Training one expert token on cached meta-model states (the meta model stays frozen)."""
