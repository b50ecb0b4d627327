"""`cosa demo`: the application on top of training, export and the SDK (train, evaluate, export, segment, report)."""
