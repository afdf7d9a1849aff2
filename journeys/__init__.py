"""The SuperApp's four journeys (health, care, plan, gamification) and their shared
reference data, as users of the saga engine. Their tables live in ``migrations``; their
seed data here (``journeys.seeds``); their step handlers and the cross-journey saga
definitions join them with the engine."""
