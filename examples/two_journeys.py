"""A saga across two journeys of its own, from scratch: tables, definition, handlers, start,
wait, timeline. The README's five-minute tour, as one script.

A shop sells its one lamp twice. The **shop** journey opens an order, then the **stock**
journey takes the lamp off the shelf. The first order completes; the second is refused by
stock (out of stock), so the saga compensates: shop cancels its order.

Runs against DATABASE_URL (migrated) and KAFKA_BOOTSTRAP_SERVERS when they are set, else
against an embedded PostgreSQL and broker started for the run:

    .venv/bin/python examples/two_journeys.py
"""

from __future__ import annotations

import asyncio
import sys

from saga import (
    Connection,
    NoCompensation,
    Participant,
    RunningServices,
    SagaDefinition,
    SagaStatus,
    Say,
    Scenario,
    Step,
    StepContext,
    StepRefused,
    journey_tables_sql,
    load_timeline,
    run_standalone,
)

# Each journey owns a schema: here one for both, with each journey's own table.
TABLES = """
CREATE SCHEMA IF NOT EXISTS example_shop;
CREATE TABLE IF NOT EXISTS example_shop.shop_order (
    saga_id uuid PRIMARY KEY, item text NOT NULL, status text NOT NULL
);
CREATE TABLE IF NOT EXISTS example_shop.stock_item (
    item text PRIMARY KEY, on_hand integer NOT NULL CHECK (on_hand >= 0)
);
INSERT INTO example_shop.stock_item VALUES ('lamp', 1)
    ON CONFLICT (item) DO UPDATE SET on_hand = 1;
"""

# A participant also needs an inbox (what stops a repeated command running twice) and an
# outbox (replies sent after commit), in the shape every journey's have.
JOURNEY_TABLES = [
    *journey_tables_sql("example_shop", "shop"),
    *journey_tables_sql("example_shop", "stock"),
]

PLACE_ORDER = SagaDefinition(
    "place_order",
    1,
    [
        Step(name="open_order", journey="shop", action="open_order", compensation="cancel_order"),
        # The last step: once the lamp is taken the order stands, so nothing undoes it.
        Step(
            name="take_stock",
            journey="stock",
            action="take_stock",
            no_compensation=NoCompensation.LAST,
        ),
    ],
)


async def open_order(step: StepContext) -> dict[str, str]:
    await step.connection.execute(
        "INSERT INTO example_shop.shop_order (saga_id, item, status) VALUES ($1, $2, 'open')",
        step.saga_id,
        step.payload["item"],
    )
    return {"order": "open"}  # merged into the saga's context


async def cancel_order(step: StepContext) -> None:
    # Found by saga id: a compensation may run for a step whose reply never came back.
    await step.connection.execute(
        "UPDATE example_shop.shop_order SET status = 'cancelled' WHERE saga_id = $1",
        step.saga_id,
    )


async def take_stock(step: StepContext) -> None:
    taken = await step.connection.execute(
        "UPDATE example_shop.stock_item SET on_hand = on_hand - 1 WHERE item = $1 AND on_hand > 0",
        step.payload["item"],
    )
    if taken == "UPDATE 0":
        raise StepRefused(f"out of stock: {step.payload['item']}")  # a business answer


async def place_two_orders(services: RunningServices, say: Say) -> None:
    async def create_tables(conn: Connection) -> None:
        await conn.execute(TABLES)
        for statement in JOURNEY_TABLES:
            await conn.execute(statement)

    database, coordinator = services.database, services.coordinator
    await database.run_driver(create_tables)
    shop, stock = (
        Participant(
            journey,
            schema="example_shop",
            settings=coordinator.settings,
            database=database,
            bootstrap_servers=services.bootstrap_servers,
        )
        for journey in ("shop", "stock")
    )
    shop.register("open_order", open_order)
    shop.register("cancel_order", cancel_order)
    stock.register("take_stock", take_stock)
    running = [asyncio.create_task(shop.run()), asyncio.create_task(stock.run())]
    try:
        await order_a_lamp(services, say, expect=SagaStatus.COMPLETED)
        await order_a_lamp(services, say, expect=SagaStatus.COMPENSATED)  # none left
    finally:
        await shop.stop()
        await stock.stop()
        await asyncio.gather(*running)


async def order_a_lamp(services: RunningServices, say: Say, *, expect: SagaStatus) -> None:
    saga_id = await services.coordinator.start(PLACE_ORDER, {"item": "lamp"})
    outcome = await services.coordinator.wait(saga_id, timeout=60)
    timeline = await services.database.run_driver(lambda conn: load_timeline(conn, saga_id))
    for line in timeline.render():
        say(line)
    if outcome.status is not expect:
        raise AssertionError(f"saga {saga_id} ended {outcome.status}, not {expect}")


if __name__ == "__main__":
    sys.exit(run_standalone([Scenario("place_order", "Place two orders", place_two_orders)]))
