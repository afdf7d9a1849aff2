"""What operators do with sagas: find them, read them, and act on them by hand."""
