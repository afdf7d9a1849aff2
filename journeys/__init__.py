"""The SuperApp's four journeys (health, care, plan, gamification) and their shared
reference data, as users of the saga engine: tables live in ``migrations``; seeds, step
handlers and the cross-journey saga definitions live here."""
