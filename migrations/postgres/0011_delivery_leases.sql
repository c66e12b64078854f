-- The webhook worker asks when something next falls due that no commit announces,
-- including the earliest lease still running (a delivery whose worker died is due
-- again when its lease runs out). Nothing indexed lease_until, so that part read
-- every pending delivery (store/webhooks/queue.rs, next_delivery_due). Only leased
-- pending rows are in this index, and the read starts at now: rows whose leases ended
-- earlier, live or not yet vacuumed, are never read.
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (lease_until)
    WHERE state = 'pending' AND lease_until IS NOT NULL;
