-- Claims probe each endpoint for a due delivery (see store/webhooks.rs, due_candidates),
-- so a claim costs the same however long the queue.
CREATE INDEX webhook_deliveries_due_by_endpoint ON webhook_deliveries (endpoint_id, state, next_attempt_time);

-- customers.id compares byte by byte (COLLATE "C"), but the columns that refer to it
-- were created with the database's default collation. A join such as
-- `g.customer_id = c.id` then compares under "C", which the indexes on customer_id
-- (default collation) cannot serve: a customer's grant was found by scanning every
-- grant of the grantee. Give every such column the same collation as the key, which
-- rebuilds their indexes.
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT table_name, column_name FROM information_schema.columns
        WHERE table_schema = current_schema()
          AND column_name IN ('customer_id', 'merged_into')
          AND data_type = 'text'
          AND collation_name IS DISTINCT FROM 'C'
    LOOP
        EXECUTE format('ALTER TABLE %I ALTER COLUMN %I TYPE TEXT COLLATE "C"',
                       col.table_name, col.column_name);
    END LOOP;
END
$$;
