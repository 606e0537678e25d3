"""The gift and bundle catalog: the model (pure) and its store in Valkey."""
