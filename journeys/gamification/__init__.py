"""Gamification: profiles, the points ledger, achievements, events and the leaderboard
(schema ``gamification``)."""
