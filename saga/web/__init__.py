"""The operators' web console (`saga web`)."""
