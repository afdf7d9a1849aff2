"""The care journey: specialties, providers, agendas and appointments (schema
``care_journey``)."""
