-- Running totals of interactions per customer, kept as interactions are logged (one
-- upsert each), from which an organization's metrics of a customer are read: one row
-- per customer, scope, type and currency. Scope '' holds the shared interactions
-- (whoever sees the customer sees them); an organization's id, its private ones. An
-- organization's metrics are the rows of scope '' and of its own id.
CREATE TABLE interaction_totals (
    customer_id  TEXT    NOT NULL,
    scope        TEXT    NOT NULL,
    type         TEXT    NOT NULL,
    -- ISO 4217; '' for interactions without an amount.
    currency     TEXT    NOT NULL,
    count        BIGINT  NOT NULL,
    -- The sum of the amounts: whole units, and billionths (carried on read).
    units        BIGINT  NOT NULL,
    nanos        BIGINT  NOT NULL,
    first_time   BIGINT  NOT NULL,
    last_time    BIGINT  NOT NULL,
    PRIMARY KEY (customer_id, scope, type, currency)
);

INSERT INTO interaction_totals
    (customer_id, scope, type, currency, count, units, nanos, first_time, last_time)
SELECT customer_id, CASE WHEN visibility = 'shared' THEN '' ELSE org_id END, type,
       COALESCE(currency, ''), COUNT(*), COALESCE(SUM(amount_units), 0),
       COALESCE(SUM(amount_nanos), 0), MIN(occur_time), MAX(occur_time)
FROM interactions
GROUP BY customer_id, CASE WHEN visibility = 'shared' THEN '' ELSE org_id END, type,
         COALESCE(currency, '');
