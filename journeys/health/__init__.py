"""The health journey: metrics, goals and connected devices (schema ``health_journey``)."""
