"""The care journey's service, run by `saga run participant --journey care`."""

from __future__ import annotations

from journeys.care.maintenance import RELEASE_EXPIRED_HOLDS
from journeys.care.sagas import BOOK_APPOINTMENT_VERSIONS
from journeys.care.steps import HANDLERS
from saga import JourneyService

SERVICE = JourneyService(
    name="care",
    schema="care_journey",
    database_role="austa_care_journey",
    handlers=HANDLERS,
    definitions=BOOK_APPOINTMENT_VERSIONS,
    maintenance=(RELEASE_EXPIRED_HOLDS,),
    # Every booking holds, confirms or releases a slot and updates its appointment.
    churning_tables=("care_journey.care_appointment", "care_journey.care_slot"),
    # book_appointment's payload carries why the patient seeks care: health data.
    sensitive_fields=frozenset({"reason"}),
)
