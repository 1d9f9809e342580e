"""From a run (or its exported model) to class probabilities: one way for every command."""
