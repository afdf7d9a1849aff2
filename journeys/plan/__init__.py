"""The plan journey: insurance plans, coverage, pre-authorizations, claims and wellness
credits (schema ``plan_journey``)."""
