"""What every journey shares: people, roles and permissions (schema ``shared``)."""
